"""Runs the CUDA backend's tests under the CUDA simulator, in their own process.

``NUMBA_ENABLE_CUDASIM=1`` only takes effect if it is set before numba is first imported, and this pytest process
has long imported numba (the ``numba`` backend, doctests). So ``tests/test_backend_cuda.py`` runs in a child
``python -m pytest`` with the variable set, and this test fails unless the child exits with status 0 *and* reports
passed tests and no skipped ones: an all-skipped run (the backend failing to load) is a failure here, not a pass.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 600  # the run takes about a minute on 2 cores; the limit only stops a hung simulator thread


def test_cuda_backend_tests_pass_under_the_simulator():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    env.pop("NORMREF_BACKEND", None)  # the tests choose backends explicitly
    env.pop("NORMREF_CUDA_TPB", None)  # the simulator's default block size
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "-rs",
           "tests/test_backend_cuda.py"]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    summary = output.strip().splitlines()[-1]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) > 0, output[-3000:]
    assert "skipped" not in summary and "deselected" not in summary, output[-3000:]
