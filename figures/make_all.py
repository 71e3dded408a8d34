"""Regenerate every figure: ``python figures/make_all.py [OUT_DIR] [--quick | --full] [--only NAME ...]``.

Each ``figures/fig_*.py`` defines ``main(out_dir, quick=False)``, writes its PNG(s) into ``out_dir`` and returns a
dict of the numbers it measured (printed here, quoted in ``figures/README.md``). ``OUT_DIR`` and the mode work as for
a single figure (``figures/_figure.py``): full quality into ``figures/gallery/`` (committed) by default; ``--quick``
(or ``QUICK=1``) runs tiny versions for CI into ``figures/out/quick/`` (git-ignored). Figures that train or scan keep
their intermediate results under ``OUT_DIR/cache/``, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # for _figure.py when this file is loaded by its path
    sys.path.insert(0, str(HERE))
from _figure import figure_parser, output_dir, resolve  # noqa: E402  (sets MPLBACKEND=Agg)


def figure_scripts() -> list[Path]:
    """Every ``fig_*.py`` beside this file, in name order."""
    return sorted(HERE.glob("fig_*.py"))


def load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None) -> int:
    parser = figure_parser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", metavar="NAME",
                        help="only figures whose file name contains this (repeatable)")
    args = parser.parse_args(argv)
    out, quick = resolve(args)
    out = output_dir(out)
    failures = 0
    for path in figure_scripts():
        if args.only and not any(name in path.name for name in args.only):
            continue
        start = time.perf_counter()
        print(f"[{path.stem}] ...", flush=True)
        try:
            numbers = load(path).main(out, quick=quick)
        except Exception as exc:  # report and go on: one broken figure should not hide the others
            failures += 1
            print(f"[{path.stem}] FAILED: {type(exc).__name__}: {exc}", flush=True)
            continue
        print(f"[{path.stem}] done in {time.perf_counter() - start:.1f} s: "
              f"{json.dumps(numbers, default=float) if numbers else ''}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
