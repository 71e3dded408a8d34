"""Compile every Numba CPU kernel ahead of use, in parallel worker processes, into Numba's on-disk cache.

The first call of a Numba op in a process compiles its kernels for the argument types it meets (about a second per
kernel signature, about 175 of them for both dtypes and both CPU backends), or loads them from the on-disk cache that an
earlier process wrote (``cache=True``; the folder is ``NUMBA_CACHE_DIR``, else ``__pycache__`` beside the kernels).
Numba compiles on one core, so a cold cache costs minutes of one core, paid by whichever process runs first.

:func:`precompile` pays it up front and in parallel: it runs every layer spec whose op has a kernel on the chosen
backends (the table ``normref check`` uses, :mod:`normref.testing.specs`) forward and backward, once per dtype, in
training and eval mode, with and without affine, through the same layers and dispatch a user's call takes, so
the cache ends up holding the signatures real use asks for. The work is one task per (backend, dtype, op), run by
``jobs`` worker processes; a task compiles the kernels of one op, so two workers rarely compile the same function
(shared helpers excepted). Each task reports how many kernel signatures it compiled and how many it found in the
cache (Numba's per-dispatcher counters), so a second run shows everything loaded.

**Concurrent cache writes.** Numba saves a compiled signature by reading the function's index, picking the first
free data-file number, writing the index, then the data file. Two processes saving *different* signatures of the
same function at the same moment can both pick number 1, and the index can end up naming one signature while the
file holds the other's machine code, which a later process would load under the wrong signature. Workers that
compile shared helpers for both dtypes side by side make that interleaving likely enough to matter, so each worker
takes an exclusive ``flock`` on one lock file around every save (:func:`serialize_cache_writes`): a save takes
milliseconds, the compilation before it a second, so nothing waits measurably. Where that is impossible (no
``fcntl``, or a Numba without ``IndexDataCacheFile.save``) :func:`precompile` runs the tasks in one process.

Surrogate layers (PowerNorm, Unified Norm) also run their paper's backward (``backward_kind = "approx"``), whose
rule is a kernel of its own. The CUDA backend is not covered: its kernels are compiled per process by the driver.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Callable, Iterable

import numpy as np

from .._registry import BACKENDS, available_backends, available_op_backends
from . import specs as spec_table

CPU_BACKENDS = tuple(b for b in BACKENDS if b.startswith("numba"))  # the backends Numba caches on disk
DTYPES = ("float32", "float64")


@dataclasses.dataclass(frozen=True)
class Task:
    """Compile one op's kernels for one backend and dtype, by running the specs that use the op."""

    backend: str
    dtype: str
    op: str
    spec_names: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class TaskResult:
    task: Task
    seconds: float
    compiled: int  # kernel signatures compiled by this task
    loaded: int  # kernel signatures loaded from the on-disk cache
    error: str = ""  # the exception, if the task failed


def plan(backends: Iterable[str] = CPU_BACKENDS, dtypes: Iterable[str] = DTYPES,
         layers: Iterable[str] | None = None) -> list[Task]:
    """The tasks for ``backends`` × ``dtypes`` × ops that have a kernel there, each with the specs of that op.

    Ordered by dtype, then backend, then op, so that workers starting together take different ops. ``layers``
    names specs (case-insensitive, as ``normref check --layer``). An unknown name, or a backend that did not load,
    is a ``ValueError``.
    """
    backends, dtypes = list(backends), [np.dtype(d).name for d in dtypes]
    status = available_backends()
    for backend in backends:
        if backend not in CPU_BACKENDS:
            raise ValueError(f"backends: each must be one of {CPU_BACKENDS} (Numba's on-disk cache), got {backend!r}")
        if status[backend] is not None:
            raise ValueError(f"backend {backend!r} is not available: {status[backend]}")
    for dtype in dtypes:
        if dtype not in DTYPES:
            raise ValueError(f"dtypes: each must be one of {DTYPES}, got {dtype!r}")
    specs = spec_table.all_specs()
    wanted = None if layers is None else {name.lower() for name in layers}
    unknown = set() if wanted is None else wanted - {s.name.lower() for s in specs}
    if unknown:
        raise ValueError(f"layers: unknown {sorted(unknown)}; known: {[s.name for s in specs]}")
    by_op: dict[str, list[str]] = {}
    for spec in specs:
        if spec.op and (wanted is None or spec.name.lower() in wanted):
            by_op.setdefault(spec.op, []).append(spec.name)
    return [Task(backend, dtype, op, tuple(names))
            for dtype in dtypes for backend in backends for op, names in by_op.items()
            if backend in available_op_backends(op)]


