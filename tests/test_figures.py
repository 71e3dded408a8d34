"""Every figure script runs in quick mode and writes at least one non-empty PNG (a smoke test; the claims each figure
tests are measured in its full run and reported in figures/README.md), and every script (and make_all.py) takes the
one command line of figures/_figure.py: ``[OUT_DIR] [--quick | --full]``, ``QUICK=1`` meaning ``--quick``."""

import importlib
import importlib.util
import json
import os
import runpy
import subprocess
import sys
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
    before = set(os.listdir(FIGURES)) - {"__pycache__"}  # loading a script may write its bytecode
    _load(path).main(tmp_path, quick=True)
    pngs = list(tmp_path.glob("*.png"))
    assert pngs and all(p.stat().st_size > 1000 for p in pngs)
    assert set(os.listdir(FIGURES)) - {"__pycache__"} == before, "a figure wrote into the repository in quick mode"


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_figure_is_in_the_gallery(path):
    gallery = (FIGURES / "README.md").read_text()
    assert path.stem in gallery, f"{path.stem} is not described in figures/README.md"


# --- the command line -------------------------------------------------------------------------------------------------

@pytest.fixture
def figure_lib(monkeypatch):
    """``figures/_figure.py``, imported the way the scripts import it (so that patching it reaches them)."""
    monkeypatch.syspath_prepend(str(FIGURES))
    return importlib.import_module("_figure")


def _cases(lib, tmp):
    """(argv, environment, expected (out_dir, quick)) for the command line ``[OUT_DIR] [--quick | --full]``."""
    return [
        ([], {}, (lib.GALLERY, False)),
        (["--full"], {}, (lib.GALLERY, False)),
        (["--quick"], {}, (lib.QUICK_OUT, True)),
        ([], {"QUICK": "1"}, (lib.QUICK_OUT, True)),
        ([], {"QUICK": "0"}, (lib.GALLERY, False)),
        (["--full"], {"QUICK": "1"}, (lib.GALLERY, False)),  # an explicit flag wins over the environment
        ([str(tmp)], {}, (tmp, False)),
        ([str(tmp), "--quick"], {}, (tmp, True)),
        (["--quick", str(tmp)], {}, (tmp, True)),
        ([str(tmp)], {"QUICK": "1"}, (tmp, True)),
    ]


def test_parse_args(figure_lib, tmp_path):
    for argv, env, expected in _cases(figure_lib, tmp_path):
        assert figure_lib.parse_args(argv, environ=env) == expected, (argv, env)


@pytest.mark.parametrize("argv, message", [
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--qu"], "unrecognized arguments: --qu"),  # no abbreviations
    (["--quick", "--full"], "not allowed with argument"),
    (["a", "b"], "unrecognized arguments: b"),
])
def test_usage_errors(figure_lib, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        figure_lib.parse_args(argv, environ={}, prog="fig_xx.py")
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage: fig_xx.py [-h] [--quick | --full] [OUT_DIR]" in err and message in err


class _Parsed(Exception):
    """Raised in place of running a figure: carries what its command line parsed to."""


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_script_command_line(path, figure_lib, monkeypatch, tmp_path, capsys):
    """Each script, run as ``__main__``, parses its arguments with the shared parser (and then would call main)."""
    # checked first: a script with its own command line would run for real below (possibly a full run into the gallery)
    assert path.read_text().endswith('\nif __name__ == "__main__":\n    cli(main)\n'), "not the shared cli"
    parse_args = figure_lib.parse_args

    def parse_then_stop(argv=None, environ=None, **kwargs):
        raise _Parsed(parse_args(argv, environ, **kwargs))

    monkeypatch.setattr(figure_lib, "parse_args", parse_then_stop)
    for argv, env, expected in _cases(figure_lib, tmp_path):
        monkeypatch.setattr(sys, "argv", [str(path), *argv])
        monkeypatch.delenv("QUICK", raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        with pytest.raises(_Parsed) as parsed:
            runpy.run_path(str(path), run_name="__main__")
        assert parsed.value.args[0] == expected, (argv, env)

    monkeypatch.setattr(figure_lib, "parse_args", parse_args)
    monkeypatch.setattr(sys, "argv", [str(path), "--bogus"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(path), run_name="__main__")
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert f"usage: {path.name} [-h] [--quick | --full] [OUT_DIR]" in err
    assert "unrecognized arguments: --bogus" in err


def test_cli_runs_a_figure(tmp_path):
    """``python figures/fig_10_numerics.py OUT_DIR --quick`` (the cheapest figure) prints what ``main`` returns."""
    path = FIGURES / "fig_10_numerics.py"
    env = dict(os.environ, MPLBACKEND="Agg")
    env.pop("QUICK", None)
    proc = subprocess.run([sys.executable, str(path), str(tmp_path / "cli"), "--quick"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "cli" / "fig_10_numerics.png").stat().st_size > 1000
    expected = _load(path).main(tmp_path / "direct", quick=True)
    assert json.loads(proc.stdout) == json.loads(json.dumps(expected, default=float))


def test_make_all_command_line(tmp_path, capsys):
    """make_all.py takes the same ``[OUT_DIR] [--quick | --full]`` (plus ``--only``) and rejects unknown flags."""
    make_all = _load(FIGURES / "make_all.py")
    assert make_all.main([str(tmp_path / "out"), "--quick", "--only", "no_such_figure"]) == 0
    assert (tmp_path / "out").is_dir()
    with pytest.raises(SystemExit) as exc:
        make_all.main(["--out", str(tmp_path)])
    assert exc.value.code == 2 and "unrecognized arguments: --out" in capsys.readouterr().err
