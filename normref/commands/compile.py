"""``normref compile``: compile every Numba CPU kernel into the on-disk cache, in parallel, before first use.

One line per task (backend, dtype, op) as it finishes, then the totals: kernel signatures compiled and loaded from
the cache, wall time, and the summed task time (their ratio is the speed-up of the worker processes). The exit status
is 0 only if every task ran. See :mod:`normref.testing.precompile`.
"""

from __future__ import annotations

import os
import sys
import time


def add_parser(sub) -> None:
    from ..testing.precompile import CPU_BACKENDS, DTYPES

    p = sub.add_parser("compile", help="compile every Numba kernel into the on-disk cache, in parallel processes")
    p.add_argument("--backend", action="append", choices=CPU_BACKENDS,
                   help="only this backend (repeatable; default: every available Numba backend)")
    p.add_argument("--dtype", action="append", choices=DTYPES, help="only this dtype (repeatable; default: both)")
    p.add_argument("--layer", action="append", help="only the ops of this layer spec (repeatable), e.g. BatchNorm")
    p.add_argument("-j", "--jobs", type=int, default=None,
                   help="worker processes (default: the cores this process may use)")
    p.set_defaults(func=run)


def run(args) -> int:
    from .._registry import available_backends
    from ..testing import precompile as pc

    status = available_backends()
    backends = args.backend or [b for b in pc.CPU_BACKENDS if status[b] is None]
    try:
        tasks = pc.plan(backends, args.dtype or pc.DTYPES, args.layer)
    except ValueError as exc:
        print(f"normref compile: {exc}", file=sys.stderr)
        return 2
    if not tasks:
        print(f"normref compile: no Numba kernel for layer(s) {args.layer}", file=sys.stderr)
        return 2
    jobs = pc.default_jobs() if args.jobs is None else args.jobs
    if jobs < 1:
        print(f"normref compile: --jobs must be >= 1, got {jobs}", file=sys.stderr)
        return 2
    cache = os.environ.get("NUMBA_CACHE_DIR") or "__pycache__ beside each kernel module"
    workers = min(jobs, len(tasks))
    if workers > 1 and not pc.parallel_supported():
        print("normref compile: Numba's cache saves cannot be serialized here (no fcntl): one process",
              file=sys.stderr)
        workers = 1
    print(f"normref compile: {len(tasks)} tasks on {workers} worker process(es); cache: {cache}", flush=True)
    width = len(str(len(tasks)))

    def progress(result):
        t = result.task
        count = f"[{len(finished) + 1:>{width}}/{len(tasks)}]"
        finished.append(result)
        outcome = f"FAILED {result.error}" if result.error else \
            f"{result.compiled:>3} compiled, {result.loaded:>3} loaded"
        print(f"{count} {t.backend:<10} {t.dtype:<7} {t.op:<29} {result.seconds:6.1f} s  {outcome}", flush=True)

    finished: list = []
    start = time.perf_counter()
    results = pc.precompile(tasks, workers, on_result=progress)
    wall = time.perf_counter() - start
    failed = [r for r in results if r.error]
    busy = sum(r.seconds for r in results)
    print(f"{len(results) - len(failed)} tasks ran, {len(failed)} failed: "
          f"{sum(r.compiled for r in results)} kernel signatures compiled, "
          f"{sum(r.loaded for r in results)} loaded from the cache; {wall:.1f} s wall, {busy:.1f} s of task time "
          f"({busy / wall if wall else 0:.1f}x)")
    return 1 if failed else 0
