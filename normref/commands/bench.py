"""``normref bench``: Numba (and CUDA, PyTorch) against the NumPy reference and the memory-bandwidth floor.

The measurement and the table are :mod:`normref.bench`; this module is only the command line.
"""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="time the backends per layer and shape against the STREAM-triad floor")
    p.add_argument("--layer", action="append",
                   help="only this layer (repeatable), e.g. LayerNorm, DyT, 'PowerNorm (approx)'; any layer of the "
                        "standard five or of the seed layers")
    p.add_argument("--seed", action="store_true",
                   help="the seed layers with a Numba kernel (PowerNorm, Unified Norm, RN-B, test-time BN, DyT, "
                        "EvoNorm, BatchChannelNorm) instead of the five standard layers")
    p.add_argument("--quick", action="store_true", help="tiny shapes and few repetitions (a smoke test)")
    p.add_argument("--largest", action="store_true", help="only each layer's largest shape (>= 32 MiB: the targets)")
    p.add_argument("--rounds", type=int, default=None,
                   help="rounds per measurement; every column runs in every round (default 3; --quick: 1)")
    p.add_argument("--reps", type=int, default=None,
                   help="timed calls per column and round, after one warm-up call (default 3; --quick: 2)")
    p.set_defaults(func=run)


def run(args) -> int:
    import sys

    from ..bench import LAYERS, SEED_LAYERS, run_bench

    known = {layer.name.lower() for layer in LAYERS + SEED_LAYERS}
    unknown = {n.lower() for n in args.layer or []} - known
    if unknown:
        print(f"normref bench: unknown layer(s) {sorted(unknown)}; known: {[l.name for l in LAYERS + SEED_LAYERS]}",
              file=sys.stderr)
        return 2
    for name in ("rounds", "reps"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            print(f"normref bench: --{name} must be at least 1", file=sys.stderr)
            return 2
    run_bench(layers=args.layer, seed=args.seed, quick=args.quick, largest=args.largest, rounds=args.rounds,
              reps_per_round=args.reps)
    return 0
