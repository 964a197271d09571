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


def _lent_out(layer, role, sig):
    """The array Sequential lends ``layer`` for its ``role`` result (see ``_lent``) for
    a call of signature ``sig`` (input shape, dtype, array type), or None."""
    lent = layer._lent
    return None if lent is None else lent.take(layer, role, sig)


def _keep(layer, role, sig, result):
    """``result``, recorded for reuse by the next such call while lent."""
    if layer._lent is not None:
        layer._lent.keep(layer, role, sig, result)
    return result


class _Pool(Layer):
    """Base of the max and average pooling layers (documented on ``MaxPool`` and
    ``AvgPool``); ``rank`` fixes the number of spatial dims (None: any)."""

    rank: Optional[int] = None
    # The result arrays Sequential lends while it runs this layer inside the model
    # (``cnnfast.nn.model._Buffers``); None: every call allocates its results.
    _lent: Any = None

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
    """Base of the max pooling layers (documented on ``MaxPool``)."""

    def forward(self, x: Array, training: bool = False) -> Array:
        self._require_built()
        k, s, pads, d = self._args
        if not training:
            return api.max_pool(x, k, s, pads, d, self.ceil_mode, backend=self.backend)
        sig = (x.shape, x.dtype, type(x))
        y, idx = _keep(self, "y", sig, api.max_pool(
            x, k, s, pads, d, self.ceil_mode, return_indices=True, backend=self.backend,
            out=_lent_out(self, "y", sig)))
        self._cache = (idx, tuple(x.shape))
        return y

    def backward(self, grad: Array, need_input_grad: bool = True) -> Optional[Array]:
        idx, x_shape = self._need_cache()
        if not need_input_grad:
            return None
        sig = (x_shape, grad.dtype, type(grad))
        return _keep(self, "grad_x", sig, api.max_pool_backward(
            grad, idx, x_shape, backend=self.backend, out=_lent_out(self, "grad_x", sig)))


