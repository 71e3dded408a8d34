"""Argument checking shared by every op and layer.

Each helper raises a ``TypeError`` (wrong kind of thing) or ``ValueError`` (right kind, wrong value or shape) whose
message names the argument and says what was expected. Ops call these at their boundary so that bad input never
reaches NumPy broadcasting, where it would fail deep inside or, worse, silently broadcast to a wrong answer.
"""

from __future__ import annotations

import numbers

import numpy as np

FLOAT_KINDS = "f"
FLOAT_OR_COMPLEX_KINDS = "fc"


def as_array(value, name: str, *, allow_complex: bool = True) -> np.ndarray:
    """Return ``value`` as an ndarray of a floating (or, if allowed, complex) dtype, without copying.

    Integer, boolean and object arrays are rejected rather than promoted: promoting an integer batch to float64
    would silently change the caller's precision. Complex input is accepted by the NumPy reference ops so that
    they can be differentiated by the complex step; the compiled backends refuse it.
    """
    if isinstance(value, np.ndarray):
        arr = value
    elif isinstance(value, (list, tuple)) or np.isscalar(value):
        arr = np.asarray(value)
        if arr.dtype.kind in "iub":
            raise TypeError(f"{name} must be a floating-point array, got a Python sequence of {arr.dtype} values; "
                            f"convert it with np.asarray({name}, dtype=np.float64) first")
    else:
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(value).__name__}")
    kinds = FLOAT_OR_COMPLEX_KINDS if allow_complex else FLOAT_KINDS
    if arr.dtype.kind not in kinds:
        wanted = "float32, float64 or complex" if allow_complex else "float32 or float64"
        raise TypeError(f"{name} must have a {wanted} dtype, got {arr.dtype}")
    return arr


def check_ndim(x: np.ndarray, name: str, allowed: tuple[int, ...], layout: str) -> None:
    """Raise ``ValueError`` unless ``x.ndim`` is one of ``allowed``; ``layout`` describes the expected axes."""
    if x.ndim not in allowed:
        raise ValueError(f"{name} must have {' or '.join(map(str, allowed))} dimensions {layout}, "
                         f"got shape {x.shape}")


def check_nonempty(x: np.ndarray, name: str) -> None:
    """Raise ``ValueError`` on an array with a zero-length axis: its statistics would be NaN."""
    if x.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {x.shape}")


def check_param(param, name: str, shape: tuple[int, ...], *, allow_complex: bool = True):
    """Validate an optional affine parameter: ``None`` or an array of exactly ``shape``."""
    if param is None:
        return None
    arr = as_array(param, name, allow_complex=allow_complex)
    if arr.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {arr.shape}")
    return arr


def check_positive_float(value, name: str, *, allow_zero: bool = False) -> float:
    """Validate a scalar hyperparameter such as ``eps``: a finite real number > 0 (or >= 0 if ``allow_zero``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not np.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value}")
    return value


def check_fraction(value, name: str) -> float:
    """Validate a weight in [0, 1], such as BatchNorm's ``momentum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number in [0, 1], got {type(value).__name__}")
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value}")
    return value


def check_positive_int(value, name: str) -> int:
    """Validate a count such as ``num_features``: a Python or NumPy integer > 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return int(value)


def check_shape_tuple(value, name: str) -> tuple[int, ...]:
    """Normalize an int or a sequence of ints (PyTorch's ``normalized_shape``) to a tuple of positive ints."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (value,)
    try:
        dims = tuple(value)
    except TypeError:
        raise TypeError(f"{name} must be an int or a sequence of ints, got {type(value).__name__}") from None
    if not dims:
        raise ValueError(f"{name} must name at least one dimension, got {dims}")
    return tuple(check_positive_int(d, f"{name}[{i}]") for i, d in enumerate(dims))


def check_same_shape(a: np.ndarray, name_a: str, shape: tuple[int, ...], what: str) -> None:
    """Raise ``ValueError`` unless ``a.shape == shape``; ``what`` says where ``shape`` came from."""
    if a.shape != tuple(shape):
        raise ValueError(f"{name_a} must have the shape of {what}, {tuple(shape)}, got {a.shape}")


def result_dtype(x: np.ndarray, *params) -> np.dtype:
    """The dtype of an op's output: ``x``'s own. Parameters of another precision are cast, not promoted to.

    float32 input stays float32 even with float64 gamma, as in PyTorch; a complex parameter (complex step through
    gamma) makes the result complex.
    """
    dtype = x.dtype
    for p in params:
        if p is not None and p.dtype.kind == "c" and dtype.kind != "c":
            dtype = np.result_type(dtype, p.dtype)
    return np.dtype(dtype)


def cast_like(x: np.ndarray, param):
    """Cast a real parameter to ``x``'s real dtype, so float32 input stays float32; complex parameters pass as is."""
    if param is None or param.dtype.kind == "c" or param.dtype == x.dtype:
        return param
    return param.astype(np.empty(0, x.dtype).real.dtype)


def check_stats(stats, shape: tuple[int, ...], x: np.ndarray, *, need_mean: bool = True, view_shape=None,
                allow_complex: bool = True):
    """Validate given statistics ``(mean, var)``: each an array of ``shape`` (``mean`` may be None when not needed).

    Returns the pair cast to ``x``'s real dtype, each reshaped to ``view_shape`` (the op's keepdims statistics
    shape) when one is given. ``allow_complex=False`` refuses complex statistics (the compiled backends).
    """
    if not isinstance(stats, tuple) or len(stats) != 2:
        raise TypeError(f"stats must be None or a tuple (mean, var), got {type(stats).__name__}")
    mean, var = stats
    if need_mean:
        mean = cast_like(x, check_param(mean, "stats[0] (mean)", shape, allow_complex=allow_complex))
        if mean is None:
            raise ValueError(f"stats[0] (mean) must be an array of shape {shape}, got None")
    elif mean is not None:
        raise ValueError("stats[0] must be None for a normalizer without centering (stats = (None, mean_square))")
    var = cast_like(x, check_param(var, "stats[1] (var)", shape, allow_complex=allow_complex))
    if var is None:
        raise ValueError(f"stats[1] (var) must be an array of shape {shape}, got None")
    if view_shape is not None:
        mean = None if mean is None else mean.reshape(view_shape)
        var = var.reshape(view_shape)
    return mean, var


def check_dy(dy, x_shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Validate an upstream gradient against the forward's output shape; cast a real ``dy`` to ``dtype``."""
    dy = as_array(dy, "dy")
    if dy.shape != tuple(x_shape):
        raise ValueError(f"dy must have the shape of the forward's output, {tuple(x_shape)}, got {dy.shape}")
    if dy.dtype.kind != "c" and np.dtype(dtype).kind != "c" and dy.dtype != dtype:
        dy = dy.astype(dtype)
    return dy


def check_affine(x: np.ndarray, gamma, beta, shape: tuple[int, ...], *, allow_complex: bool = True):
    """Validate the optional affine pair ``(gamma, beta)`` against ``shape`` and cast them to ``x``'s dtype."""
    return (cast_like(x, check_param(gamma, "gamma", shape, allow_complex=allow_complex)),
            cast_like(x, check_param(beta, "beta", shape, allow_complex=allow_complex)))
