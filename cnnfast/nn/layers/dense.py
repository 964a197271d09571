"""``Flatten`` and the fully connected ``Linear`` (``Dense``, the Keras name), written
with the array module of the input (numpy or cupy)."""

from __future__ import annotations

import contextlib

import numpy as np

from ...threads import serial_blas
from ..base import Layer, register_layer
from ..init import fans, get_initializer, init_name
from ._common import _refuse_positional


def _products(x):
    """Where a layer's matrix products run: numpy's BLAS on one thread for numpy
    arrays, so that its spinning workers do not take the cores of the convolution
    kernels around it (see ``cnnfast.threads.serial_blas``); cupy arrays as they are."""
    return serial_blas() if isinstance(x, np.ndarray) else contextlib.nullcontext()


@register_layer
class Flatten(Layer):
    """(N, *shape) -> (N, prod(shape)) (C-order: channels vary slowest)."""

    def output_shape(self, input_shape):
        return (int(np.prod(input_shape)),)

    def forward(self, x, training=False):
        if training:
            self._cache = tuple(x.shape)
        return x.reshape(x.shape[0], -1)

    def backward(self, grad, need_input_grad=True):
        shape = self._need_cache()
        if not need_input_grad:
            return None
        return grad.reshape(shape)


@register_layer
class Linear(Layer):
    """Fully connected: ``y = x @ weight.T + bias``, weight (out, in) (torch's layout)."""

    def __init__(self, out_features, *extra, use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros", name=None):
        _refuse_positional(self, extra, "the input size is inferred from the input, so "
                           "out_features is the only positional argument (torch's "
                           "Linear(784, 10) is Linear(10) here); pass use_bias=, ... by "
                           "keyword")
        super().__init__(name)
        if not isinstance(out_features, (int, np.integer)) or out_features < 1:
            raise ValueError(f"out_features={out_features!r} must be a positive int")
        self.out_features = int(out_features)
        self.use_bias = bool(use_bias)
        # None (how a config stores a callable) means the default.
        self.kernel_initializer = kernel_initializer or "glorot_uniform"
        self.bias_initializer = bias_initializer or "zeros"
        get_initializer(self.kernel_initializer)
        get_initializer(self.bias_initializer)

    @classmethod
    def default_name(cls):
        return "dense"

    def _check(self, input_shape):
        if len(input_shape) != 1:
            raise ValueError(f"{self.name or 'Linear'} expects per-sample input "
                             f"(features,), got {tuple(input_shape)}; add a Flatten first")

    def param_shapes(self, input_shape):
        self._check(input_shape)
        shapes = {"weight": (self.out_features, int(input_shape[0]))}
        if self.use_bias:
            shapes["bias"] = (self.out_features,)
        return shapes

    def build(self, input_shape, rng, dtype):
        shapes = self.param_shapes(input_shape)
        fan_in, fan_out = fans(shapes["weight"])
        self.params["weight"] = get_initializer(self.kernel_initializer)(
            shapes["weight"], fan_in, fan_out, rng, dtype)
        if self.use_bias:
            self.params["bias"] = get_initializer(self.bias_initializer)(
                shapes["bias"], fan_in, fan_out, rng, dtype)
        super().build(input_shape, rng, dtype)

    def output_shape(self, input_shape):
        self._check(input_shape)
        return (self.out_features,)

    def forward(self, x, training=False):
        self._require_built()
        if x.ndim != 2:
            raise ValueError(f"{self.name or 'Linear'} expects (N, features), got "
                             f"shape {tuple(x.shape)}")
        w = self.params["weight"]
        if x.dtype != w.dtype:
            raise TypeError(f"{self.name}: input dtype {x.dtype} != weight dtype {w.dtype}")
        with _products(x):
            y = x @ w.T
        if self.use_bias:
            y += self.params["bias"]
        if training:
            self._cache = x
        return y

    def backward(self, grad, need_input_grad=True):
        x = self._need_cache()
        with _products(x):
            if self.trainable:
                self.grads["weight"] = grad.T @ x
            grad_x = grad @ self.params["weight"] if need_input_grad else None
        if self.trainable and self.use_bias:
            self.grads["bias"] = grad.sum(axis=0)
        return grad_x

    def config(self):
        return {"out_features": self.out_features, "use_bias": self.use_bias,
                "kernel_initializer": init_name(self.kernel_initializer),
                "bias_initializer": init_name(self.bias_initializer)}


Dense = Linear  # the Keras name
