"""Element-wise activations: ``ReLU``, ``LeakyReLU``, ``Sigmoid``, ``Tanh``, written
with the array module of the input (numpy or cupy)."""

from __future__ import annotations

from ..base import Layer, array_module, register_layer


@register_layer
class ReLU(Layer):
    @classmethod
    def default_name(cls):
        return "relu"

    def forward(self, x, training=False):
        xp = array_module(x)
        y = xp.maximum(x, 0)
        if training:
            self._cache = x > 0  # a bool mask: a quarter of a float32 copy
        return y

    def backward(self, grad, need_input_grad=True):
        mask = self._need_cache()
        if not need_input_grad:
            return None
        return grad * mask


@register_layer
class LeakyReLU(Layer):
    def __init__(self, negative_slope=0.01, name=None):
        super().__init__(name)
        self.negative_slope = float(negative_slope)

    @classmethod
    def default_name(cls):
        return "leaky_relu"

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
        return grad * y * (1 - y)


@register_layer
class Tanh(Layer):
    def forward(self, x, training=False):
        y = array_module(x).tanh(x)
        if training:
            self._cache = y
        return y

    def backward(self, grad, need_input_grad=True):
        y = self._need_cache()
        if not need_input_grad:
            return None
        return grad * (1 - y * y)
