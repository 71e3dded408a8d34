"""Every tutorial runs: ``tutorials/NN_*.py`` executed as a script with ``QUICK=1``, one test per file.

Tutorials assert their own claims (a derivation that stops matching its numerical check stops the script), so exit
status 0 means every comparison in the tutorial held. Each runs in a fresh interpreter, with the Agg backend, from a
temporary working directory, and with ``NORMREF_TUTORIAL_OUT`` pointing at a temporary folder, so that figures are
produced (the plotting code is exercised) but nothing is written into the repository.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TUTORIALS_DIR = Path(__file__).resolve().parent.parent / "tutorials"
TUTORIALS = sorted(TUTORIALS_DIR.glob("[0-9][0-9]_*.py"))
TIMEOUT_S = 180  # QUICK runs take seconds; the limit only stops a hung tutorial from hanging CI


def _listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if "__pycache__" not in p.parts}


def test_tutorials_exist():
    names = {p.name for p in TUTORIALS}
    assert {"01_batchnorm.py", "02_one_primitive.py"} <= names, sorted(names)


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs(path, tmp_path):
    out_dir = tmp_path / "figures"
    env = dict(os.environ, QUICK="1", MPLBACKEND="Agg", NORMREF_TUTORIAL_OUT=str(out_dir))
    before = _listing(TUTORIALS_DIR)
    try:
        result = subprocess.run([sys.executable, str(path)], cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{path.name} did not finish within {TIMEOUT_S} s with QUICK=1\n{exc.stdout or ''}")
    assert result.returncode == 0, (f"{path.name} exited with status {result.returncode}\n"
                                    f"--- stdout (tail) ---\n{result.stdout[-4000:]}\n"
                                    f"--- stderr (tail) ---\n{result.stderr[-4000:]}")
    assert _listing(TUTORIALS_DIR) == before, f"{path.name} wrote into tutorials/"


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_is_a_percent_notebook(path):
    """The file reads as a notebook (jupytext percent format) that opens with prose and alternates prose and code."""
    import jupytext  # in the [test] extra

    notebook = jupytext.read(path, fmt="py:percent")
    kinds = [cell.cell_type for cell in notebook.cells]
    assert kinds[0] == "markdown", f"{path.name} should open with a markdown cell"
    assert kinds.count("markdown") >= 3 and kinds.count("code") >= 3, kinds


README = TUTORIALS_DIR.parent / "README.md"


def _fenced_block_after(text: str, heading: str, lang: str) -> str:
    """The first ```lang fenced block after ``heading`` in ``text``."""
    start = text.index(f"```{lang}\n", text.index(heading)) + len(f"```{lang}\n")
    return text[start:text.index("```", start)]


def test_readme_lists_every_tutorial():
    text = README.read_text(encoding="utf-8")
    missing = [p.name for p in TUTORIALS if p.name not in text]
    assert not missing, f"README's Tutorials section does not list {missing}"


def test_readme_example_prints_what_the_readme_shows(tmp_path):
    """The README's example runs and prints its table: same rows, methods, probes and verdicts.

    The error columns are rounding-level numbers (1e-10, 1e-16) that may differ in the last digits between NumPy
    builds, so they are compared only through the pass/fail status.
    """
    text = README.read_text(encoding="utf-8")
    code = _fenced_block_after(text, "## Example", "python")
    shown = _fenced_block_after(text, "## Example", "text").splitlines()
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                            timeout=TIMEOUT_S, env=dict(os.environ, MPLBACKEND="Agg"))
    assert result.returncode == 0, result.stderr[-4000:]
    printed = result.stdout.splitlines()
    assert len(printed) == len(shown), "\n".join(printed)
    for got, want in zip(printed, shown):
        got_fields, want_fields = got.split(), want.split()
        is_row = len(want_fields) == 7 and want_fields[-1] in ("pass", "FAIL")
        if is_row:  # tensor method probes | max abs err, norm-rel err | tol status
            assert got_fields[:3] + got_fields[5:] == want_fields[:3] + want_fields[5:], (got, want)
        else:
            assert got == want
