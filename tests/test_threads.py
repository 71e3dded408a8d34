"""BLAS thread limits (normref.threads) and the ``blas_threads`` option of training and the landscape engine: the
limit holds inside and is restored after, worker processes and threads get it, bad values raise, and runs with it
resume bit-identically (training: ``tests/test_train.py::test_resume_continues_bit_identically[blas-1]``)."""

import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from normref.cli import main
from normref.data import make_blobs, train_val_test_split
from normref.landscape import Objective, random_directions, surface
from normref.landscape.benchmark import main as benchmark_main
from normref.landscape.engine import run_points
from normref.models import build_mlp
from normref.nn import BatchNorm, CrossEntropyLoss, Linear, Sequential, Tanh
from normref.optim import SGD
from normref.train import train
from normref.threads import blas_thread_counts, blas_threads, check_blas_threads, one_blas_thread

pytest.importorskip("threadpoolctl", reason="querying the BLAS thread count needs threadpoolctl (the 'test' extra)")

BAD = [(0, ValueError), (-2, ValueError), (1.5, TypeError), (True, TypeError), ("2", TypeError)]


def counts():
    found = blas_thread_counts()
    assert found, "no BLAS library found by threadpoolctl"
    return found


def reported(n):
    """What threadpoolctl reports under a limit of ``n`` (a library may cap the value at its own maximum)."""
    with blas_threads(n):
        return counts()


# -- the context manager -----------------------------------------------------------------------------------------
def test_limit_applies_inside_and_is_restored_after():
    before = counts()
    three = reported(3)
    assert three != reported(1)                        # the limit is visible, so the checks below can fail
    with blas_threads(1):
        assert counts() == [1] * len(before)
        with blas_threads(3):
            assert counts() == three
        assert counts() == [1] * len(before)          # nested: the inner block restores the outer limit
    assert counts() == before
    with one_blas_thread():
        assert counts() == [1] * len(before)
    with blas_threads(None):                           # None: leave the setting alone
        assert counts() == before
    assert counts() == before


def test_limit_is_restored_when_the_block_raises():
    before = counts()
    with pytest.raises(KeyError):
        with blas_threads(1):
            raise KeyError("boom")
    assert counts() == before


@pytest.mark.parametrize("value,error", BAD, ids=[repr(v) for v, _ in BAD])
def test_bad_values_raise_naming_the_argument(value, error):
    with pytest.raises(error, match="blas_threads"):
        blas_threads(value)
    with pytest.raises(error, match="workers_blas"):
        check_blas_threads(value, "workers_blas")
    assert check_blas_threads(np.int64(2)) == 2 and check_blas_threads(None) is None


def test_without_threadpoolctl_the_limit_is_a_no_op(monkeypatch):
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)   # makes `import threadpoolctl` raise ImportError
    assert blas_thread_counts() is None
    with blas_threads(1), one_blas_thread():
        pass
    with pytest.raises(ValueError, match="blas_threads"):      # still validated
        blas_threads(0)


# -- training ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def blobs():
    return train_val_test_split(make_blobs(160, 3, dim=4, spread=0.6, seed=0), val=0.2, test=0.2, seed=0)


def test_train_limits_blas_while_training_and_restores_after(blobs):
    before, seen = counts(), []
    model = build_mlp(4, 3, hidden=(8,), norm="batch", seed=0)
    train_kwargs = dict(epochs=2, batch_size=32, quiet=True, on_epoch=lambda epoch, history: seen.append(counts()))
    train(model, blobs.train, SGD(model, lr=0.1), blas_threads=1, **train_kwargs)
    assert seen == [[1] * len(before)] * 2 and counts() == before
    seen.clear()
    train(model, blobs.train, SGD(model, lr=0.1), **train_kwargs)             # default: untouched
    assert seen == [before] * 2


@pytest.mark.parametrize("value,error", BAD, ids=[repr(v) for v, _ in BAD])
def test_train_rejects_bad_blas_threads_before_training(blobs, value, error):
    model = build_mlp(4, 3, hidden=(8,), seed=0)
    start = {k: v.copy() for k, v in model.named_parameters()}
    with pytest.raises(error, match="blas_threads"):
        train(model, blobs.train, SGD(model, lr=0.1), epochs=1, quiet=True, blas_threads=value)
    for name, param in model.named_parameters():
        np.testing.assert_array_equal(param, start[name])


