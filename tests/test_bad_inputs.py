"""Bad input raises a clear error whose message names the offending argument, in the ops and in the layers.

The point of validating at the boundary is that nothing reaches NumPy broadcasting, where a wrong shape fails deep
inside or silently broadcasts to a wrong answer. Every case below would otherwise either crash with an unhelpful
message or return garbage.
"""

import numpy as np
import pytest

import normref
from normref import nn, ops, use_backend
from normref._registry import available_op_backends
from normref.ops.running_stats import initial_running_stats, update_running_stats


def x_of(shape, seed=0):
    return np.random.default_rng(seed).normal(3.0, 2.0, shape)


# One forward per op with its hyperparameters, a valid input shape and the shape of its affine parameters.
OPS = {
    "batch_norm": (ops.batch_norm_forward, ops.batch_norm_backward, {}, (4, 3, 5), (3,)),
    "layer_norm": (ops.layer_norm_forward, ops.layer_norm_backward, {"normalized_shape": (3, 5)}, (4, 3, 5), (3, 5)),
    "group_norm": (ops.group_norm_forward, ops.group_norm_backward, {"num_groups": 2}, (2, 4, 5), (4,)),
    "instance_norm": (ops.instance_norm_forward, ops.instance_norm_backward, {}, (2, 3, 5), (3,)),
    "rms_norm": (ops.rms_norm_forward, ops.rms_norm_backward, {"normalized_shape": 5}, (4, 3, 5), (5,)),
}
ALL_OPS = list(OPS)
WITH_BETA = [name for name in OPS if name != "rms_norm"]


# -- shapes --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,shape", [("batch_norm", (5,)), ("batch_norm", (2, 3, 2, 2, 2, 2)),
                                        ("group_norm", (6,)), ("instance_norm", (4, 3)),
                                        ("instance_norm", ())])
def test_wrong_ndim(name, shape):
    forward, _, hyper, _, _ = OPS[name]
    with pytest.raises(ValueError, match=r"x must have .*dimensions"):
        forward(x_of(shape), **hyper)


@pytest.mark.parametrize("make,match", [
    (lambda: nn.BatchNorm(4), r"5 channels.*num_features=4"),
    (lambda: nn.InstanceNorm(4), r"5 channels.*num_features=4"),
    (lambda: nn.GroupNorm(2, 4), r"5 channels.*num_channels=4"),
], ids=["BatchNorm", "InstanceNorm", "GroupNorm"])
def test_channel_count_mismatch(make, match):
    with pytest.raises(ValueError, match=match):
        make().forward(x_of((3, 5, 6)))


@pytest.mark.parametrize("make", [lambda: nn.LayerNorm((3, 4)), lambda: nn.RMSNorm(4)],
                         ids=["LayerNorm", "RMSNorm"])
def test_layer_with_normalized_shape_not_trailing(make):
    with pytest.raises(ValueError, match=r"normalized_shape"):
        make().forward(x_of((2, 4, 3)))


@pytest.mark.parametrize("name", ["layer_norm", "rms_norm"])
@pytest.mark.parametrize("normalized_shape", [(3, 6), (6,), (2, 3, 5, 1), (1, 3, 5)])
def test_normalized_shape_that_does_not_match_the_trailing_dims(name, normalized_shape):
    forward = OPS[name][0]
    with pytest.raises(ValueError, match=r"normalized_shape"):
        forward(x_of((3, 5)), normalized_shape=normalized_shape)


@pytest.mark.parametrize("normalized_shape,error", [((), ValueError), ((3, 0), ValueError), ((3.0,), TypeError),
                                                    ("35", TypeError), (None, TypeError)])
def test_malformed_normalized_shape(normalized_shape, error):
    with pytest.raises(error, match=r"normalized_shape"):
        ops.layer_norm_forward(x_of((2, 3)), normalized_shape=normalized_shape)
    with pytest.raises(error, match=r"normalized_shape"):
        nn.LayerNorm(normalized_shape)


AFFINE_CASES = [(name, "gamma") for name in ALL_OPS] + [(name, "beta") for name in WITH_BETA]


@pytest.mark.parametrize("name,which", AFFINE_CASES)
def test_affine_shape_mismatch(name, which):
    forward, _, hyper, shape, param_shape = OPS[name]
    wrong = np.ones(param_shape + (1,))
    args = (wrong, None) if which == "gamma" else (None, wrong)
    args = args[:1] if name not in WITH_BETA else args
    with pytest.raises(ValueError, match=rf"{which} must have shape"):
        forward(x_of(shape), *args, **hyper)
    wrong = np.ones((param_shape[0] + 1,) + param_shape[1:])
    args = (wrong, None) if which == "gamma" else (None, wrong)
    args = args[:1] if name not in WITH_BETA else args
    with pytest.raises(ValueError, match=rf"{which} must have shape"):
        forward(x_of(shape), *args, **hyper)


