"""Element-wise activations: ``ReLU``, ``LeakyReLU``, ``Sigmoid``, ``Tanh``, written
with the array module of the input (numpy or cupy).

Their arithmetic is ``cnnfast.activation``'s (the reference of the kernels' fused
``activation=``; Sigmoid and Tanh call its derivative), operation for operation, so a
``Sequential`` that fuses one into the convolution before it (``fused_activation``)
computes the same numbers.
"""

from __future__ import annotations

import math

import numpy as np

from ... import activation as _reference
from ..base import Layer, array_module, register_layer


@register_layer
class ReLU(Layer):
    @classmethod
    def default_name(cls):
        return "relu"

    def fused_activation(self):
        """``(activation, negative_slope)`` for a convolution kernel's
        ``activation=`` doing this layer's work."""
        return "relu", 0.0

    def forward(self, x, training=False):
        xp = array_module(x)
        y = xp.maximum(x, 0)  # NaN stays NaN
        if training:
            self._cache = x > 0  # a bool mask: a quarter of a float32 copy
        return y

    def backward(self, grad, need_input_grad=True):
        mask = self._need_cache()
        if not need_input_grad:
            return None
        # grad where the mask is set, else +0 -- even where grad is NaN or inf (as
        # torch's threshold_backward and the kernels' fused relu; grad * mask would
        # keep them). Selected on the bits: a branch-free AND, several times faster
        # than where() on a mixed mask.
        bits = grad.view(np.dtype(f"u{grad.dtype.itemsize}"))
        return (bits & -mask.astype(bits.dtype)).view(grad.dtype)


@register_layer
class LeakyReLU(Layer):
    def __init__(self, negative_slope=0.01, name=None):
        super().__init__(name)
        self.negative_slope = float(negative_slope)

    @classmethod
    def default_name(cls):
        return "leaky_relu"

    def fused_activation(self):
        """As ``ReLU.fused_activation``; ``None`` for a negative (or NaN) slope, which
        the kernels refuse: their derivative is read from the output's sign."""
        s = self.negative_slope
        return ("leaky_relu", s) if math.isfinite(s) and s >= 0 else None

    def forward(self, x, training=False):
        xp = array_module(x)
        pos = x > 0
        y = xp.where(pos, x, x * x.dtype.type(self.negative_slope))
        if training:
            self._cache = pos
        return y

    def backward(self, grad, need_input_grad=True):
        pos = self._need_cache()
        if not need_input_grad:
            return None
        xp = array_module(grad)
        return xp.where(pos, grad, grad * grad.dtype.type(self.negative_slope))

    def config(self):
        return {"negative_slope": self.negative_slope}


@register_layer
class Sigmoid(Layer):
    def fused_activation(self):
        """As ``ReLU.fused_activation``."""
        return "sigmoid", 0.0

    def forward(self, x, training=False):
        xp = array_module(x)
        # Stable for large |x|: exp of a non-positive number only.
        e = xp.exp(-xp.abs(x))
        y = xp.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)
        if training:
            self._cache = y
        return y

    def backward(self, grad, need_input_grad=True):
        y = self._need_cache()
        if not need_input_grad:
            return None
        return _reference.grad(grad, y, "sigmoid", 0.0)


@register_layer
class Tanh(Layer):
    def fused_activation(self):
        """As ``ReLU.fused_activation``."""
        return "tanh", 0.0

    def forward(self, x, training=False):
        y = array_module(x).tanh(x)
        if training:
            self._cache = y
        return y

    def backward(self, grad, need_input_grad=True):
        y = self._need_cache()
        if not need_input_grad:
            return None
        return _reference.grad(grad, y, "tanh", 0.0)
