"""normref.train (loop, history, checkpoints, resume, progress bar), the norm factory and ``normref train``."""

import io
import json
import os

import numpy as np
import pytest

from normref.cli import main
from normref.data import DataLoader, make_blobs, make_shapes, train_val_test_split
from normref.nn import Dropout, GroupNorm, Linear, ReLU, Sequential, load_npz
from normref.nn.factory import NORM_NAMES, MoveChannelAxis, default_num_groups, make_norm
from normref.optim import SGD, AdamP
from normref.optim.schedules import CosineDecay
from normref.models import build_mlp, build_vgg
from normref.train import ProgressBar, evaluate, load_checkpoint, save_checkpoint, scale_invariant_weights, train


@pytest.fixture(scope="module")
def blobs():
    return train_val_test_split(make_blobs(240, 3, dim=4, spread=0.6, seed=0), val=0.2, test=0.2, seed=0)


def _mlp_with_dropout(seed=0):
    net = build_mlp(4, 3, hidden=(16, 16), norm="batch", seed=seed)
    return Sequential(*list(net)[:-1], Dropout(0.2, seed=5), list(net)[-1])


# -- resume ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make_opt", [lambda m: SGD(m, lr=0.1, momentum=0.9, weight_decay=1e-3),
                                      lambda m: AdamP(m, lr=1e-2, weight_decay=1e-3)], ids=["sgd", "adamp"])
@pytest.mark.parametrize("blas_threads", [None, 1], ids=["blas-untouched", "blas-1"])
def test_resume_continues_bit_identically(tmp_path, blobs, make_opt, blas_threads):
    def run(epochs, directory, resume):
        model = _mlp_with_dropout()
        opt = make_opt(model)
        hist = train(model, blobs.train, opt, epochs=epochs, batch_size=16, seed=3, schedule=CosineDecay(45),
                     val_data=blobs.val, checkpoint_dir=directory, resume=resume, quiet=True,
                     blas_threads=blas_threads)
        return model, hist

    straight, h_straight = run(3, tmp_path / "a", False)
    run(1, tmp_path / "b", False)
    resumed, h_resumed = run(3, tmp_path / "b", True)
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert h_straight.without_timing() == h_resumed.without_timing()
    assert len(h_resumed["epoch_seconds"]) == 3 and h_resumed["epoch"] == [1, 2, 3]
    # the schedule really moved the learning rate, and the dropout layer really advanced its stream
    assert h_straight["step_lr"][0] > h_straight["step_lr"][-1]
    assert resumed.state_dict()["6.step"] == 3 * len(DataLoader(blobs.train, 16))


def test_resume_refuses_a_different_model(tmp_path, blobs):
    model = build_mlp(4, 3, hidden=(8,), seed=0)
    train(model, blobs.train, SGD(model, lr=0.1), epochs=1, checkpoint_dir=tmp_path, quiet=True)
    other = build_mlp(4, 3, hidden=(9,), seed=0)
    with pytest.raises(ValueError, match="different model"):
        train(other, blobs.train, SGD(other, lr=0.1), epochs=2, checkpoint_dir=tmp_path, resume=True, quiet=True)


# -- checkpoint files -----------------------------------------------------------------------------------------------
def test_checkpoint_codec_round_trips_types_exactly(tmp_path):
    state = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "i": 3, "f": 0.1 + 0.2, "nan": float("nan"),
             "n": None, "s": "SGD", "t": (1.0, 2), "l": [np.int64(4), {"k": True}], 7: np.float64(2.5)}
    save_checkpoint(tmp_path / "c.npz", state)
    back = load_checkpoint(tmp_path / "c.npz")
    assert back["a"].dtype == np.float32 and np.array_equal(back["a"], state["a"])
    assert back["i"] == 3 and type(back["i"]) is int and back["f"] == 0.1 + 0.2 and np.isnan(back["nan"])
    assert back["n"] is None and back["s"] == "SGD" and back["t"] == (1.0, 2) and type(back["t"]) is tuple
    assert type(back["l"][0]) is np.int64 and back["l"][1] == {"k": True} and back[7] == 2.5
    with pytest.raises(TypeError, match="cannot store"):
        save_checkpoint(tmp_path / "d.npz", {"x": object()})


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "c.npz"
    save_checkpoint(path, {"v": np.ones(3)})

    def broken_savez(f, **arrays):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"v": np.zeros(3)})
    monkeypatch.undo()
    np.testing.assert_array_equal(load_checkpoint(path)["v"], np.ones(3))  # the old checkpoint is intact
    assert os.listdir(tmp_path) == ["c.npz"]                                # and no temporary file is left


