"""Pooling layers: ``MaxPool*``, ``AvgPool*`` (any rank or 1-3 spatial dims) and
``GlobalAvgPool``.

All of them call the public kernel API (``cnnfast.max_pool(..., return_indices=True)``
and ``cnnfast.max_pool_backward``, ``cnnfast.avg_pool`` and
``cnnfast.avg_pool_backward``) with the layer's ``backend``; ``GlobalAvgPool`` is an
average pooling whose one window is the whole spatial extent.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Union

import numpy as np

from ... import api
from ... import params as P
from ..base import Array, Layer, Shape, ShapeLike, register_layer
from ._common import _check_input, _jsonable, _refuse_positional, _resolve_padding, _tuple

_POOL_USAGE = ("kernel_size, stride and padding may be positional (torch's order); "
               "pass dilation=, ceil_mode=, ... by keyword")

#: An int (every spatial dim) or one int per spatial dim.
IntOrTuple = Union[int, Sequence[int]]
#: ``'same'``, ``'valid'``, an int, or per-dim ints or ``(before, after)`` pairs.
Padding = Union[str, int, Sequence[Union[int, Sequence[int]]]]


class _Pool(Layer):
    """Base of the max and average pooling layers.

    Parameters
    ----------
    kernel_size : int or tuple of int
        Window extent, one value for every spatial dim or one per dim.
    stride : int or tuple of int, optional
        ``None``: the kernel size.
    padding : str, int or sequence
        ``'same'``, ``'valid'``, an int, per-dim ints or ``(before, after)`` pairs.
    dilation : int or tuple of int
        Spacing of the window's taps.
    ceil_mode : bool
        Round the output size up (a last, partial window).
    name : str, optional
        The layer's name.

    Raises
    ------
    TypeError
        If more than three positional arguments are given.
    ValueError
        (``build``/``output_shape``) If the input's rank does not fit the layer.
    """

    rank: Optional[int] = None

    def __init__(self, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None,
                 padding: Padding = 0, *extra: Any, dilation: IntOrTuple = 1,
                 ceil_mode: bool = False, name: Optional[str] = None) -> None:
        _refuse_positional(self, extra, _POOL_USAGE)
        super().__init__(name)
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.ceil_mode = bool(ceil_mode)

    def _resolve(self, input_shape):
        rank = len(input_shape) - 1
        k = _tuple(self.kernel_size, rank, "kernel_size")
        s = k if self.stride is None else _tuple(self.stride, rank, "stride")
        d = _tuple(self.dilation, rank, "dilation")
        pads = _resolve_padding(self.padding, input_shape[1:], k, s, d)
        return k, s, pads, d

    def _pool_params(self, input_shape):
        k, s, pads, d = self._resolve(input_shape)
        return P.pool_params((1,) + tuple(input_shape), k, s, pads, d, self.ceil_mode,
                             *self._extra())

    def _extra(self):
        return ()

    def build(self, input_shape: ShapeLike, rng: np.random.Generator, dtype: Any) -> None:
        _check_input(self, input_shape, self.rank)
        self._args = self._resolve(input_shape)
        super().build(input_shape, rng, dtype)

    def output_shape(self, input_shape: ShapeLike) -> Shape:
        _check_input(self, input_shape, self.rank)
        return (input_shape[0],) + self._pool_params(input_shape).out_shape

    def config(self) -> Dict[str, Any]:
        return {"kernel_size": _jsonable(self.kernel_size), "stride": _jsonable(self.stride),
                "padding": _jsonable(self.padding), "dilation": _jsonable(self.dilation),
                "ceil_mode": self.ceil_mode}


class _MaxPool(_Pool):
    """Max pooling; ``'same'`` padding as TensorFlow (padding never wins a max).

    Parameters as ``_Pool`` (``kernel_size``, ``stride``, ``padding``, ``dilation``,
    ``ceil_mode``, ``name``).

    Examples
    --------
    >>> import numpy as np
    >>> from cnnfast import nn
    >>> pool = nn.MaxPool2d(2)
    >>> pool.output_shape((3, 8, 8))
    (3, 4, 4)
    >>> pool.build((1, 2, 2), np.random.default_rng(0), np.float32)
    >>> pool.forward(np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2))
    array([[[[3.]]]], dtype=float32)
    """

    def forward(self, x: Array, training: bool = False) -> Array:
        self._require_built()
        k, s, pads, d = self._args
        if not training:
            return api.max_pool(x, k, s, pads, d, self.ceil_mode, backend=self.backend)
        y, idx = api.max_pool(x, k, s, pads, d, self.ceil_mode, return_indices=True,
                              backend=self.backend)
        self._cache = (idx, tuple(x.shape))
        return y

    def backward(self, grad: Array, need_input_grad: bool = True) -> Optional[Array]:
        idx, x_shape = self._need_cache()
        if not need_input_grad:
            return None
        return api.max_pool_backward(grad, idx, x_shape, backend=self.backend)


@register_layer
class MaxPool(_MaxPool):
    """Max pooling of any rank (inferred from the input)."""


@register_layer
class MaxPool1d(_MaxPool):
    rank = 1


@register_layer
class MaxPool2d(_MaxPool):
    rank = 2


@register_layer
class MaxPool3d(_MaxPool):
    rank = 3


class _AvgPool(_Pool):
    """Average pooling; with ``'same'`` padding the padding is not counted (as
    TensorFlow), whatever ``count_include_pad`` says.

    Parameters as ``_Pool``, plus ``count_include_pad`` (bool): count the padding in
    the divisor.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnfast import nn
    >>> pool = nn.AvgPool2d(2)
    >>> pool.build((1, 2, 2), np.random.default_rng(0), np.float32)
    >>> pool.forward(np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2))
    array([[[[1.5]]]], dtype=float32)
    """

    def __init__(self, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None,
                 padding: Padding = 0, *extra: Any, dilation: IntOrTuple = 1,
                 ceil_mode: bool = False, count_include_pad: bool = True,
                 name: Optional[str] = None) -> None:
        _refuse_positional(self, extra, _POOL_USAGE)
        super().__init__(kernel_size, stride, padding, dilation=dilation,
                         ceil_mode=ceil_mode, name=name)
        self.count_include_pad = bool(count_include_pad)

    def _extra(self):
        return (self.count_include_pad and self.padding != "same",)

    def _kw(self):
        k, s, pads, d = self._args
        return dict(kernel_size=k, stride=s, padding=pads, ceil_mode=self.ceil_mode,
                    count_include_pad=self._extra()[0], dilation=d, backend=self.backend)

    def forward(self, x: Array, training: bool = False) -> Array:
        self._require_built()
        y = api.avg_pool(x, **self._kw())
        if training:
            self._cache = tuple(x.shape)
        return y

    def backward(self, grad: Array, need_input_grad: bool = True) -> Optional[Array]:
        x_shape = self._need_cache()
        if not need_input_grad:
            return None
        return api.avg_pool_backward(grad, x_shape, **self._kw())

    def config(self) -> Dict[str, Any]:
        cfg = super().config()
        cfg["count_include_pad"] = self.count_include_pad
        return cfg


@register_layer
class AvgPool(_AvgPool):
    """Average pooling of any rank (inferred from the input)."""


@register_layer
class AvgPool1d(_AvgPool):
    rank = 1


@register_layer
class AvgPool2d(_AvgPool):
    rank = 2


@register_layer
class AvgPool3d(_AvgPool):
    rank = 3


@register_layer
class GlobalAvgPool(Layer):
    """Mean over every spatial dim: (N, C, *spatial) -> (N, C), 1 to 3 spatial dims.

    Computed by the average-pooling kernels (``cnnfast.avg_pool`` and
    ``cnnfast.avg_pool_backward``, the layer's ``backend``) with one window, and
    stride, equal to the whole spatial extent and no padding: output (N, C, 1, ...),
    reshaped to (N, C). The window is read from the input, so the layer needs no
    ``build``.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnfast import nn
    >>> nn.GlobalAvgPool().forward(np.ones((2, 3, 4, 4), np.float32)).shape
    (2, 3)
    """

    def output_shape(self, input_shape: ShapeLike) -> Shape:
        _check_input(self, input_shape, None)
        return (input_shape[0],)

    def _window(self, x_shape):
        _check_input(self, tuple(x_shape[1:]), None)
        return tuple(int(v) for v in x_shape[2:])

    def forward(self, x: Array, training: bool = False) -> Array:
        window = self._window(x.shape)
        y = api.avg_pool(x, window, window, 0, backend=self.backend)
        if training:
            self._cache = tuple(x.shape)
        return y.reshape(y.shape[:2])

    def backward(self, grad: Array, need_input_grad: bool = True) -> Optional[Array]:
        shape = self._need_cache()
        if not need_input_grad:
            return None
        window = self._window(shape)
        grad_y = grad.reshape(tuple(grad.shape) + (1,) * len(window))
        return api.avg_pool_backward(grad_y, shape, window, window, 0, backend=self.backend)
