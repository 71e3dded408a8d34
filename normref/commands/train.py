"""``normref train``: train a model of the zoo (:mod:`normref.models`) with a chosen normalizer on digits or a
synthetic set.

Example: ``normref train --model cnn --norm batch --epochs 10 --data digits --out runs/cnn-bn``. Models: ``mlp``
(flat features: blobs, spirals, digits, images), ``cnn`` (= ``vgg``) and ``resnet`` (images: digits, images), and
``transformer`` (token sequences: ``--data tokens``, the synthetic task of :func:`normref.data.make_token_task`). The loop, history
and checkpoints are :mod:`normref.train`; this module only parses arguments, builds the pieces and reports. With
``--out`` it writes ``checkpoint.npz`` after every epoch (``--resume`` continues from it), the final model as
``model.npz`` (:func:`normref.nn.save_npz`) and ``history.json`` with the test result. ``--blas-threads N`` limits
BLAS to ``N`` threads during training (``train(..., blas_threads=N)``).
"""

from __future__ import annotations

DATASETS = ("digits", "blobs", "spirals", "images", "tokens")
MODELS = ("mlp", "cnn", "vgg", "resnet", "transformer")
IMAGE_MODELS = ("cnn", "vgg", "resnet")
OPTIMIZERS = ("sgd", "adam", "adamw", "sgdp", "adamp")


def add_parser(sub) -> None:
    from ..nn.factory import NORM_NAMES

    p = sub.add_parser("train", help="train a small MLP/CNN/ResNet/Transformer with a normref normalizer")
    p.add_argument("--model", choices=MODELS, default="cnn", help="cnn is the VGG-style CNN (same as vgg)")
    p.add_argument("--norm", choices=NORM_NAMES, default="batch", help="normalizer after every hidden layer")
    p.add_argument("--data", choices=DATASETS, default="digits",
                   help="digits: sklearn's 8x8 digits (needs the 'data' extra); images: synthetic 12x12 shapes; "
                        "tokens: synthetic token sequences (for --model transformer)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default 0.1 for SGD/SGDP, 1e-3 for Adam*)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD/SGDP momentum")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--schedule", choices=("constant", "cosine", "step"), default="cosine",
                   help="per-step learning-rate multiplier (step: x0.1 at 50%% and 75%% of the steps)")
    p.add_argument("--widths", type=int, nargs="+", default=None,
                   help="hidden widths (MLP: per layer, default 64 64; CNN/ResNet: per stage, default 16 32; "
                        "Transformer: d_model, default 32)")
    p.add_argument("--no-skip", action="store_true",
                   help="resnet only: remove the shortcut connections (the same parameters, a plain network)")
    p.add_argument("--mask-padding", action="store_true",
                   help="transformer only: the attention ignores pad tokens as keys (they are always left out of "
                        "the pooling)")
    p.add_argument("--train-only", choices=("all", "norm-affine"), default="all",
                   help="norm-affine: update only the normalizers' gamma/beta (Frankle et al. 2021)")
    p.add_argument("--seed", type=int, default=0, help="initialization, split and batch-order seed")
    p.add_argument("--out", default=None, help="directory for checkpoint.npz, model.npz and history.json")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.npz if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no per-epoch lines")
    p.add_argument("--blas-threads", type=int, default=None, metavar="N",
                   help="limit BLAS to N threads while training (default: leave the library's setting; 1 is much "
                        "faster for these small networks on a few shared cores)")
    p.set_defaults(func=run)


def _load(name: str, model: str, seed: int):
    from .. import data

    if name == "digits":
        return data.load_digits(flatten=model == "mlp")
    if name == "blobs":
        return data.make_blobs(1500, 4, 2, spread=1.5, seed=seed)
    if name == "spirals":
        return data.make_spirals(1500, 3, noise=0.05, seed=seed)
    if name == "tokens":
        return data.make_token_task(1500, 16, vocab_size=64, num_classes=4, seed=seed)
    ds = data.make_shapes(1800, 12, seed=seed)
    if model == "mlp":
        ds = data.Dataset(ds.x.reshape(len(ds), -1), ds.y, ds.name, ds.num_classes, ds.info)
    return ds