def test_rms_norm_has_no_beta():
    with pytest.raises(TypeError):
        ops.rms_norm_forward(x_of((2, 5)), np.ones(5), np.zeros(5), normalized_shape=5)


@pytest.mark.parametrize("name", ALL_OPS)
def test_wrong_dy_shape(name):
    forward, backward, hyper, shape, _ = OPS[name]
    _, cache = forward(x_of(shape), **hyper)
    for dy_shape in (shape[:-1] + (shape[-1] + 1,), shape[::-1], shape + (1,)):
        with pytest.raises(ValueError, match=r"dy must have the shape"):
            backward(np.ones(dy_shape), cache)
    with pytest.raises(TypeError, match=r"dy must have a float"):
        backward(np.ones(shape, dtype=np.int64), cache)


def test_wrong_dy_shape_in_a_layer():
    layer = nn.GroupNorm(2, 4)
    layer.forward(x_of((2, 4, 3)))
    with pytest.raises(ValueError, match=r"dy must have the shape"):
        layer.backward(np.ones((2, 4, 4)))
    with pytest.raises(RuntimeError, match=r"before forward"):
        nn.LayerNorm(3).backward(np.ones((2, 3)))


@pytest.mark.parametrize("name", ALL_OPS)
def test_wrong_stats_shape(name):
    forward, _, hyper, shape, _ = OPS[name]
    bad = np.ones(7)
    stats = (None, bad) if name == "rms_norm" else (bad, bad)
    with pytest.raises(ValueError, match=r"stats\[.\]"):
        forward(x_of(shape), stats=stats, **hyper)
    with pytest.raises(TypeError, match=r"stats must be"):
        forward(x_of(shape), stats=np.ones(3), **hyper)


# -- dtypes --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ALL_OPS)
@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.bool_, object])
def test_integer_and_other_non_float_x_is_a_type_error(name, dtype):
    forward, _, hyper, shape, _ = OPS[name]
    with pytest.raises(TypeError, match=r"x must have a float"):
        forward(np.ones(shape, dtype=dtype), **hyper)


@pytest.mark.parametrize("name", ALL_OPS)
def test_integer_gamma_and_python_int_lists(name):
    forward, _, hyper, shape, param_shape = OPS[name]
    with pytest.raises(TypeError, match=r"gamma must have a float"):
        forward(x_of(shape), np.ones(param_shape, dtype=np.int64), **hyper)
    with pytest.raises(TypeError, match=r"x must be a floating-point array.*Python sequence"):
        forward(np.ones(shape, dtype=np.int64).tolist(), **hyper)
    with pytest.raises(TypeError, match=r"x must be a numpy.ndarray"):
        forward({"x": 1}, **hyper)


def test_layers_reject_integer_input():
    with pytest.raises(TypeError, match=r"x must have a float"):
        nn.BatchNorm(3).forward(np.ones((4, 3), dtype=np.int64))
    with pytest.raises(TypeError, match=r"x must have a float"):
        nn.RMSNorm(3).forward(np.ones((4, 3), dtype=np.int32))


@pytest.mark.parametrize("name", ALL_OPS)
def test_complex_input_is_accepted_by_the_reference_only(name):
    """Complex x is valid for the NumPy ops (the complex-step derivative); compiled backends refuse it.

    Here the reference must accept it and stay complex. The refusal is a compiled-backend restriction, checked for
    every compiled backend that is loaded and implements the op (none, on a machine without Numba kernels).
    """
    forward, _, hyper, shape, _ = OPS[name]
    x = x_of(shape) + 1e-20j * x_of(shape, seed=1)
    y, cache = forward(x, **hyper)
    assert np.iscomplexobj(y) and cache.backend == "numpy"
    status = normref.available_backends()
    for backend in available_op_backends(name):
        if backend == "numpy" or status[backend] is not None:
            continue
        with use_backend(backend), pytest.raises(TypeError, match=r"x must have a float32 or float64"):
            normref.functional.forward(name, x, **hyper)


# -- values --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ALL_OPS)
def test_empty_batch(name):
    forward, _, hyper, shape, _ = OPS[name]
    with pytest.raises(ValueError, match=r"x must not be empty"):
        forward(np.ones((0,) + shape[1:]), **hyper)