def _kernel_dispatchers() -> list:
    """Every Numba dispatcher defined in the loaded kernel modules."""
    from numba.core.dispatcher import Dispatcher

    found = {}
    for name, module in list(sys.modules.items()):
        if name.startswith("normref.kernels.numba") and module is not None:
            for value in vars(module).values():
                if isinstance(value, Dispatcher):
                    found[id(value)] = value
    return list(found.values())


def _cache_counts() -> tuple[int, int]:
    """(signatures compiled, signatures loaded from the on-disk cache) so far in this process, over all kernels."""
    compiled = loaded = 0
    for dispatcher in _kernel_dispatchers():
        compiled += sum(dispatcher.stats.cache_misses.values())
        loaded += sum(dispatcher.stats.cache_hits.values())
    return compiled, loaded


def _exercise(spec, backend: str, dtype, rng) -> None:
    """Forward and backward of ``spec``'s layer on every shape, affine setting and mode, in ``dtype``."""
    for shape in spec.shapes:
        for affine in spec.affine:
            layer = spec.build(shape, affine, backend, rng, dtype=dtype)
            x = spec.make_input(rng, shape).astype(dtype)
            kinds = ("exact", "approx") if getattr(layer, "approx_op", None) else (None,)
            for mode in spec.modes:
                for kind in (kinds if mode == "train" else (None,)):
                    if kind is not None:
                        layer.backward_kind = kind
                    layer.train(mode == "train")
                    y = layer.forward(x)
                    layer.backward(rng.standard_normal(np.shape(y)).astype(dtype))


def run_task(task: Task) -> TaskResult:
    """Run ``task`` in this process; never raises (a failure is reported in the result)."""
    before = _cache_counts()
    start = time.perf_counter()
    error = ""
    try:
        rng = np.random.default_rng(0)
        for name in task.spec_names:
            _exercise(spec_table.get_spec(name), task.backend, np.dtype(task.dtype), rng)
    except Exception as exc:  # reported, so one broken op does not hide the others' results
        error = f"{type(exc).__name__}: {exc}"
    seconds = time.perf_counter() - start
    after = _cache_counts()
    return TaskResult(task, seconds, after[0] - before[0], after[1] - before[1], error)


def parallel_supported() -> bool:
    """Whether worker processes can share the cache safely here (see :func:`serialize_cache_writes`)."""
    try:
        import fcntl  # noqa: F401
        from numba.core.caching import IndexDataCacheFile
    except ImportError:
        return False
    return hasattr(IndexDataCacheFile, "save")


def serialize_cache_writes(lock_path) -> bool:
    """Make every Numba cache save in this process hold an exclusive ``flock`` on ``lock_path`` (module docstring).

    Returns ``False``, changing nothing, where that cannot be done. Idempotent.
    """
    if not parallel_supported():
        return False
    import fcntl

    from numba.core.caching import IndexDataCacheFile

    original = IndexDataCacheFile.save
    if getattr(original, "_normref_lock_path", None) is not None:
        return True

    def save(self, key, data):
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            return original(self, key, data)

    save._normref_lock_path = str(lock_path)
    save._normref_original = original
    IndexDataCacheFile.save = save
    return True


def _start_worker(lock_path) -> None:
    if not serialize_cache_writes(lock_path):  # parallel_supported() said it would work
        raise RuntimeError("normref compile: could not serialize Numba cache writes in a worker process")


def default_jobs() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def precompile(tasks: list[Task], jobs: int | None = None,
               on_result: Callable[[TaskResult], None] | None = None) -> list[TaskResult]:
    """Run ``tasks`` on ``jobs`` worker processes (in this process if 1, or if :func:`parallel_supported` is
    false); results in completion order.

    ``tasks`` come from :func:`plan`, which has checked their backends. ``on_result`` is called as each task finishes
    (progress). Workers are spawned, not forked, so each starts with a clean Numba state and reads the same
    environment (``NUMBA_CACHE_DIR``) as this process; their cache saves are serialized by a lock file.
    """
    jobs = default_jobs() if jobs is None else jobs
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive int, got {jobs!r}")
    results = []

    def done(result):
        results.append(result)
        if on_result is not None:
            on_result(result)

    if jobs == 1 or len(tasks) <= 1 or not parallel_supported():
        for task in tasks:
            done(run_task(task))
        return results
    import concurrent.futures
    import multiprocessing
    import tempfile

    with tempfile.TemporaryDirectory(prefix="normref-compile-") as tmp, \
            concurrent.futures.ProcessPoolExecutor(max_workers=min(jobs, len(tasks)),
                                                   mp_context=multiprocessing.get_context("spawn"),
                                                   initializer=_start_worker,
                                                   initargs=(os.path.join(tmp, "cache.lock"),)) as pool:
        for future in concurrent.futures.as_completed([pool.submit(run_task, t) for t in tasks]):
            done(future.result())
    return results
