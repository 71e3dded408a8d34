"""Runs the CUDA backend's tests under the CUDA simulator, in their own process.

``NUMBA_ENABLE_CUDASIM=1`` only takes effect if it is set before numba is first imported, and this pytest process
has long imported numba (the ``numba`` backend, doctests). So ``tests/test_backend_cuda.py`` runs in a child
``python -m pytest`` with the variable set, and this test fails unless the child exits with status 0 *and* reports
passed tests and no skipped ones: an all-skipped run (the backend failing to load) is a failure here, not a pass.
The child is started by the root ``conftest.py`` as soon as collection finishes, so its minute of simulation runs
beside the other tests.
"""

from __future__ import annotations

import re

TIMEOUT_S = 600  # the run takes about a minute on 2 cores; the limit only stops a hung simulator thread


def test_cuda_backend_tests_pass_under_the_simulator(cuda_simulator_run):
    """The child (``conftest.start_simulator_run``: ``python -m pytest -m cuda tests/test_backend_cuda.py`` with
    ``NUMBA_ENABLE_CUDASIM=1``) was started when collection finished; wait for it and read its log."""
    process, log = cuda_simulator_run
    returncode = process.wait(timeout=TIMEOUT_S)
    log.seek(0)
    output = log.read()
    assert returncode == 0, output[-6000:]
    summary = output.strip().splitlines()[-1]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) > 0, output[-3000:]
    assert "skipped" not in summary and "deselected" not in summary, output[-3000:]
