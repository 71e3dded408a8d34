r"""Evaluating many independent points: any executor, progress on stderr, incremental results, exact resume.

Every grid computation of :mod:`normref.landscape` (surfaces, lines, direction bands, interpolation curves) is a
list of points and a picklable function ``fn(point) -> {name: float}``. :func:`run_points` evaluates them.

Storage and resume (fixing landscape.md §1.4)
--------------------------------------------
With ``store=DIR`` the directory holds

* ``meta.json``: what is being computed (kind, points, a fingerprint of the objective, directions and
  coordinates). A second run with the same ``DIR`` and a different fingerprint raises instead of mixing results;
* ``points/NNNNNNN.json``: one file per finished point (index, point, values; JSON floats round-trip exactly), each
  written to a temporary name and ``os.replace``-d into place, so a file either exists complete or not at all.

Finished points are *the files that exist*, not "values <= 0" (the reference tool recomputes negative metrics
forever). After a crash or ``SIGKILL`` the same call recomputes exactly the missing points: none is lost, and none
that was written is computed again. Results are written by the coordinating process as each future completes, so
the executor's workers need no access to ``DIR`` (an MPI or dask worker on another machine works). A point whose
task was running when the run died is not written and is computed on resume.

Executors
---------
``executor=None`` uses a local :class:`concurrent.futures.ProcessPoolExecutor` with ``workers`` processes (default:
``os.cpu_count()``); the function is pickled *once* per worker (pool initializer) and each task carries only its
index and point, and each worker limits BLAS to one thread (``threadpoolctl`` when installed) so that the worker
processes do not oversubscribe the cores. ``workers=1`` without an executor runs in this process.
Any other :class:`concurrent.futures.Executor` works too (``mpi4py.futures.MPIPoolExecutor``,
``distributed.Client(...).get_executor()``, a thread pool): ``fn`` is pickled once here and the bytes travel with
every task (an objective drops its forward caches before pickling, so this is about the size of the data and the
parameters); each worker thread unpickles its own copy once and reuses it, so threads never share a model (layers
keep per-call caches, so one model is not thread-safe). The caller owns an executor it passes in.

BLAS threads
------------
``blas_threads=N`` limits BLAS to ``N`` threads (:mod:`normref.threads`) everywhere the points are evaluated: in this
process for the duration of the call (restored afterwards; this covers ``workers=1`` and thread pools, whose threads
share this process's BLAS), in every worker process of the default pool (set by the pool initializer), and, with a
user-supplied executor, in each worker the first time it runs a task of the call (a remote worker keeps the setting;
it is its own process). ``blas_threads=None`` (the default) changes nothing, except that the default pool's workers
keep their one thread each, as above. The setting is not part of the stored ``meta``: a resumed run may use another.

Progress goes to stderr (``progress=False`` for quiet): a line at most every two seconds with the count, the rate
and the remaining-time estimate.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import os
import pickle
import sys
import tempfile
import threading
import time
from pathlib import Path

from ..threads import blas_threads as limit_blas_threads, check_blas_threads, set_blas_threads

_WORKER_FN = None


def _worker_init(payload: bytes, blas_threads=None) -> None:
    global _WORKER_FN
    _WORKER_FN = pickle.loads(payload)
    # one BLAS thread per worker process unless told otherwise: the processes are the parallelism
    set_blas_threads(1 if blas_threads is None else blas_threads)


def _call_installed(index, point):
    return index, _WORKER_FN(point)


_LOCAL = threading.local()


def _call_payload(digest, payload, index, point, blas_threads=None):
    """Run a task of a user-supplied executor: the function is unpickled once per worker thread (so threads never
    share one model, whose layers keep caches) and reused for that thread's later tasks; ``blas_threads`` (not
    ``None``) is applied at the same moment, once per worker thread and call."""
    cache = getattr(_LOCAL, "functions", None)
    if cache is None:
        cache = _LOCAL.functions = {}
    fn = cache.get(digest)
    if fn is None:
        cache.clear()
        fn = cache[digest] = pickle.loads(payload)
        set_blas_threads(blas_threads)
    return index, fn(point)


def _clean(values) -> dict:
    if not isinstance(values, dict):
        raise TypeError(f"the point function must return a dict of floats, got {type(values).__name__}")
    return {str(k): float(v) for k, v in values.items()}


class PointStore:
    """A directory of finished points (see the module docstring); safe against being killed at any instant."""

    def __init__(self, path, meta: dict):
        self.path = Path(path)
        self.points_dir = self.path / "points"
        self.points_dir.mkdir(parents=True, exist_ok=True)
        meta_path = self.path / "meta.json"
        meta = json.loads(json.dumps(meta))  # normalize (tuples -> lists) before comparing
        if meta_path.exists():
            stored = json.loads(meta_path.read_text())
            if stored != meta:
                diff = sorted(k for k in set(stored) | set(meta) if stored.get(k) != meta.get(k))
                raise ValueError(f"{self.path} holds a different computation (differs in {diff}); "
                                 f"use another directory or delete this one")
        else:
            _atomic_write(meta_path, json.dumps(meta, indent=1))
        self.meta = meta

    def _file(self, index: int) -> Path:
        return self.points_dir / f"{index:07d}.json"

    def done(self) -> dict[int, dict]:
        """``{index: values}`` of every finished point."""
        out = {}
        for file in self.points_dir.glob("*.json"):
            record = json.loads(file.read_text())
            out[int(record["index"])] = record["values"]
        return out

    def write(self, index: int, point, values: dict) -> None:
        _atomic_write(self._file(index), json.dumps({"index": int(index), "point": list(point), "values": values}))


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class Progress:
    """Throttled progress lines on stderr: ``label: done/total (pct), rate, ETA``."""

    def __init__(self, label: str, total: int, already: int = 0, *, enabled: bool = True, every_s: float = 2.0,
                 stream=None):
        self.label, self.total, self.already, self.count = label, total, already, already
        self.enabled, self.every_s = enabled, every_s
        self.stream = sys.stderr if stream is None else stream
        self.start = self.last = time.perf_counter()
        if enabled and already:
            print(f"{label}: resuming, {already}/{total} points already done", file=self.stream, flush=True)

    def step(self, n: int = 1) -> None:
        self.count += n
        now = time.perf_counter()
        if self.enabled and (now - self.last >= self.every_s or self.count == self.total):
            self.last = now
            new = self.count - self.already
            rate = new / max(now - self.start, 1e-9)
            eta = (self.total - self.count) / rate if rate > 0 else float("inf")
            print(f"{self.label}: {self.count}/{self.total} ({100 * self.count / max(self.total, 1):.0f}%), "
                  f"{rate:.1f} points/s, {now - self.start:.1f} s elapsed, ETA {eta:.1f} s",
                  file=self.stream, flush=True)


def run_points(fn, points, *, store=None, meta=None, executor=None, workers=None, progress=True,
               label="points", blas_threads=None) -> list[dict]:
    """Evaluate ``fn`` at every point; return the value dicts in point order.

    Args:
        fn: picklable callable ``point -> {name: float}``.
        points: a sequence of points (tuples of floats, or anything JSON-serializable as a list).
        store: a directory for incremental results and resume (``None``: in memory only).
        meta: a JSON-able description checked against the store on resume (``points`` is added to it).
        executor: any :class:`concurrent.futures.Executor`; ``None`` makes a local process pool (see above).
        workers: size of the default pool (ignored with an ``executor``); 1 runs in this process.
        progress: progress lines on stderr.
        blas_threads: ``None`` or a positive int: limit BLAS to that many threads here and in the workers (see
            the module docstring).
    """
    blas_threads = check_blas_threads(blas_threads)
    points = [tuple(float(c) for c in p) if hasattr(p, "__iter__") else (float(p),) for p in points]
    results: dict[int, dict] = {}
    point_store = None
    if store is not None:
        point_store = PointStore(store, dict(meta or {}, points=[list(p) for p in points]))
        results = {i: v for i, v in point_store.done().items() if i < len(points)}
    todo = [i for i in range(len(points)) if i not in results]
    bar = Progress(label, len(points), len(results), enabled=progress)

    def record(index, values):
        values = _clean(values)
        if point_store is not None:
            point_store.write(index, points[index], values)
        results[index] = values
        bar.step()

    if todo:
        workers = (os.cpu_count() or 1) if workers is None else int(workers)
        with limit_blas_threads(blas_threads):
            if executor is None and workers <= 1:
                for i in todo:
                    record(i, fn(points[i]))
            elif executor is None:
                payload = pickle.dumps(fn)
                with cf.ProcessPoolExecutor(max_workers=min(workers, len(todo)), initializer=_worker_init,
                                            initargs=(payload, blas_threads)) as pool:
                    _drain(pool, [pool.submit(_call_installed, i, points[i]) for i in todo], record)
            else:
                payload = pickle.dumps(fn)
                # the digest names this call (function and setting): each worker thread applies the setting once
                digest = hashlib.sha256(payload + repr(blas_threads).encode()).hexdigest()
                _drain(executor, [executor.submit(_call_payload, digest, payload, i, points[i], blas_threads)
                                  for i in todo], record)
    return [results[i] for i in range(len(points))]


def _drain(executor, futures, record) -> None:
    try:
        for future in cf.as_completed(futures):
            record(*future.result())
    except BaseException:
        for future in futures:
            future.cancel()
        raise