# -- the history ----------------------------------------------------------------------------------------------------
def test_history_records_what_it_claims(blobs):
    model = build_mlp(4, 3, hidden=(16, 16), norm="batch", seed=1)
    opt = SGD(model, lr=0.05, momentum=0.9)
    hist = train(model, blobs.train, opt, epochs=2, batch_size=16, val_data=blobs.val, quiet=True)
    steps = 2 * len(DataLoader(blobs.train, 16))
    assert len(hist["step_loss"]) == steps and len(hist["train_loss"]) == 2
    assert hist["val_acc"][-1] > 0.85                                      # blobs are easy: it learned
    assert hist["train_loss"][1] < hist["train_loss"][0]
    weights = scale_invariant_weights(model)
    assert weights == ["0.weight", "3.weight"] and sorted(hist["weight_norm"]) == weights
    params = dict(model.named_parameters())
    for w in weights:
        norm = np.linalg.norm(params[w])
        assert hist["weight_norm"][w][-1] == norm and hist["step_weight_norm"][w][-1] == norm
        assert hist["effective_lr"][w][-1] == pytest.approx(0.05 / norm ** 2, rel=1e-12)
    assert np.mean(hist["step_grad_norm"][:steps // 2]) == pytest.approx(hist["grad_norm"][0])
    res = evaluate(model, blobs.val)
    assert res["accuracy"] == hist["val_acc"][-1] and model.training       # evaluate restores train mode


def test_training_only_the_affine_parameters_moves_only_them(blobs):
    model = build_mlp(4, 3, hidden=(16,), norm="batch", seed=2)
    before = model.state_dict()
    opt = SGD(model, lr=0.1, momentum=0.9, params=lambda name, p: name.endswith(("gamma", "beta")))
    hist = train(model, blobs.train, opt, epochs=1, quiet=True)
    after = model.state_dict()
    for name, _ in model.named_parameters():
        changed = not np.array_equal(before[name], after[name])
        assert changed == name.endswith(("gamma", "beta")), name
    assert hist["step_grad_norm"][0] > 0


# -- scale invariance -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["batch", "group", "layer", "rms", "instance", "bcn"])
def test_detected_weights_are_scale_invariant(norm):
    """Scaling a detected weight by 3 leaves the train-mode output unchanged (the detection rule is right)."""
    model = build_vgg(1, 4, 8, widths=(4, 8), norm=norm, seed=0)
    names = scale_invariant_weights(model)
    assert len(names) == 4
    x = np.random.default_rng(0).normal(size=(6, 1, 8, 8))
    y0 = model(x)
    modules = dict((prefix.rstrip("."), m) for m, prefix in model._modules_with_prefix())
    for name in names:
        layer = modules[name.rsplit(".", 1)[0]]
        layer.params["weight"] = 3.0 * layer.params["weight"]
    # not exact: the normalizers' eps (1e-5, added to the variance) is not scaled along; a weight that is not
    # scale invariant changes the output by O(1) (the last Linear, checked below)
    np.testing.assert_allclose(model(x), y0, rtol=1e-3, atol=1e-3)
    model[-1].params["weight"] = 3.0 * model[-1].params["weight"]
    assert np.max(np.abs(model(x) - y0)) > 0.1


def test_detection_skips_biased_layers_before_group_norm_and_unnormalized_layers():
    net = Sequential(Linear(4, 8, rng=0), GroupNorm(2, 8), ReLU(), Linear(8, 8, bias=False, rng=1),
                     GroupNorm(2, 8), Linear(8, 2, rng=2))
    assert scale_invariant_weights(net) == ["3.weight"]
    assert scale_invariant_weights(build_vgg(1, 4, 8, widths=(4,), norm="dyt")) == []
    wrapped = Sequential(Linear(4, 8, rng=0), make_norm("batch", 8, channels_last=True))
    assert scale_invariant_weights(wrapped) == ["0.weight"]


# -- progress bar and output ----------------------------------------------------------------------------------------
class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_shows_rate_and_eta():
    bar = ProgressBar(10, "epoch 1/1", stream=io.StringIO())
    bar.start -= 2.0                                                       # pretend 2 s have passed
    bar.count = 4
    text = bar.render()
    assert "4/10" in text and " 40%" in text and "it/s" in text and "ETA 0:03" in text


def test_train_output_modes(blobs):
    def run(stream, quiet):
        model = build_mlp(4, 3, hidden=(8,), seed=0)
        train(model, blobs.train, SGD(model, lr=0.1), epochs=1, quiet=quiet, stream=stream)
        return stream.getvalue()

    assert "\r" in run(_Tty(), False) and "ETA" in run(_Tty(), False)     # a terminal gets the bar
    plain = run(io.StringIO(), False)
    assert "\r" not in plain and plain.startswith("epoch 1/1 | loss")       # a log file gets one line per epoch
    assert run(_Tty(), True) == ""                                          # quiet: nothing


# -- models and the norm factory ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NORM_NAMES)
def test_make_norm_builds_every_name_for_both_layouts(name):
    rng = np.random.default_rng(0)
    for shape, last in [((4, 8, 3, 3), False), ((2, 5, 8), True)]:
        layer = make_norm(name, 8, channels_last=last)
        x = rng.normal(size=shape)
        y = layer(x)
        assert y.shape == x.shape
        assert layer.backward(rng.normal(size=shape)).shape == x.shape
    with pytest.raises(ValueError, match="unknown normalizer"):
        make_norm("batchy", 8)


def test_make_norm_choices():
    x = np.random.default_rng(1).normal(size=(5, 8))
    np.testing.assert_allclose(make_norm("layer", 8)(x), make_norm("layer", 8, channels_last=True)(x), atol=1e-12)
    rms = make_norm("rms", 8)(np.random.default_rng(2).normal(size=(2, 8, 3, 3)))
    np.testing.assert_allclose(np.mean(rms ** 2, axis=1), 1.0, rtol=1e-4)  # RMS over channels at each pixel
    assert make_norm("group", 8, num_groups=8).num_groups == 8
    assert isinstance(make_norm("instance", 8, channels_last=True), MoveChannelAxis)
    assert make_norm("power", 8, backward="approx").backward_kind == "approx"
    assert [default_num_groups(c) for c in (4, 16, 96, 512)] == [1, 4, 24, 32]


@pytest.mark.parametrize("norm", ["evonorm_s0", "none"])
def test_models_with_special_norms(norm):
    model = build_vgg(1, 3, 8, widths=(4,), norm=norm)
    kinds = [type(m).__name__ for m in model]
    if norm == "none":
        assert kinds[:2] == ["Conv2d", "ReLU"] and "bias" in model[0].params
    else:
        assert kinds[:3] == ["Conv2d", "EvoNormS0", "Conv2d"]              # no second activation after EvoNorm
    y = model(np.zeros((2, 1, 8, 8)))
    assert model.backward(np.ones_like(y)).shape == (2, 1, 8, 8)


def test_small_cnn_learns_shapes():
    data = train_val_test_split(make_shapes(300, 8, noise=0.05, seed=0), val=0.0, test=0.2, seed=0)
    model = build_vgg(1, 6, 8, widths=(8,), norm="batch", seed=0)
    train(model, data.train, SGD(model, lr=0.1, momentum=0.9), epochs=6, batch_size=16, quiet=True)
    assert evaluate(model, data.test)["accuracy"] > 0.5                    # chance is 1/6


# -- the command line -----------------------------------------------------------------------------------------------
def test_cli_trains_checkpoints_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--model", "mlp", "--norm", "layer", "--data", "blobs", "--batch-size", "64", "--out",
            str(out), "--quiet"]
    assert main(args + ["--epochs", "1"]) == 0
    assert "mlp/layer on blobs: test loss" in capsys.readouterr().out
    assert sorted(os.listdir(out)) == ["checkpoint.npz", "history.json", "model.npz"]
    assert main(args + ["--epochs", "2", "--resume"]) == 0
    saved = json.load(open(out / "history.json"))
    assert saved["history"]["epoch"] == [1, 2] and 0 <= saved["test"]["accuracy"] <= 1
    model = build_mlp(2, 4, (64, 64), "layer")
    load_npz(model, out / "model.npz")                                     # the saved model loads


def test_cli_rejects_bad_combinations(capsys):
    assert main(["train", "--model", "cnn", "--data", "spirals", "--quiet"]) == 2
    assert "needs image data" in capsys.readouterr().err
    assert main(["train", "--resume", "--quiet"]) == 2
    assert main(["train", "--norm", "none", "--train-only", "norm-affine", "--data", "blobs", "--model", "mlp",
                 "--quiet"]) == 2


def test_train_bad_arguments(blobs):
    model = build_mlp(4, 3, hidden=(8,), seed=0)
    opt = SGD(model, lr=0.1)
    with pytest.raises(ValueError, match="checkpoint_dir"):
        train(model, blobs.train, opt, epochs=1, resume=True, quiet=True)
    with pytest.raises(ValueError, match="not parameters"):
        train(model, blobs.train, opt, epochs=1, scale_invariant=["9.weight"], quiet=True)
    with pytest.raises(ValueError, match="epochs"):
        train(model, blobs.train, opt, epochs=-1, quiet=True)
    with pytest.raises(TypeError, match="Module"):
        train(lambda x: x, blobs.train, opt, epochs=1, quiet=True)


# -- gradients through the adapter and the small models -------------------------------------------------------------
@pytest.mark.parametrize("name,shape,last", [("rms", (3, 4, 2, 3), False), ("batch", (2, 3, 4), True),
                                             ("group", (2, 3, 8), True)])
def test_move_channel_axis_backward_matches_finite_differences(name, shape, last):
    from normref.testing.gradcheck import check_layer

    layer = make_norm(name, shape[-1] if last else shape[1], channels_last=last)
    report = check_layer(layer, np.random.default_rng(0).normal(size=shape), methods=("central",))
    assert report.passed, report.table()


@pytest.mark.parametrize("build,shape", [(lambda: build_vgg(1, 3, 4, widths=(2,), norm="group", seed=0), (4, 1, 4, 4)),
                                         (lambda: build_mlp(5, 3, hidden=(4,), norm="batch", seed=0), (4, 5))],
                         ids=["cnn", "mlp"])
def test_small_models_backward_matches_finite_differences(build, shape):
    from normref.testing.gradcheck import check_layer

    report = check_layer(build(), np.random.default_rng(1).normal(size=shape), methods=("central",))
    assert report.passed, report.table()
