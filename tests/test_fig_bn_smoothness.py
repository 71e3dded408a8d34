"""figures/fig_01_bn_smoothness.py's own training loop resumes from its per-epoch checkpoint bit for bit."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

PATH = Path(__file__).resolve().parent.parent / "figures" / "fig_01_bn_smoothness.py"


def _fig():
    spec = importlib.util.spec_from_file_location(PATH.stem, PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Interrupt(Exception):
    pass


class _StopAfterEpoch2:
    """A log stream that interrupts the run at the epoch-2 line, i.e. just after the epoch-2 checkpoint."""

    def write(self, text):
        if "epoch 2/3" in text:
            raise _Interrupt

    def flush(self):
        pass


class _Quiet:
    def write(self, text):
        pass

    def flush(self):
        pass


def test_interrupted_run_resumes_to_the_same_measurements(tmp_path):
    fig = _fig()
    cfg = dict(fig.QUICK, epochs=3, n_train=96)
    straight = fig.run("batch", cfg, tmp_path / "straight", log=_Quiet())
    with pytest.raises(_Interrupt):
        fig.run("batch", cfg, tmp_path / "resumed", log=_StopAfterEpoch2())
    resumed = fig.run("batch", cfg, tmp_path / "resumed")
    assert len(straight["step"]) > 1
    for key, value in straight.items():
        np.testing.assert_array_equal(np.asarray(resumed[key]), np.asarray(value), err_msg=key)
