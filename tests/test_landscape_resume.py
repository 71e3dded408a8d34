"""Resume after SIGKILL: a surface computation killed midway (after some points were written) and resumed equals an
uninterrupted run, with no point lost and no written point computed again (every evaluation is logged by the
workers themselves, so the check counts real computations, not bookkeeping)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from normref.landscape import Surface

JOB = r'''
import os, sys, time
import numpy as np
from normref.landscape import Objective, random_directions, surface
from normref.nn import BatchNorm, CrossEntropyLoss, Linear, Sequential, Tanh


class LoggedObjective(Objective):
    """Appends "<tag> <a> <b>" to a log for every evaluation (O_APPEND: whole lines from any process)."""

    def evaluate(self, theta, **kwargs):
        time.sleep(self.delay)
        out = super().evaluate(theta, **kwargs)
        coords = np.linalg.lstsq(self.vectors.T, theta - self.theta0, rcond=None)[0]
        fd = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, (f"{self.tag} {coords[0]:.6f} {coords[1]:.6f}\n").encode())
        os.close(fd)
        return out


def main(store, log, tag, workers, delay):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 4)), rng.integers(0, 3, 40)
    net = Sequential(Linear(4, 6, rng=0), BatchNorm(6), Tanh(), Linear(6, 3, rng=1))
    f = LoggedObjective(net, CrossEntropyLoss(), x, y, bn="batch")
    dirs = random_directions(f, 2, seed=0)
    f.vectors, f.log, f.tag, f.delay = dirs.vectors, log, tag, delay
    grid = np.linspace(-1, 1, 5)
    surface(f, dirs, grid, grid, store=store, workers=workers, progress=True)


if __name__ == "__main__":
    store, log, tag, workers, delay = sys.argv[1:]
    main(store, log, tag, int(workers), float(delay))
'''


def run_job(script, store, log, tag, workers, delay):
    return subprocess.run([sys.executable, str(script), str(store), str(log), tag, str(workers), str(delay)],
                          capture_output=True, text=True, timeout=120)


def read_log(path):
    entries = {}
    for line in Path(path).read_text().splitlines():
        tag, a, b = line.split()
        entries.setdefault(tag, []).append((float(a), float(b)))
    return entries


def written(store):
    return {tuple(np.round(__import__("json").loads(p.read_text())["point"], 6))
            for p in (Path(store) / "points").glob("*.json")}


@pytest.mark.parametrize("workers", [1, 2])
def test_sigkill_midway_then_resume_equals_an_uninterrupted_run(tmp_path, workers):
    script = tmp_path / "surface_job.py"
    script.write_text(JOB)
    log = tmp_path / "evaluations.log"
    ref = run_job(script, tmp_path / "reference", tmp_path / "ref.log", "ref", 1, 0.0)
    assert ref.returncode == 0, ref.stderr

    store = tmp_path / "run"
    victim = subprocess.Popen([sys.executable, str(script), str(store), str(log), "first", str(workers), "0.15"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while len(list((store / "points").glob("*.json"))) < 6:
        assert victim.poll() is None, "the job finished before it could be killed"
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.02)
    os.killpg(victim.pid, signal.SIGKILL)  # the job and its pool workers, as a crash would
    victim.wait()
    time.sleep(0.3)
    done_at_kill = written(store)
    assert 6 <= len(done_at_kill) < 25

    resumed = run_job(script, store, log, "resume", workers, 0.0)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming, {len(done_at_kill)}/25 points already done" in resumed.stderr

    entries = read_log(log)
    first, second = entries["first"], entries["resume"]
    all_points = {(round(a, 6), round(b, 6)) for a in np.linspace(-1, 1, 5) for b in np.linspace(-1, 1, 5)}
    fix = lambda pts: [(round(a, 6) + 0.0, round(b, 6) + 0.0) for a, b in pts]  # noqa: E731 (-0.0 vs 0.0)
    first, second = fix(first), fix(second)
    done_at_kill = {(a + 0.0, b + 0.0) for a, b in done_at_kill}
    assert len(first) == len(set(first))  # the killed run computed nothing twice
    assert len(second) == len(set(second))  # neither did the resume
    assert done_at_kill <= set(first)
    assert set(second) == all_points - done_at_kill  # exactly the missing points: none lost, none redone
    assert len(set(first) - done_at_kill) <= workers  # only the points in flight at the kill were lost work

    a = Surface.load(tmp_path / "reference" / "surface.npz")
    b = Surface.load(store / "surface.npz")
    assert np.array_equal(a.loss, b.loss) and np.array_equal(a.accuracy, b.accuracy)


def test_a_store_refuses_a_different_computation(tmp_path):
    from normref.landscape import Objective, random_directions, surface
    from normref.nn import CrossEntropyLoss, Linear

    rng = np.random.default_rng(0)
    f = Objective(Linear(3, 2, rng=0), CrossEntropyLoss(), rng.normal(size=(8, 3)), rng.integers(0, 2, 8),
                  bn="running")
    dirs = random_directions(f, 2, seed=0, bias="keep")
    surface(f, dirs, [0.0, 1.0], [0.0, 1.0], store=tmp_path, workers=1, progress=False)
    with pytest.raises(ValueError, match="different computation"):
        surface(f, random_directions(f, 2, seed=1, bias="keep"), [0.0, 1.0], [0.0, 1.0], store=tmp_path,
                workers=1, progress=False)
    # the same computation again: nothing left to do, same values
    again = surface(f, dirs, [0.0, 1.0], [0.0, 1.0], store=tmp_path, workers=1, progress=False)
    assert again.loss.shape == (2, 2) and not list(tmp_path.glob("points/.tmp-*"))
