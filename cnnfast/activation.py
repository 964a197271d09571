"""The activations that ``conv`` and ``conv_transpose`` fuse (``activation=``), as the
reference defines them (docs/API.md, "Fused activation").

Forward, applied after the bias: ``relu`` max(v, 0); ``leaky_relu`` v if v > 0 else
v * negative_slope; ``sigmoid`` 1 / (1 + exp(-v)); ``tanh``. NaN stays NaN.

Backward, from the activated output ``y`` alone (so a layer keeps one array): the
derivative is ``y > 0`` (relu), ``1 if y > 0 else negative_slope`` (leaky_relu),
``y * (1 - y)`` (sigmoid), ``(1 - y) * (1 + y)`` (tanh: not ``1 - y * y``, which
loses every digit as |y| -> 1; each factor here is exact or one rounding, so the
derivative is within 2 eps relative); at 0 (and NaN) the piecewise ones
take the left side, as torch's ``threshold_backward`` does. Recovering the side from
``y`` needs ``negative_slope >= 0`` (a negative slope maps x < 0 to y > 0; torch's
in-place leaky_relu refuses it for the same reason), which ``cnnfast.params`` checks.

These functions are the oracle and the fallback of backends that do not fuse: they
take numpy or cupy arrays (numpy's functions dispatch to cupy).
"""

from __future__ import annotations

import numpy as np

ACTIVATIONS = ("relu", "leaky_relu", "sigmoid", "tanh")
DEFAULT_NEGATIVE_SLOPE = 0.01


def apply(v, activation, negative_slope):
    """``activation`` applied to ``v`` in place (``v`` a fresh float array); returns
    ``v``. ``None`` leaves ``v`` as it is."""
    if activation is None:
        return v
    if activation == "relu":
        # np.maximum propagates NaN (torch.relu(nan) is nan)
        return np.maximum(v, 0, out=v)
    if activation == "leaky_relu":
        return np.multiply(v, v.dtype.type(negative_slope), out=v, where=v < 0)
    if activation == "sigmoid":
        # exp of -|v| only: no overflow on either side
        e = np.exp(-np.abs(v))
        positive = v >= 0
        np.divide(1, 1 + e, out=v, where=positive)
        return np.divide(e, 1 + e, out=v, where=~positive & ~np.isnan(v))
    if activation == "tanh":
        return np.tanh(v, out=v)
    raise ValueError(f"unknown activation {activation!r}")


def grad(grad_y, y, activation, negative_slope):
    """``grad_y`` times the derivative of ``activation`` read from the activated output
    ``y``: a new array (``grad_y`` itself for ``None``)."""
    if activation is None:
        return grad_y
    if activation == "relu":
        return np.where(y > 0, grad_y, grad_y.dtype.type(0))
    if activation == "leaky_relu":
        return np.where(y > 0, grad_y, grad_y * grad_y.dtype.type(negative_slope))
    if activation == "sigmoid":
        return grad_y * (y * (1 - y))
    if activation == "tanh":
        return grad_y * ((1 - y) * (1 + y))
    raise ValueError(f"unknown activation {activation!r}")
