"""The ``normref`` command line. Each subcommand is a module of :mod:`normref.commands` (``normref check``, ...)."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from . import commands


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="normref", description="normref: reference normalization layers.")
    sub = parser.add_subparsers(dest="command", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        if hasattr(module, "add_parser"):
            module.add_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
