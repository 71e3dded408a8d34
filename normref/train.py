r"""Training normref networks: the loop, its history, a progress bar, checkpoints and bit-identical resume.

:func:`train` takes a model, training data, an optimizer, an optional learning-rate schedule and a number of epochs,
and returns a :class:`History`. One step is ``model.zero_grad()``, forward, loss, ``model.backward(loss.backward())``,
``optimizer.step()``, ``scheduler.step()``.

**What the history holds** (plain lists and dicts of Python numbers, JSON-ready):

* per epoch: ``epoch``, ``train_loss`` and ``train_acc`` (averages over the epoch's batches, in train mode, weighted
  by batch size), ``val_loss``/``val_acc`` (eval mode, when validation data is given), ``grad_norm`` (mean over the
  epoch of the global gradient norm), ``lr`` (at the epoch's last step), and for every scale-invariant weight ``w``
  its norm ``weight_norm[w]`` and effective step size ``effective_lr[w]`` at the end of the epoch;
* per step: ``step_loss``, ``step_grad_norm``, ``step_lr``, ``step_weight_norm[w]``, ``step_effective_lr[w]``;
* ``epoch_seconds``: wall-clock time per epoch. This is the one entry that differs between runs; comparisons of
  histories (the resume test) leave it out.

**Scale-invariant weights and their effective step size.** A weight followed by a normalizer that removes its scale,
``L(c w) = L(w)`` for ``c > 0``, has a gradient orthogonal to ``w`` and of size ``∝ 1/‖w‖``; its *direction* moves by
about ``lr·‖∇L(ŵ)‖/‖w‖²`` per SGD step, so ``lr/‖w‖²`` is the step size that matters (Hoffer et al. 2018; Heo et al.
2021 write it ``η/‖w‖²``). It is recorded with the norm of the whole tensor; for Adam-type optimizers the analogous
quantity is ``lr/‖w‖`` (the update's size does not scale with the gradient), which the user can compute from
``weight_norm``. :func:`scale_invariant_weights` finds them in every :class:`~normref.nn.Sequential` of the model:
a ``Linear``/``Conv2d`` weight directly followed by

* ``BatchNorm``, ``InstanceNorm`` or ``BatchChannelNorm`` (per-channel mean subtraction cancels any bias, and the
  per-channel division removes the scale of each filter), or
* ``GroupNorm``, ``LayerNorm``, ``RMSNorm`` or ``EvoNormB0``, when the layer has **no bias** (with a bias, ``c W x + b``
  is not ``c (W x + b)``, and these normalizers do not cancel a per-channel bias).

PowerNorm and Unified Norm are left out: after their warm-up they divide by running statistics, which do not scale
with ``w``. Invariance holds in train mode (batch statistics); the detection is structural and does not test it.
Pass ``scale_invariant=[names]`` to choose yourself, ``[]`` for none.

**Checkpoints and resume.** With ``checkpoint_dir``, the end of every epoch writes ``checkpoint.npz`` there
atomically (a temporary file in the same directory, flushed and fsynced, then ``os.replace``): model parameters and
buffers, the optimizer's and the scheduler's state, the data loader's state (its seed and epoch: the order of every
epoch is a function of these, see :class:`~normref.data.DataLoader`), the step count and the history. One ``.npz``
without pickle: arrays as arrays, the structure as a JSON string (Python floats print round-trip exactly). With
``resume=True`` the loop continues from it, and 1 epoch + resume + 2 epochs gives the same parameters and history,
bit for bit, as 3 epochs straight (``tests/test_train.py``).

**BLAS threads.** ``blas_threads=1`` (``normref train --blas-threads 1``) runs the loop with BLAS limited to one
thread and restores the library's setting afterwards (:mod:`normref.threads`): the products of these small networks
are 10-80x slower with a multi-threaded OpenBLAS on a few busy cores. The default, ``None``, changes nothing.

**Models.** The networks the ``normref train`` command and the README measurements train come from the model zoo,
:mod:`normref.models` (MLP, VGG-style CNN, ResNet, Transformer), each with ``norm=`` by name.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import sys
import time
from typing import Callable

import numpy as np

from .data import DataLoader, Dataset
from .nn import (BatchNorm, Conv2d, CrossEntropyLoss, GroupNorm, InstanceNorm, LayerNorm, Linear, Module, RMSNorm,
                 Sequential)
from .nn.batch_channel_norm import BatchChannelNorm
from .nn.evonorm import EvoNormB0
from .nn.factory import MoveChannelAxis
from .threads import blas_threads as limit_blas_threads, check_blas_threads

CHECKPOINT_NAME = "checkpoint.npz"
CHECKPOINT_VERSION = 1


# ------------------------------------------------------------------------------------------------------------------
# scale-invariant weights
# ------------------------------------------------------------------------------------------------------------------
_CANCEL_BIAS = (BatchNorm, InstanceNorm, BatchChannelNorm)
_NEED_NO_BIAS = (GroupNorm, LayerNorm, RMSNorm, EvoNormB0)


def scale_invariant_weights(model: Module) -> list[str]:
    """Dotted names of the ``Linear``/``Conv2d`` weights directly followed by a scale-removing normalizer.

    See the module docstring for the rule. Examples:
        >>> from normref.models import build_mlp
        >>> scale_invariant_weights(build_mlp(4, 3, hidden=(8, 8), norm="batch"))
        ['0.weight', '3.weight']
        >>> scale_invariant_weights(build_mlp(4, 3, hidden=(8,), norm="none"))
        []
    """
    prefixes = {id(module): prefix for module, prefix in model._modules_with_prefix()}
    names = []
    for module in model.modules():
        if not isinstance(module, Sequential):
            continue
        children = list(module)
        for layer, nxt in zip(children, children[1:]):
            if not isinstance(layer, (Linear, Conv2d)):
                continue
            norm = nxt.inner if isinstance(nxt, MoveChannelAxis) else nxt
            if isinstance(norm, _CANCEL_BIAS) or (isinstance(norm, _NEED_NO_BIAS) and "bias" not in layer.params):
                names.append(prefixes[id(layer)] + "weight")
    return names


# ------------------------------------------------------------------------------------------------------------------
# progress bar
# ------------------------------------------------------------------------------------------------------------------
def _format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ProgressBar:
    """A one-line text progress bar on ``stream`` (stderr): ``desc 12/45 [####......] 27% 31.0 it/s ETA 0:01``.

    Redrawn with ``\\r`` at most every ``min_interval`` seconds; disabled (prints nothing) when ``enabled`` is false,
    which :func:`train` sets when ``quiet`` or when the stream is not a terminal. No dependency.
    """

    def __init__(self, total: int, desc: str = "", *, stream=None, enabled: bool = True, width: int = 24,
                 min_interval: float = 0.1):
        self.total, self.desc, self.width = int(total), desc, int(width)
        self.stream = sys.stderr if stream is None else stream
        self.enabled = bool(enabled)
        self.min_interval = float(min_interval)
        self.count = 0
        self.start = time.perf_counter()
        self._last_draw = -math.inf
        self.postfix = ""

    def render(self, now: float | None = None) -> str:
        """The bar's text for the current count (no carriage return)."""
        now = time.perf_counter() if now is None else now
        elapsed = max(now - self.start, 1e-12)
        rate = self.count / elapsed
        frac = self.count / self.total if self.total else 1.0
        filled = int(round(self.width * frac))
        eta = (self.total - self.count) / rate if rate > 0 else math.inf
        bar = "#" * filled + "." * (self.width - filled)
        text = (f"{self.desc} {self.count}/{self.total} [{bar}] {100 * frac:3.0f}% {rate:.1f} it/s "
                f"ETA {_format_seconds(eta)}")
        return f"{text} {self.postfix}".rstrip()

    def update(self, n: int = 1, postfix: str = "") -> None:
        self.count += n
        self.postfix = postfix
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self._last_draw >= self.min_interval or self.count >= self.total:
            self.stream.write("\r" + self.render(now))
            self.stream.flush()
            self._last_draw = now

    def close(self, summary: str = "") -> None:
        if self.enabled:
            self.stream.write("\r" + self.render() + (f" | {summary}" if summary else "") + "\n")
            self.stream.flush()


# ------------------------------------------------------------------------------------------------------------------
# history
# ------------------------------------------------------------------------------------------------------------------
class History(dict):
    """The record of a run: a dict of lists (and dicts of lists, keyed by weight name); see the module docstring."""

    PER_EPOCH = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "grad_norm", "lr", "epoch_seconds")
    PER_STEP = ("step_loss", "step_grad_norm", "step_lr")
    PER_WEIGHT = ("weight_norm", "effective_lr", "step_weight_norm", "step_effective_lr")

    @classmethod
    def empty(cls, weights) -> "History":
        h = cls({key: [] for key in cls.PER_EPOCH + cls.PER_STEP})
        for key in cls.PER_WEIGHT:
            h[key] = {name: [] for name in weights}
        return h

    def without_timing(self) -> dict:
        """Everything but ``epoch_seconds`` (the part that is reproducible)."""
        return {k: v for k, v in self.items() if k != "epoch_seconds"}

    def last(self, key: str):
        values = self[key]
        return values[-1] if values else None


