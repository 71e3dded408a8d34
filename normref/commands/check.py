"""``normref check``: the gradient checker on every registered layer × mode × affine × backend.

One row per combination; the exit status is 0 only if every row passes. Layers join by adding a spec
(:mod:`normref.testing.specs`), never by editing this file.
"""

from __future__ import annotations

import json
import sys
import time

from .._registry import BACKENDS, available_backends, available_op_backends


def add_parser(sub) -> None:
    p = sub.add_parser("check", help="gradient-check every registered layer, mode, affine setting, backend")
    p.add_argument("--layer", action="append", help="only this layer (repeatable), e.g. BatchNorm")
    p.add_argument("--backend", action="append", choices=BACKENDS, help="only this backend (repeatable)")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="print every tensor's row")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..testing.specs import all_specs, check

    specs = all_specs()
    if args.layer:
        wanted = {name.lower() for name in args.layer}
        unknown = wanted - {s.name.lower() for s in specs}
        if unknown:
            print(f"normref check: unknown layer(s) {sorted(unknown)}; known: {[s.name for s in specs]}",
                  file=sys.stderr)
            return 2
        specs = [s for s in specs if s.name.lower() in wanted]
    status = available_backends()
    backends = args.backend or [b for b in BACKENDS if status[b] is None]
    for b in backends:
        if status[b] is not None:
            print(f"normref check: backend {b!r} is not available: {status[b]}", file=sys.stderr)
            return 2

    rows, skipped = [], []
    start = time.perf_counter()
    for spec in specs:
        # a spec without an op is a composite of NumPy reference ops (containers, models): numpy backend only
        implemented = available_op_backends(spec.op) if spec.op else ["numpy"]
        for backend in backends:
            if backend not in implemented:
                skipped.append(f"{spec.name}/{backend}")
                continue
            for mode in spec.modes:
                for affine in spec.affine:
                    report = check(spec, mode=mode, affine=affine, backend=backend)
                    rows.append((spec, mode, affine, backend, report))
    elapsed = time.perf_counter() - start
    ok = bool(rows) and all(r[-1].passed for r in rows)

    if args.json:
        print(json.dumps({"passed": ok, "seconds": elapsed, "not_implemented": skipped,
                          "checks": [dict(layer=s.name, mode=m, affine=a, backend=b, **rep.to_dict())
                                     for s, m, a, b, rep in rows]}, indent=2))
        return 0 if ok else 1

    head = (f"{'layer':<14} {'mode':<6} {'affine':<6} {'backend':<10} {'shape':<16} {'tensors':<18} "
            f"{'central':>9} {'complex':>9}  status")
    print(head)
    print("-" * len(head))
    for spec, mode, affine, backend, rep in rows:
        tensors = ",".join(dict.fromkeys(r.tensor for r in rep.rows))
        shape = "x".join(map(str, spec.shapes[0]))
        complex_err = rep.worst("complex")
        complex_txt = "-" if complex_err != complex_err else f"{complex_err:.1e}"
        print(f"{spec.name:<14} {mode:<6} {str(affine):<6} {backend:<10} {shape:<16} {tensors:<18} "
              f"{rep.worst('central'):>9.1e} {complex_txt:>9}  {'pass' if rep.passed else 'FAIL'}")
        if args.verbose or not rep.passed:
            print("    " + rep.table().replace("\n", "\n    "))
    failed = sum(not r[-1].passed for r in rows)
    print("-" * len(head))
    print(f"{len(rows) - failed} passed, {failed} failed ({elapsed:.1f} s). Columns: worst norm-relative error "
          f"max|a-b|/max|b| of central differences and of the complex step, over all tensors.")
    for backend in backends:
        missing = [entry.split("/")[0] for entry in skipped if entry.endswith("/" + backend)]
        if missing:
            print(f"{len(missing)} layer(s) have no {backend!r} implementation and were checked on the others only: "
                  f"{', '.join(missing)}")
    return 0 if ok else 1