def run(args) -> int:
    import json
    import os
    import sys

    import numpy as np

    from .. import optim
    from ..data import DataLoader, MissingDependencyError, train_val_test_split
    from ..nn import save_npz
    from ..optim import schedules
    from ..models import build_model
    from ..train import evaluate, train

    def fail(message):
        print(f"normref train: {message}", file=sys.stderr)
        return 2

    if args.epochs < 1 or args.batch_size < 1:
        return fail("--epochs and --batch-size must be at least 1")
    if args.resume and args.out is None:
        return fail("--resume needs --out (the directory holding checkpoint.npz)")
    if args.blas_threads is not None and args.blas_threads < 1:
        return fail(f"--blas-threads must be at least 1, got {args.blas_threads}")
    try:
        dataset = _load(args.data, args.model, args.seed)
    except MissingDependencyError as exc:
        return fail(str(exc))
    if args.model in IMAGE_MODELS and dataset.x.ndim != 4:
        return fail(f"--model {args.model} needs image data (digits or images), not {args.data}")
    if args.no_skip and args.model != "resnet":
        return fail("--no-skip applies to --model resnet only")
    if args.mask_padding and args.model != "transformer":
        return fail("--mask-padding applies to --model transformer only")
    if (args.model == "transformer") != (args.data == "tokens"):
        return fail("--model transformer trains on --data tokens, and token data needs --model transformer")
    splits = train_val_test_split(dataset, val=0.1, test=0.2, seed=args.seed)

    norm = None if args.norm == "none" else args.norm
    try:
        if args.model == "mlp":
            model = build_model("mlp", norm, in_features=splits.train.x.shape[1], num_classes=dataset.num_classes,
                                hidden=tuple(args.widths or (64, 64)), seed=args.seed)
        elif args.model == "transformer":
            if args.widths is not None and len(args.widths) != 1:
                return fail("--widths takes one value for the transformer (d_model)")
            model = build_model("transformer", norm, vocab_size=dataset.info["embedding"].shape[0],
                                num_classes=dataset.num_classes, max_len=dataset.x.shape[1],
                                d_model=(args.widths or [32])[0], pad_id=dataset.info["pad_id"],
                                mask_padding=args.mask_padding, seed=args.seed)
        elif args.model == "resnet":
            model = build_model("resnet", norm, in_channels=dataset.x.shape[1], num_classes=dataset.num_classes,
                                widths=tuple(args.widths or (16, 32)), skip=not args.no_skip, seed=args.seed)
        else:
            model = build_model("vgg", norm, in_channels=dataset.x.shape[1], num_classes=dataset.num_classes,
                                image_size=dataset.x.shape[2], widths=tuple(args.widths or (16, 32)),
                                seed=args.seed)
    except (TypeError, ValueError) as exc:
        return fail(f"cannot build the model: {exc}")

    select = None
    if args.train_only == "norm-affine":
        if norm is None:
            return fail("--train-only norm-affine needs a normalizer (--norm is none)")
        select = lambda name, value: name.rsplit(".", 1)[-1] in ("gamma", "beta")  # noqa: E731
    lr = args.lr if args.lr is not None else (0.1 if args.optimizer in ("sgd", "sgdp") else 1e-3)
    kinds = {"sgd": (optim.SGD, {"momentum": args.momentum}), "sgdp": (optim.SGDP, {"momentum": args.momentum}),
             "adam": (optim.Adam, {}), "adamw": (optim.AdamW, {}), "adamp": (optim.AdamP, {})}
    cls, extra = kinds[args.optimizer]
    optimizer = cls(model, lr=lr, weight_decay=args.weight_decay, params=select, **extra)
    if len(splits.train) < args.batch_size:
        return fail(f"--batch-size {args.batch_size} exceeds the {len(splits.train)} training samples")
    # drop the last, incomplete batch: a batch of one sample has no batch statistics (BatchNorm on (N, C) input)
    loader = DataLoader(splits.train, args.batch_size, seed=args.seed, drop_last=True)
    steps = args.epochs * len(loader)
    schedule = {"constant": schedules.Constant(1.0), "cosine": schedules.CosineDecay(steps),
                "step": schedules.MultiStepDecay([max(1, steps // 2), max(2, 3 * steps // 4)], 0.1)}[args.schedule]

    try:
        history = train(model, loader, optimizer, epochs=args.epochs, schedule=schedule, val_data=splits.val,
                        checkpoint_dir=args.out, resume=args.resume, quiet=args.quiet,
                        blas_threads=args.blas_threads)
    except ValueError as exc:
        return fail(str(exc))
    test = evaluate(model, splits.test)
    seconds = float(np.sum(history["epoch_seconds"]))
    acc = "" if test["accuracy"] is None else f", accuracy {100 * test['accuracy']:.2f} %"
    print(f"{args.model}/{args.norm} on {args.data}: test loss {test['loss']:.4f}{acc} "
          f"({len(splits.test)} samples), {len(history['epoch'])} epochs, {seconds:.1f} s of training")
    if args.out is not None:
        save_npz(model, os.path.join(args.out, "model.npz"))
        with open(os.path.join(args.out, "history.json"), "w") as f:
            json.dump({"args": {k: v for k, v in vars(args).items() if k != "func"}, "test": test,
                       "history": history}, f)
    return 0