def test_cli_passes_blas_threads_and_rejects_bad_values(tmp_path, capsys, monkeypatch):
    import normref.train

    received = []
    real_train = normref.train.train

    def spy(*args, **kwargs):
        received.append(kwargs.get("blas_threads"))
        return real_train(*args, **kwargs)

    monkeypatch.setattr(normref.train, "train", spy)
    args = ["train", "--model", "mlp", "--norm", "layer", "--data", "blobs", "--batch-size", "128", "--epochs", "1",
            "--quiet"]
    assert main(args + ["--blas-threads", "1"]) == 0
    assert main(args) == 0
    assert received == [1, None]
    assert main(args + ["--blas-threads", "0"]) == 2
    assert "--blas-threads must be at least 1" in capsys.readouterr().err


# -- the landscape engine ----------------------------------------------------------------------------------------
class ThreadReport:
    """A point function reporting the BLAS thread count of the process evaluating it."""

    def __call__(self, point):
        return {f"lib{i}": float(n) for i, n in enumerate(counts())}


def _as_lists(rows):
    return [[int(v) for v in row.values()] for row in rows]


def test_run_points_applies_the_limit_in_process_and_restores_it():
    before, three = counts(), reported(3)
    rows = run_points(ThreadReport(), [(0.0,), (1.0,)], workers=1, progress=False, blas_threads=3)
    assert _as_lists(rows) == [three] * 2 and counts() == before
    rows = run_points(ThreadReport(), [(0.0,)], workers=1, progress=False)
    assert _as_lists(rows) == [before]


def test_run_points_gives_the_limit_to_pool_workers_and_threads():
    before, three = counts(), reported(3)
    points = [(float(i),) for i in range(4)]
    assert _as_lists(run_points(ThreadReport(), points, workers=2, progress=False, blas_threads=3)) == [three] * 4
    # the default pool keeps its one BLAS thread per worker process
    assert _as_lists(run_points(ThreadReport(), points, workers=2, progress=False)) == [[1] * len(before)] * 4
    with ThreadPoolExecutor(2) as pool:                       # threads share this process's BLAS
        rows = run_points(ThreadReport(), points, executor=pool, progress=False, blas_threads=3)
        assert _as_lists(rows) == [three] * 4
        assert _as_lists(run_points(ThreadReport(), points, executor=pool, progress=False)) == [before] * 4
    assert counts() == before


def test_run_points_rejects_bad_blas_threads():
    with pytest.raises(ValueError, match="blas_threads"):
        run_points(ThreadReport(), [(0.0,)], workers=1, progress=False, blas_threads=0)


def test_resumed_surface_with_a_limit_is_bit_identical(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 4)), rng.integers(0, 3, 40)
    net = Sequential(Linear(4, 6, rng=0), BatchNorm(6), Tanh(), Linear(6, 3, rng=1))
    f = Objective(net, CrossEntropyLoss(), x, y, bn="batch")
    dirs = random_directions(f, 2, seed=0)
    grid = np.linspace(-1, 1, 4)
    straight = surface(f, dirs, grid, grid, workers=1, progress=False, blas_threads=1)
    store = tmp_path / "store"
    surface(f, dirs, grid, grid, workers=1, progress=False, store=store, blas_threads=1)
    files = sorted((store / "points").glob("*.json"))
    for file in files[::3]:                                   # as if killed before these points were written
        file.unlink()
    resumed = surface(f, dirs, grid, grid, workers=1, progress=False, store=store, blas_threads=1)
    assert np.array_equal(resumed.loss, straight.loss) and np.array_equal(resumed.accuracy, straight.accuracy)
    assert len(list((store / "points").glob("*.json"))) == 16


def test_benchmark_cli_takes_blas_threads(capsys):
    benchmark_main(["--size", "2", "--workers", "1", "--blas-threads", "1", "--quiet"])
    assert "2x2 surface on 1 worker(s)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        benchmark_main(["--size", "2", "--blas-threads", "0"])
    assert "--blas-threads must be at least 1" in capsys.readouterr().err
