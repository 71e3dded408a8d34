"""Regenerate every figure: ``python figures/make_all.py [--quick] [--out DIR] [--only NAME ...]``.

Each ``figures/fig_*.py`` defines ``main(out_dir, quick=False)``, writes its PNG(s) into ``out_dir`` and returns a
dict of the numbers it measured (printed here, quoted in ``figures/README.md``). Full-quality output goes to
``figures/gallery/`` (committed); ``--quick`` runs tiny versions for CI into a scratch directory. Figures that train
or scan keep their intermediate results under ``out_dir/cache/``, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")

HERE = Path(__file__).resolve().parent


def figure_scripts() -> list[Path]:
    """Every ``fig_*.py`` beside this file, in name order."""
    return sorted(HERE.glob("fig_*.py"))


def load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny versions, for CI")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default figures/gallery)")
    parser.add_argument("--only", action="append", help="only figures whose file name contains this (repeatable)")
    args = parser.parse_args(argv)
    out = args.out or (HERE / "gallery" if not args.quick else HERE.parent / "figures" / "out" / "quick")
    out.mkdir(parents=True, exist_ok=True)
    failures = 0
    for path in figure_scripts():
        if args.only and not any(name in path.name for name in args.only):
            continue
        start = time.perf_counter()
        print(f"[{path.stem}] ...", flush=True)
        try:
            numbers = load(path).main(out, quick=args.quick)
        except Exception as exc:  # report and go on: one broken figure should not hide the others
            failures += 1
            print(f"[{path.stem}] FAILED: {type(exc).__name__}: {exc}", flush=True)
            continue
        print(f"[{path.stem}] done in {time.perf_counter() - start:.1f} s: "
              f"{json.dumps(numbers, default=float) if numbers else ''}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
