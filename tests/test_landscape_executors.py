"""Any concurrent.futures.Executor computes the same surface as a serial run: the default process pool, a thread pool,
a dask.distributed LocalCluster (extra ``dask``) and mpi4py's MPIPoolExecutor under mpiexec (extra ``mpi``)."""

import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from normref.landscape import Objective, Surface, hutchinson_trace, random_directions, surface
from normref.nn import BatchNorm, CrossEntropyLoss, Linear, Sequential, Tanh

GRID = np.linspace(-1, 1, 5)


def problem():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 4)), rng.integers(0, 3, 40)
    net = Sequential(Linear(4, 6, rng=0), BatchNorm(6), Tanh(), Linear(6, 3, rng=1))
    f = Objective(net, CrossEntropyLoss(), x, y, bn="batch", ghost_batch_size=20)
    return f, random_directions(f, 2, seed=0)


@pytest.fixture(scope="module")
def serial():
    f, dirs = problem()
    return surface(f, dirs, GRID, GRID, workers=1, progress=False)


def test_default_process_pool_equals_serial(serial, tmp_path):
    f, dirs = problem()
    s = surface(f, dirs, GRID, GRID, workers=2, progress=False, store=tmp_path)
    assert np.array_equal(s.loss, serial.loss) and np.array_equal(s.accuracy, serial.accuracy)
    assert len(list((tmp_path / "points").glob("*.json"))) == 25


def test_thread_pool_workers_do_not_share_a_model(serial):
    f, dirs = problem()
    with ThreadPoolExecutor(4) as pool:
        s = surface(f, dirs, GRID, GRID, executor=pool, progress=False)
        trace = hutchinson_trace(f, 8, executor=pool)
    assert np.array_equal(s.loss, serial.loss)
    assert trace.estimate == hutchinson_trace(f, 8).estimate


def test_dask_local_cluster(serial, tmp_path):
    distributed = pytest.importorskip("distributed", reason='needs the optional extra "dask": pip install -e ".[dask]"')
    f, dirs = problem()
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=40) as cluster, distributed.Client(cluster) as client:
        s = surface(f, dirs, GRID, GRID, executor=client.get_executor(), progress=False, store=tmp_path / "dask")
    assert np.array_equal(s.loss, serial.loss)
    assert np.array_equal(Surface.load(tmp_path / "dask" / "surface.npz").loss, serial.loss)


MPI_JOB = r'''
import sys
import numpy as np
from mpi4py.futures import MPIPoolExecutor
sys.path.insert(0, TESTS_DIR)  # the workers re-run this file as their main module, without our argv
from test_landscape_executors import GRID, problem
from normref.landscape import surface

if __name__ == "__main__":
    f, dirs = problem()
    with MPIPoolExecutor() as pool:
        s = surface(f, dirs, GRID, GRID, executor=pool, progress=False)
    np.save(sys.argv[1], s.loss)
'''


def mpiexec_path():
    """The mpiexec installed with this Python's mpich wheel (beside the interpreter), else the one on PATH."""
    local = Path(sys.executable).parent / "mpiexec"
    return str(local) if local.exists() else shutil.which("mpiexec")


def test_mpi_pool_executor_under_mpiexec(serial, tmp_path):
    pytest.importorskip("mpi4py", reason='needs the optional extra "mpi": pip install -e ".[mpi]"')
    mpiexec = mpiexec_path()
    if mpiexec is None:
        pytest.skip('mpi4py is installed but no mpiexec was found: pip install -e ".[mpi]" brings the mpich wheel')
    script = tmp_path / "mpi_surface.py"
    script.write_text(MPI_JOB.replace("TESTS_DIR", repr(str(Path(__file__).parent))))
    out = tmp_path / "loss.npy"
    # one manager and two workers: python -m mpi4py.futures starts the pool from the MPI world (no spawning)
    result = subprocess.run([mpiexec, "-n", "3", sys.executable, "-m", "mpi4py.futures", str(script), str(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert np.array_equal(np.load(out), serial.loss)
