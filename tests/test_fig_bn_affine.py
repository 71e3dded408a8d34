"""The parameter-subset logic of figures/fig_09_bn_affine_only.py: each regime moves exactly the entries it claims."""

import importlib.util
from pathlib import Path

import numpy as np

from normref import optim
from normref.models import build_vgg
from normref.nn import CrossEntropyLoss

PATH = Path(__file__).resolve().parent.parent / "figures" / "fig_09_bn_affine_only.py"


def _fig():
    spec = importlib.util.spec_from_file_location(PATH.stem, PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _one_step(model, opt, seed=0):
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((6, 1, 8, 8)), rng.integers(0, 10, 6)
    before = {n: v.copy() for n, v in model.named_parameters()}
    loss = CrossEntropyLoss()
    model.zero_grad()
    loss(model.forward(x), y)
    model.backward(loss.backward())
    opt.step()
    return {n: v != before[n] for n, v in model.named_parameters()}


def test_random_subset_moves_exactly_its_entries():
    fig = _fig()
    model = build_vgg(1, 10, 8, widths=(4, 8), norm="batch", seed=0)
    n_affine = sum(v.size for n, v in model.named_parameters() if fig.is_affine(n))
    masks = fig.random_masks(model, n_affine, seed=0)
    assert sum(int(m.sum()) for m in masks.values()) == n_affine
    assert not any(fig.is_affine(n) for n in masks)
    opt = fig.MaskedSGD(model, masks, lr=0.1, momentum=0.9)
    for step in range(2):  # the second step exercises the momentum buffers
        moved = _one_step(model, opt, seed=step)
    for name, changed in moved.items():
        expected = masks[name].astype(bool) if name in masks else np.zeros_like(changed)
        np.testing.assert_array_equal(changed, expected, err_msg=name)


def test_affine_selector_moves_only_gamma_and_beta():
    fig = _fig()
    model = build_vgg(1, 10, 8, widths=(4, 8), norm="batch", seed=0)
    moved = _one_step(model, optim.SGD(model, lr=0.1, params=fig.is_affine))
    assert all(changed.any() == fig.is_affine(name) for name, changed in moved.items())
