"""Every figure script runs in quick mode and writes at least one non-empty PNG (a smoke test; the claims each figure
tests are measured in its full run and reported in figures/README.md)."""

import importlib.util
import os
from pathlib import Path

import pytest

FIGURES = Path(__file__).resolve().parent.parent / "figures"
SCRIPTS = sorted(FIGURES.glob("fig_*.py"))


def _load(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_there_are_figures():
    assert SCRIPTS, "no figures/fig_*.py found"


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_figure_quick(path, tmp_path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    before = set(os.listdir(FIGURES))
    _load(path).main(tmp_path, quick=True)
    pngs = list(tmp_path.glob("*.png"))
    assert pngs and all(p.stat().st_size > 1000 for p in pngs)
    assert set(os.listdir(FIGURES)) == before, "a figure wrote into the repository in quick mode"


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_figure_is_in_the_gallery(path):
    gallery = (FIGURES / "README.md").read_text()
    assert path.stem in gallery, f"{path.stem} is not described in figures/README.md"