@pytest.mark.parametrize("layer", [nn.BatchNorm(3), nn.LayerNorm(5), nn.GroupNorm(1, 3), nn.InstanceNorm(3),
                                   nn.RMSNorm(5)], ids=lambda l: type(l).__name__)
def test_empty_batch_in_a_layer(layer):
    with pytest.raises(ValueError, match=r"x must not be empty"):
        layer.forward(np.ones((0, 3, 5)))


def test_num_groups_must_divide_channels():
    with pytest.raises(ValueError, match=r"num_groups must divide.*num_groups=4.*6 channels"):
        ops.group_norm_forward(x_of((2, 6, 3)), num_groups=4)
    with pytest.raises(ValueError, match=r"num_groups must divide"):
        nn.GroupNorm(4, 6)
    with pytest.raises(ValueError, match=r"num_groups must be a positive int"):
        ops.group_norm_forward(x_of((2, 6, 3)), num_groups=0)
    with pytest.raises(TypeError, match=r"num_groups must be an int"):
        nn.GroupNorm(2.0, 6)


def test_batch_norm_training_with_one_value_per_channel():
    with pytest.raises(ValueError, match=r"x must hold more than 1 value per channel"):
        ops.batch_norm_forward(x_of((1, 3)))
    with pytest.raises(ValueError, match=r"x must hold more than 1 value per channel"):
        nn.BatchNorm(3).forward(x_of((1, 3, 1, 1)))
    # Two values are enough (the output is then ±1 up to eps), and eval with running statistics needs none.
    ops.batch_norm_forward(x_of((2, 3)))
    nn.BatchNorm(3).eval().forward(x_of((1, 3)))


def test_instance_norm_with_one_value_per_instance():
    with pytest.raises(ValueError, match=r"x must hold more than 1 spatial element"):
        ops.instance_norm_forward(x_of((4, 3, 1)))


@pytest.mark.parametrize("name", ALL_OPS)
@pytest.mark.parametrize("eps,error", [(-1e-5, ValueError), (float("nan"), ValueError), (float("inf"), ValueError),
                                       ("1e-5", TypeError), (True, TypeError), (np.array([1e-5]), TypeError)])
def test_bad_eps(name, eps, error):
    forward, _, hyper, shape, _ = OPS[name]
    with pytest.raises(error, match=r"eps must be"):
        forward(x_of(shape), eps=eps, **hyper)


@pytest.mark.parametrize("make", [lambda eps: nn.BatchNorm(3, eps=eps), lambda eps: nn.InstanceNorm(3, eps=eps),
                                  lambda eps: nn.LayerNorm(3, eps=eps), lambda eps: nn.GroupNorm(1, 3, eps=eps),
                                  lambda eps: nn.RMSNorm(3, eps=eps)],
                         ids=["BatchNorm", "InstanceNorm", "LayerNorm", "GroupNorm", "RMSNorm"])
def test_bad_eps_in_a_layer(make):
    with pytest.raises(ValueError, match=r"eps must be a finite number"):
        make(-1.0)
    with pytest.raises(TypeError, match=r"eps must be a real number"):
        make("small")


@pytest.mark.parametrize("momentum,error", [(1.5, ValueError), (-0.1, ValueError), (float("nan"), ValueError),
                                            ("0.1", TypeError), (True, TypeError)])
def test_bad_momentum(momentum, error):
    with pytest.raises(error, match=r"momentum must"):
        nn.BatchNorm(3, momentum=momentum)
    with pytest.raises(error, match=r"momentum must"):
        nn.InstanceNorm(3, momentum=momentum, track_running_stats=True)
    mean, var = np.zeros(3), np.ones(3)
    with pytest.raises(error, match=r"momentum must"):
        update_running_stats(initial_running_stats(3), mean, var, 10, momentum=momentum)


def test_unbiased_running_var_needs_two_values():
    with pytest.raises(ValueError, match=r"count must be at least 2"):
        update_running_stats(initial_running_stats(3), np.zeros(3), np.ones(3), 1)


@pytest.mark.parametrize("value,error", [(0, ValueError), (-2, ValueError), (2.0, TypeError), (True, TypeError)])
def test_bad_feature_counts(value, error):
    with pytest.raises(error, match=r"num_features must be"):
        nn.BatchNorm(value)
    with pytest.raises(error, match=r"num_channels must be"):
        nn.GroupNorm(1, value)


def test_bad_backend_names():
    with pytest.raises(ValueError, match=r"backend must be one of"):
        nn.BatchNorm(3, backend="torch")
    with pytest.raises(TypeError, match=r"backend must be a str"):
        nn.LayerNorm(3, backend=1)
    with pytest.raises(ValueError, match=r"backend must be one of"):
        with use_backend("gpu"):
            pass