@register_layer
class MaxPool(_MaxPool):
    """Max pooling of any rank (1 to 3 spatial dims, read from the input); ``'same'``
    padding as TensorFlow (padding never wins a max). ``MaxPool1d``, ``MaxPool2d``
    and ``MaxPool3d`` are the same layer for one rank.

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


@register_layer
class MaxPool1d(_MaxPool):
    """1-d max pooling: per-sample input (C, L), batches (N, C, L).

    Parameters
    ----------
    kernel_size : int or tuple of int
        Window extent: an int or a 1-tuple ``(kL,)``.
    stride, padding
        As for ``MaxPool`` (stride None: the kernel size).
    **options
        ``dilation``, ``ceil_mode``, ``name``: keyword-only, as for ``MaxPool``.

    Raises
    ------
    TypeError, ValueError
        As ``MaxPool``; also ValueError (``build``/``output_shape``) for an input
        without 1 spatial dim.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnfast import nn
    >>> pool = nn.MaxPool1d(2)
    >>> pool.build((1, 6), np.random.default_rng(0), np.float32)
    >>> pool.forward(np.array([[[1, 5, 2, 0, 3, 4]]], np.float32))
    array([[[5., 2., 4.]]], dtype=float32)
    """

    rank = 1


@register_layer
class MaxPool2d(_MaxPool):
    """2-d max pooling: per-sample input (C, H, W), batches (N, C, H, W).

    Parameters
    ----------
    kernel_size : int or tuple of int
        Window extent: an int (both dims) or ``(kH, kW)``.
    stride, padding
        As for ``MaxPool`` (stride None: the kernel size).
    **options
        ``dilation``, ``ceil_mode``, ``name``: keyword-only, as for ``MaxPool``.

    Raises
    ------
    TypeError, ValueError
        As ``MaxPool``; also ValueError (``build``/``output_shape``) for an input
        without 2 spatial dims.

    Examples
    --------
    >>> from cnnfast import nn
    >>> nn.MaxPool2d(3, stride=2, padding=1).output_shape((16, 28, 28))
    (16, 14, 14)
    """

    rank = 2


@register_layer
class MaxPool3d(_MaxPool):
    """3-d max pooling: per-sample input (C, D, H, W), batches (N, C, D, H, W).

    Parameters
    ----------
    kernel_size : int or tuple of int
        Window extent: an int (every dim) or ``(kD, kH, kW)``.
    stride, padding
        As for ``MaxPool`` (stride None: the kernel size).
    **options
        ``dilation``, ``ceil_mode``, ``name``: keyword-only, as for ``MaxPool``.

    Raises
    ------
    TypeError, ValueError
        As ``MaxPool``; also ValueError (``build``/``output_shape``) for an input
        without 3 spatial dims.

    Examples
    --------
    >>> from cnnfast import nn
    >>> nn.MaxPool3d((1, 2, 2)).output_shape((4, 5, 8, 8))
    (4, 5, 4, 4)
    """

    rank = 3


class _AvgPool(_Pool):
    """Base of the average pooling layers (documented on ``AvgPool``)."""

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
        sig = (x.shape, x.dtype, type(x))
        y = _keep(self, "y", sig,
                  api.avg_pool(x, **self._kw(), out=_lent_out(self, "y", sig)))
        if training:
            self._cache = tuple(x.shape)
        return y

    def backward(self, grad: Array, need_input_grad: bool = True) -> Optional[Array]:
        x_shape = self._need_cache()
        if not need_input_grad:
            return None
        sig = (x_shape, grad.dtype, type(grad))
        return _keep(self, "grad_x", sig, api.avg_pool_backward(
            grad, x_shape, **self._kw(), out=_lent_out(self, "grad_x", sig)))

    def config(self) -> Dict[str, Any]:
        cfg = super().config()
        cfg["count_include_pad"] = self.count_include_pad
        return cfg


@register_layer
class AvgPool(_AvgPool):
    """Average pooling of any rank (1 to 3 spatial dims, read from the input); with
    ``'same'`` padding the padding is not counted (as TensorFlow), whatever
    ``count_include_pad`` says. ``AvgPool1d``, ``AvgPool2d`` and ``AvgPool3d`` are the
    same layer for one rank.

    Parameters
    ----------
    kernel_size, stride, padding, dilation, ceil_mode
        As for ``MaxPool`` (the first three may be positional).
    count_include_pad : bool
        Count the padding in the divisor (keyword-only).
    name : str, optional
        The layer's name.

    Raises
    ------
    TypeError, ValueError
        As ``MaxPool``.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnfast import nn
    >>> pool = nn.AvgPool2d(2)
    >>> pool.build((1, 2, 2), np.random.default_rng(0), np.float32)
    >>> pool.forward(np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2))
    array([[[[1.5]]]], dtype=float32)
    """


@register_layer
class AvgPool1d(_AvgPool):
    """1-d average pooling: per-sample input (C, L), batches (N, C, L).

    Parameters
    ----------
    kernel_size : int or tuple of int
        Window extent: an int or a 1-tuple ``(kL,)``.
    stride, padding
        As for ``AvgPool`` (stride None: the kernel size).
    **options
        ``dilation``, ``ceil_mode``, ``count_include_pad``, ``name``: keyword-only, as for ``AvgPool``.

    Raises
    ------
    TypeError, ValueError
        As ``AvgPool``; also ValueError (``build``/``output_shape``) for an input
        without 1 spatial dim.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnfast import nn
    >>> pool = nn.AvgPool1d(2)
    >>> pool.build((1, 4), np.random.default_rng(0), np.float32)
    >>> pool.forward(np.array([[[1, 3, 2, 6]]], np.float32))
    array([[[2., 4.]]], dtype=float32)
    """

    rank = 1


@register_layer
class AvgPool2d(_AvgPool):
    """2-d average pooling: per-sample input (C, H, W), batches (N, C, H, W).

    Parameters
    ----------
    kernel_size : int or tuple of int
        Window extent: an int (both dims) or ``(kH, kW)``.
    stride, padding
        As for ``AvgPool`` (stride None: the kernel size).
    **options
        ``dilation``, ``ceil_mode``, ``count_include_pad``, ``name``: keyword-only, as for ``AvgPool``.

    Raises
    ------
    TypeError, ValueError
        As ``AvgPool``; also ValueError (``build``/``output_shape``) for an input
        without 2 spatial dims.

    Examples
    --------
    >>> from cnnfast import nn
    >>> nn.AvgPool2d(2, ceil_mode=True).output_shape((3, 7, 7))
    (3, 4, 4)
    """

    rank = 2


@register_layer
class AvgPool3d(_AvgPool):
    """3-d average pooling: per-sample input (C, D, H, W), batches (N, C, D, H, W).

    Parameters
    ----------
    kernel_size : int or tuple of int
        Window extent: an int (every dim) or ``(kD, kH, kW)``.
    stride, padding
        As for ``AvgPool`` (stride None: the kernel size).
    **options
        ``dilation``, ``ceil_mode``, ``count_include_pad``, ``name``: keyword-only, as for ``AvgPool``.

    Raises
    ------
    TypeError, ValueError
        As ``AvgPool``; also ValueError (``build``/``output_shape``) for an input
        without 3 spatial dims.

    Examples
    --------
    >>> from cnnfast import nn
    >>> nn.AvgPool3d(2).output_shape((4, 6, 8, 8))
    (4, 3, 4, 4)
    """

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
