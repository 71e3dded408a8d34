"""What every ``figures/fig_*.py`` shares: its output and cache folders, its command line, and small cache helpers.

Every figure script defines ``main(out_dir, quick=False) -> dict`` (called by ``figures/make_all.py`` and
``tests/test_figures.py``) and ends with ``cli(main)``, so all of them take the same command line::

    python figures/fig_NN_name.py [OUT_DIR] [--quick | --full]

* ``OUT_DIR`` defaults to ``figures/gallery/`` (the committed gallery) in full mode and to ``figures/out/quick/``
  (git-ignored scratch) in quick mode, so that a quick run never overwrites a gallery image or reads a full run's
  cache (some figures keep quick and full results in the same cache folder; see each script's ``figure_dirs`` call).
* Full quality is the default; ``--quick`` runs the tiny CI version. ``QUICK=1`` in the environment means
  ``--quick`` (the tutorials' convention); an explicit ``--full`` wins over it.
* The numbers ``main`` returns are printed as JSON. Anything else (an unknown flag, two folders) is a usage error.

Importing this module sets ``MPLBACKEND=Agg`` unless it is already set: figures are written to files, never shown.
The scripts are run as ``python figures/fig_NN.py`` (this folder is then ``sys.path[0]``) and loaded by file path
(``importlib.util.spec_from_file_location`` in the tests and in ``make_all.py``; then it is not), so each script puts
its own folder on ``sys.path`` before ``from _figure import ...``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")

HERE = Path(__file__).resolve().parent
GALLERY = HERE / "gallery"
QUICK_OUT = HERE / "out" / "quick"  # figures/out/ is git-ignored


def output_dir(out_dir) -> Path:
    """``out_dir`` as a ``Path``, created if missing."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def figure_dirs(out_dir, name: str, quick: bool = False, split_cache: bool = True) -> tuple[Path, Path]:
    """Create and return ``(out_dir, cache)`` for one figure.

    ``cache`` is ``out_dir/cache/<name>/quick`` or ``.../full`` with ``split_cache=True``, and ``out_dir/cache/<name>``
    shared by both modes with ``split_cache=False`` (for figures whose cache file names already tell the two apart).
    Each script keeps the layout it had when its full-mode cache under ``figures/gallery/cache/`` was written, so
    that cache stays valid.
    """
    out_dir = output_dir(out_dir)
    cache = out_dir / "cache" / name
    if split_cache:
        cache = cache / ("quick" if quick else "full")
    cache.mkdir(parents=True, exist_ok=True)
    return out_dir, cache


def config_key(obj) -> str:
    """A short, stable hash of a JSON-able object (cache file and store names: new settings, new name)."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]


def write_json(path: Path, data, indent: int | None = None) -> None:
    """Write ``data`` as JSON to ``path`` atomically (temporary file, then rename), creating the folder if missing.

    An interrupted run therefore leaves either no cache file or a complete one, never a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=indent))
    os.replace(tmp, path)


def save(fig, path: Path, dpi=None) -> None:
    """``fig.savefig(path, dpi=dpi)`` and close it (``dpi=None``: the figure's own dpi)."""
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def figure_parser(prog: str | None = None, description: str | None = None) -> argparse.ArgumentParser:
    """The arguments every figure takes, ``[OUT_DIR] [--quick | --full]``; ``make_all.py`` adds its own to these."""
    parser = argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False)
    parser.add_argument("out_dir", nargs="?", type=Path, default=None, metavar="OUT_DIR",
                        help=f"output folder (default: {GALLERY.relative_to(HERE.parent)}/, "
                             f"or {QUICK_OUT.relative_to(HERE.parent)}/ with --quick)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="tiny version, for CI (also: QUICK=1 in the environment)")
    mode.add_argument("--full", action="store_true", help="full quality (the default; overrides QUICK=1)")
    return parser


def resolve(args: argparse.Namespace, environ=None) -> tuple[Path, bool]:
    """``(out_dir, quick)`` from parsed :func:`figure_parser` arguments and the environment (``QUICK=1``)."""
    environ = os.environ if environ is None else environ
    quick = args.quick or (not args.full and environ.get("QUICK") == "1")
    out_dir = args.out_dir if args.out_dir is not None else (QUICK_OUT if quick else GALLERY)
    return out_dir, quick


def parse_args(argv=None, environ=None, prog: str | None = None, description: str | None = None
               ) -> tuple[Path, bool]:
    """Parse a figure's command line into ``(out_dir, quick)``; a usage error exits with status 2."""
    return resolve(figure_parser(prog, description).parse_args(argv), environ)


def cli(main, argv=None, environ=None) -> dict:
    """Run a figure's ``main`` from the command line and print the numbers it returns as JSON."""
    module = sys.modules.get(main.__module__)
    doc = (getattr(module, "__doc__", None) or "").strip()
    out_dir, quick = parse_args(argv, environ, description=doc.splitlines()[0] if doc else None)
    numbers = main(out_dir, quick=quick)
    print(json.dumps(numbers, indent=1, default=float))
    return numbers