# ------------------------------------------------------------------------------------------------------------------
# evaluation
# ------------------------------------------------------------------------------------------------------------------
def _accuracy_count(logits, y):
    logits = np.asarray(logits)
    if logits.ndim != 2 or np.asarray(y).ndim != 1 or np.asarray(y).dtype.kind not in "iu":
        return None
    return int(np.sum(np.argmax(logits.real, axis=1) == y))


def evaluate(model: Module, data, loss_fn=None, *, batch_size: int = 256) -> dict:
    """Mean loss and accuracy of ``model`` in eval mode on ``data`` (a Dataset or DataLoader), in batches.

    The model's mode is restored afterwards. ``accuracy`` is ``None`` unless the targets are class indices.
    """
    loss_fn = CrossEntropyLoss() if loss_fn is None else loss_fn
    dataset = data.dataset if isinstance(data, DataLoader) else data
    if not isinstance(dataset, Dataset):
        raise TypeError(f"data must be a normref.data Dataset or DataLoader, got {type(data).__name__}")
    was_training = model.training
    model.eval()
    try:
        total_loss, correct, n = 0.0, 0, 0
        for start in range(0, len(dataset), batch_size):
            x, y = dataset.x[start:start + batch_size], dataset.y[start:start + batch_size]
            out = model.forward(x)
            total_loss += float(loss_fn(out, y)) * len(y)
            c = _accuracy_count(out, y)
            correct = None if c is None or correct is None else correct + c
            n += len(y)
    finally:
        model.train(was_training)
    return {"loss": total_loss / n, "accuracy": None if correct is None else correct / n}


