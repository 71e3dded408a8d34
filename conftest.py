"""Repository-wide pytest configuration (``--doctest-modules`` also collects the package's own modules)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent

# The cuda kernel package raises ImportError when imported with neither a GPU nor the CUDA simulator, on purpose: that
# is how normref.available_backends() learns why the backend is missing. Its modules have no doctests, so doctest
# collection skips them; tests/test_backend_cuda.py tests them, in a simulator process started by
# tests/test_cuda_simulator.py.
collect_ignore_glob = ["normref/kernels/cuda/*"]

# The CUDA tests run under the simulator in a child process (tests/test_cuda_simulator.py says why). That child takes
# about a minute of mostly single-threaded Python, so it is started as soon as collection finishes and runs beside the
# other tests; its test, moved to the end of the run, only waits for it. Run alone, the test starts it itself.
SIMULATOR_TEST = "test_cuda_backend_tests_pass_under_the_simulator"
_simulator: dict = {}


def simulator_command() -> list[str]:
    return [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "-rs",
            "tests/test_backend_cuda.py"]


def start_simulator_run() -> tuple[subprocess.Popen, object]:
    """Start (once per session) the simulator child; ``(process, output file)``. Output goes to a temporary file, not
    a pipe, so a long log can never block the child while nobody reads it."""
    if "process" not in _simulator:
        env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
        env.pop("NORMREF_BACKEND", None)  # the tests choose backends explicitly
        env.pop("NORMREF_CUDA_TPB", None)  # the simulator's default block size
        log = tempfile.TemporaryFile(mode="w+")
        _simulator["log"] = log
        _simulator["process"] = subprocess.Popen(simulator_command(), cwd=ROOT, env=env, stdout=log,
                                                 stderr=subprocess.STDOUT, text=True)
    return _simulator["process"], _simulator["log"]


def pytest_collection_modifyitems(session, config, items):
    """The simulator's test only waits for the child, so it runs last: the other tests fill that minute."""
    items.sort(key=lambda item: getattr(item, "name", "") == SIMULATOR_TEST)


def pytest_collection_finish(session):
    if any(getattr(item, "name", "") == SIMULATOR_TEST for item in session.items):
        start_simulator_run()


def pytest_sessionfinish(session, exitstatus):
    process = _simulator.get("process")
    if process is not None and process.poll() is None:  # the session stopped before its test waited for it
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def cuda_simulator_run():
    """The simulator child ``(process, output file)``, started at collection or now."""
    return start_simulator_run()
