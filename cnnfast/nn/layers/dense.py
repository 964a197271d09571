"""``Flatten``, ``Reshape`` and the fully connected ``Linear`` (``Dense``, the Keras name), written
with the array module of the input (numpy or cupy)."""

from __future__ import annotations

import contextlib
from typing import Any, Dict, Optional

import numpy as np

from ...threads import serial_blas
from ..base import Array, Layer, Shape, ShapeLike, register_layer
from ..init import Initializer, fans, get_initializer, init_name
from ._common import _refuse_positional


def _products(x: Array) -> Any:
    """Where a layer's matrix products run: numpy's BLAS on one thread for numpy
    arrays, so that its spinning workers do not take the cores of the convolution
    kernels around it (see ``cnnfast.threads.serial_blas``); cupy arrays as they are."""
    return serial_blas() if isinstance(x, np.ndarray) else contextlib.nullcontext()


@register_layer
class Flatten(Layer):
    """(N, *shape) -> (N, prod(shape)) (C-order: channels vary slowest).

    Parameters
    ----------
    name : str, optional
        The layer's name.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnfast import nn
    >>> nn.Flatten().output_shape((2, 3, 4))
    (24,)
    >>> nn.Flatten().forward(np.zeros((5, 2, 3, 4))).shape
    (5, 24)
    """

    def output_shape(self, input_shape: ShapeLike) -> Shape:
        return (int(np.prod(input_shape)),)

    def forward(self, x: Array, training: bool = False) -> Array:
        if training:
            self._cache = tuple(x.shape)
        return x.reshape(x.shape[0], -1)

    def backward(self, grad: Array, need_input_grad: bool = True) -> Optional[Array]:
        shape = self._need_cache()
        if not need_input_grad:
            return None
        return grad.reshape(shape)


@register_layer
class Linear(Layer):
    """Fully connected: ``y = x @ weight.T + bias``, weight (out, in) (torch's layout).

    Parameters
    ----------
    out_features : int
        Output features (the input features are inferred from the input).
    use_bias : bool
        Add a bias.
    kernel_initializer, bias_initializer : str or callable
        A name of ``cnnfast.nn.INITIALIZERS`` or ``f(shape, fan_in, fan_out, rng, dtype)``.
    name : str, optional
        The layer's name.

    Raises
    ------
    TypeError
        If more than one positional argument is given (torch's ``Linear(in, out)``), or
        (``forward``) the input dtype differs from the weight's.
    ValueError
        If ``out_features`` is not a positive int, an initializer is unknown, or the
        per-sample input is not 1-d (add a ``Flatten`` first).

    Examples
    --------
    >>> import numpy as np
    >>> from cnnfast import nn
    >>> layer = nn.Linear(3)
    >>> layer.param_shapes((5,))
    {'weight': (3, 5), 'bias': (3,)}
    >>> layer.build((5,), np.random.default_rng(0), np.float32)
    >>> layer.forward(np.ones((2, 5), np.float32)).shape
    (2, 3)
    """

    def __init__(self, out_features: int, *extra: Any, use_bias: bool = True,
                 kernel_initializer: Optional[Initializer] = "glorot_uniform",
                 bias_initializer: Optional[Initializer] = "zeros",
                 name: Optional[str] = None) -> None:
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
    def default_name(cls) -> str:
        return "dense"

    def _check(self, input_shape: ShapeLike) -> None:
        if len(input_shape) != 1:
            raise ValueError(f"{self.name or 'Linear'} expects per-sample input "
                             f"(features,), got {tuple(input_shape)}; add a Flatten first")

    def param_shapes(self, input_shape: ShapeLike) -> Dict[str, Shape]:
        self._check(input_shape)
        shapes: Dict[str, Shape] = {"weight": (self.out_features, int(input_shape[0]))}
        if self.use_bias:
            shapes["bias"] = (self.out_features,)
        return shapes

    def build(self, input_shape: ShapeLike, rng: np.random.Generator, dtype: Any) -> None:
        shapes = self.param_shapes(input_shape)
        fan_in, fan_out = fans(shapes["weight"])
        self.params["weight"] = get_initializer(self.kernel_initializer)(
            shapes["weight"], fan_in, fan_out, rng, dtype)
        if self.use_bias:
            self.params["bias"] = get_initializer(self.bias_initializer)(
                shapes["bias"], fan_in, fan_out, rng, dtype)
        super().build(input_shape, rng, dtype)

    def output_shape(self, input_shape: ShapeLike) -> Shape:
        self._check(input_shape)
        return (self.out_features,)

    def forward(self, x: Array, training: bool = False) -> Array:
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

    def backward(self, grad: Array, need_input_grad: bool = True) -> Optional[Array]:
        x = self._need_cache()
        with _products(x):
            if self.trainable:
                self.grads["weight"] = grad.T @ x
            grad_x = grad @ self.params["weight"] if need_input_grad else None
        if self.trainable and self.use_bias:
            self.grads["bias"] = grad.sum(axis=0)
        return grad_x

    def config(self) -> Dict[str, Any]:
        return {"out_features": self.out_features, "use_bias": self.use_bias,
                "kernel_initializer": init_name(self.kernel_initializer),
                "bias_initializer": init_name(self.bias_initializer)}


@register_layer
class Reshape(Layer):
    """(N, *in_shape) -> (N, *shape), the element count per sample kept (C-order): a
    dense layer's output as feature maps (a generator's first step).

    Parameters
    ----------
    shape : sequence of int
        The per-sample output shape, all positive.
    name : str, optional
        The layer's name.

    Raises
    ------
    ValueError
        If ``shape`` is empty or not positive ints, or (``output_shape``) its element
        count differs from the input's.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnfast import nn
    >>> nn.Reshape((2, 3, 4)).output_shape((24,))
    (2, 3, 4)
    >>> nn.Reshape((2, 3, 4)).forward(np.zeros((5, 24))).shape
    (5, 2, 3, 4)
    """

    def __init__(self, shape: Any, name: Optional[str] = None) -> None:
        super().__init__(name)
        try:
            dims = tuple(int(v) for v in shape if not isinstance(v, bool)
                         and float(v) == int(v))
        except (TypeError, ValueError):
            dims = ()
        if not dims or len(dims) != len(tuple(shape)) or min(dims) < 1:
            raise ValueError(f"shape={shape!r} must be a non-empty sequence of positive "
                             f"ints")
        self.shape = dims

    def output_shape(self, input_shape: ShapeLike) -> Shape:
        if int(np.prod(input_shape)) != int(np.prod(self.shape)):
            raise ValueError(f"{self.name or 'Reshape'}: cannot reshape per-sample "
                             f"{tuple(input_shape)} ({int(np.prod(input_shape))} values) "
                             f"to {self.shape} ({int(np.prod(self.shape))})")
        return self.shape

    def build(self, input_shape: ShapeLike, rng: np.random.Generator, dtype: Any) -> None:
        self.output_shape(input_shape)
        super().build(input_shape, rng, dtype)

    def forward(self, x: Array, training: bool = False) -> Array:
        if training:
            self._cache = tuple(x.shape)
        return x.reshape((x.shape[0],) + self.shape)

    def backward(self, grad: Array, need_input_grad: bool = True) -> Optional[Array]:
        shape = self._need_cache()
        if not need_input_grad:
            return None
        return grad.reshape(shape)

    def config(self) -> Dict[str, Any]:
        return {"shape": list(self.shape)}


Dense = Linear  # the Keras name