# ------------------------------------------------------------------------------------------------------------------
# checkpoints: a pickle-free tree codec and atomic writes
# ------------------------------------------------------------------------------------------------------------------
def _encode(obj, arrays: dict):
    """A JSON-ready tree for ``obj``; arrays and NumPy scalars go into ``arrays`` and are referenced by key."""
    if isinstance(obj, (np.ndarray, np.generic)):
        key = f"a{len(arrays)}"
        arrays[key] = np.asarray(obj)
        return {"__array__": key, "scalar": isinstance(obj, np.generic)}
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, float):
        return obj
    if isinstance(obj, dict):
        return {"__dict__": [[_encode(k, arrays), _encode(v, arrays)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"__tuple__" if isinstance(obj, tuple) else "__list__": [_encode(v, arrays) for v in obj]}
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint (arrays, numbers, str, None, dict, list, "
                    f"tuple only)")


def _decode(tree, arrays):
    if isinstance(tree, dict):
        if "__array__" in tree:
            value = np.array(arrays[tree["__array__"]], copy=True)
            return value[()] if tree["scalar"] else value
        if "__dict__" in tree:
            return {_decode(k, arrays): _decode(v, arrays) for k, v in tree["__dict__"]}
        if "__list__" in tree:
            return [_decode(v, arrays) for v in tree["__list__"]]
        if "__tuple__" in tree:
            return tuple(_decode(v, arrays) for v in tree["__tuple__"])
        raise ValueError(f"unknown node in checkpoint structure: {sorted(tree)}")
    return tree


def save_checkpoint(path, state: dict) -> None:
    """Write ``state`` (a tree of arrays, numbers, strings, dicts, lists, tuples) to ``path`` atomically."""
    path = os.fspath(path)
    arrays: dict = {}
    tree = _encode(state, arrays)
    arrays["__tree__"] = np.array(json.dumps(tree, allow_nan=True))
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path) -> dict:
    """Read what :func:`save_checkpoint` wrote (no pickle)."""
    with np.load(os.fspath(path), allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    if "__tree__" not in arrays:
        raise ValueError(f"{os.fspath(path)} is not a normref checkpoint (no structure entry)")
    return _decode(json.loads(str(arrays.pop("__tree__"))), arrays)


# ------------------------------------------------------------------------------------------------------------------
# the loop
# ------------------------------------------------------------------------------------------------------------------
def _make_scheduler(optimizer, schedule):
    """``None``; an object with ``step()``/``state_dict()`` (an LRScheduler); or a callable multiplier ``t -> f``,
    wrapped in :class:`normref.optim.LRScheduler` (``lr = base_lr * schedule(step)``)."""
    if schedule is None:
        return None
    if hasattr(schedule, "step") and hasattr(schedule, "state_dict"):
        return schedule
    if callable(schedule):
        from .optim.schedules import LRScheduler
        return LRScheduler(optimizer, schedule)
    raise TypeError(f"schedule must be None, a Schedule (step -> multiplier) or an LRScheduler, "
                    f"got {type(schedule).__name__}")


def _grad_norm(model: Module, names) -> float:
    grads = dict(model.named_grads())
    return math.sqrt(sum(float(np.sum(np.square(np.abs(grads[n]), dtype=np.float64))) for n in names))


def _fingerprint(model: Module) -> list:
    return [[name, list(value.shape)] for name, value in model.named_parameters()]


def train(model: Module, train_data, optimizer, *, epochs: int, loss_fn=None, schedule=None, batch_size: int = 32,
          seed: int = 0, val_data=None, scale_invariant="auto", checkpoint_dir=None, resume: bool = False,
          quiet: bool = False, stream=None, on_epoch: Callable | None = None,
          blas_threads: int | None = None) -> History:
    """Train ``model`` for ``epochs`` epochs (in total: a resumed run continues up to ``epochs``).

    Args:
        model: a normref :class:`~normref.nn.Module` mapping a batch of inputs to predictions.
        train_data: a :class:`~normref.data.Dataset` (batched with ``batch_size`` and ``seed``, shuffled, last
            batch kept) or a :class:`~normref.data.DataLoader`.
        optimizer: has ``step()``, ``lr``, ``state_dict()``/``load_state_dict()`` (a :mod:`normref.optim`
            optimizer); ``named_parameters()``, when present, tells which gradients enter ``grad_norm``.
        epochs: total number of epochs.
        loss_fn: a normref loss (default :class:`~normref.nn.CrossEntropyLoss`).
        schedule: ``None``, a per-step multiplier ``t -> factor`` (a :mod:`normref.optim.schedules` schedule) or an
            ``LRScheduler``; stepped once per optimizer step.
        val_data: a Dataset evaluated (eval mode) after every epoch.
        scale_invariant: ``"auto"`` (:func:`scale_invariant_weights`), a list of dotted weight names to track, or
            ``None`` for none.
        checkpoint_dir: write ``checkpoint.npz`` there after every epoch.
        resume: continue from ``checkpoint_dir``'s checkpoint if there is one (else start fresh).
        quiet: no progress bar and no epoch lines. Otherwise the bar is drawn only on a terminal, and a summary line
            per epoch is printed to ``stream`` (stderr).
        on_epoch: called as ``on_epoch(epoch, history)`` after every epoch (after the checkpoint).
        blas_threads: ``None`` leaves the BLAS library's thread count alone; a positive int limits BLAS to that many
            threads while the loop runs and restores the previous setting afterwards (:mod:`normref.threads`; on a
            few shared cores, ``1`` makes the small products of these networks much faster). It is not stored in
            the checkpoint: a resumed run may use another value.
    """
    if not isinstance(model, Module):
        raise TypeError(f"model must be a normref Module, got {type(model).__name__}")
    if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative int, got {epochs!r}")
    n_blas = check_blas_threads(blas_threads)
    loader = train_data if isinstance(train_data, DataLoader) else DataLoader(train_data, batch_size, seed=seed)
    loss_fn = CrossEntropyLoss() if loss_fn is None else loss_fn
    stream = sys.stderr if stream is None else stream
    scheduler = _make_scheduler(optimizer, schedule)
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir (the directory holding checkpoint.npz)")
    if isinstance(scale_invariant, str) and scale_invariant != "auto":
        raise ValueError(f"scale_invariant must be 'auto' or a list of weight names, got {scale_invariant!r}")
    weights = (scale_invariant_weights(model) if scale_invariant == "auto"
               else [] if scale_invariant is None else list(scale_invariant))
    params_now = dict(model.named_parameters())
    unknown = [w for w in weights if w not in params_now]
    if unknown:
        raise ValueError(f"scale_invariant names {unknown} are not parameters of the model")
    trained = ([n for n, _ in optimizer.named_parameters()] if hasattr(optimizer, "named_parameters")
               else list(params_now))

    history, start_epoch = History.empty(weights), 0
    path = None if checkpoint_dir is None else os.path.join(os.fspath(checkpoint_dir), CHECKPOINT_NAME)
    if resume and path is not None and os.path.exists(path):
        state = load_checkpoint(path)
        if state.get("version") != CHECKPOINT_VERSION or state["fingerprint"] != _fingerprint(model):
            raise ValueError(f"{path} was written for a different model (parameter names/shapes differ) or "
                             f"checkpoint version")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            if state["scheduler"] is None:
                raise ValueError(f"{path} has no scheduler state, but a schedule was given")
            scheduler.load_state_dict(state["scheduler"])
        loader.load_state_dict(state["loader"])
        history = History(state["history"])
        start_epoch = int(state["epoch"])

    def current_lr():
        return float(getattr(optimizer, "lr", float("nan")))

    show_bar = not quiet and hasattr(stream, "isatty") and stream.isatty()
    with limit_blas_threads(n_blas):  # None: leave the BLAS library's setting alone
        model.train()
        for epoch in range(start_epoch, epochs):
            t0 = time.perf_counter()
            bar = ProgressBar(len(loader), f"epoch {epoch + 1}/{epochs}", stream=stream, enabled=show_bar)
            loss_sum, correct, seen, gnorm_sum, steps = 0.0, 0, 0, 0.0, 0
            for x, y in loader:
                model.zero_grad()
                out = model.forward(x)
                loss = float(loss_fn(out, y))
                model.backward(loss_fn.backward())
                gnorm = _grad_norm(model, trained)
                lr = current_lr()
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                c = _accuracy_count(out, y)
                correct = None if c is None or correct is None else correct + c
                loss_sum += loss * len(y)
                seen += len(y)
                gnorm_sum += gnorm
                steps += 1
                history["step_loss"].append(loss)
                history["step_grad_norm"].append(gnorm)
                history["step_lr"].append(lr)
                params = dict(model.named_parameters())
                for w in weights:
                    norm = float(np.linalg.norm(np.ravel(params[w])))
                    history["step_weight_norm"][w].append(norm)
                    history["step_effective_lr"][w].append(lr / norm ** 2 if norm > 0 else math.inf)
                bar.update(1, f"loss {loss_sum / seen:.4f}")
            history["epoch"].append(epoch + 1)
            history["train_loss"].append(loss_sum / seen)
            history["train_acc"].append(None if correct is None else correct / seen)
            history["grad_norm"].append(gnorm_sum / steps)
            history["lr"].append(history["step_lr"][-1])
            for w in weights:
                history["weight_norm"][w].append(history["step_weight_norm"][w][-1])
                history["effective_lr"][w].append(history["step_effective_lr"][w][-1])
            if val_data is not None:
                result = evaluate(model, val_data, loss_fn)
                history["val_loss"].append(result["loss"])
                history["val_acc"].append(result["accuracy"])
            history["epoch_seconds"].append(time.perf_counter() - t0)
            summary = _epoch_summary(history)
            bar.close(summary)
            if not quiet and not show_bar:
                stream.write(f"epoch {epoch + 1}/{epochs} | {summary}\n")
                stream.flush()
            if path is not None:
                save_checkpoint(path, {
                    "version": CHECKPOINT_VERSION, "epoch": epoch + 1, "fingerprint": _fingerprint(model),
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": None if scheduler is None else scheduler.state_dict(),
                    "loader": loader.state_dict(), "history": dict(history)})
            if on_epoch is not None:
                on_epoch(epoch + 1, history)
    return history


def _epoch_summary(history: History) -> str:
    parts = [f"loss {history.last('train_loss'):.4f}"]
    if history.last("train_acc") is not None:
        parts.append(f"acc {history.last('train_acc'):.3f}")
    if history["val_loss"]:
        parts.append(f"val_loss {history.last('val_loss'):.4f}")
        if history.last("val_acc") is not None:
            parts.append(f"val_acc {history.last('val_acc'):.3f}")
    parts.append(f"|g| {history.last('grad_norm'):.3g}")
    parts.append(f"{history.last('epoch_seconds'):.1f}s")
    return " ".join(parts)
