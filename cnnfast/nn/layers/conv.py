"""Convolution layers: ``Conv``/``Conv1d``/``Conv2d``/``Conv3d`` and the transposed
``ConvTranspose``/``ConvTranspose1d``/``ConvTranspose2d``/``ConvTranspose3d``.

They call the public kernel API (``cnnfast.conv``, ``cnnfast.conv_backward``,
``cnnfast.conv_transpose``, ``cnnfast.conv_transpose_backward``) with the layer's
``backend``. ``padding='same'`` is TensorFlow's rule (``tf_same_pads``, any stride).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Union

import numpy as np

from ... import api
from ... import params as P
from ..base import Array, Layer, Shape, ShapeLike, register_layer
from ..init import Initializer, fans, get_initializer, init_name
from ._common import _check_input, _jsonable, _refuse_positional, _resolve_padding, _tuple

_CONV_USAGE = ("the input channels are inferred from the input, so only out_channels "
               "and kernel_size are positional (torch's Conv2d(1, 64, 3) is "
               "Conv2d(64, 3) here); pass stride=, padding=, ... by keyword")

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


class _Conv(Layer):
    """Base of the convolution layers (documented on ``Conv``); ``rank`` fixes the
    number of spatial dims (None: any, read from the input)."""

    rank: Optional[int] = None
    _op = "conv"  # the kernel API functions: api.<_op> and api.<_op>_backward
    # The result arrays Sequential lends while it runs this layer inside the model
    # (``cnnfast.nn.model._Buffers``: when no one else can hold the previous result);
    # None: every call allocates its results.
    _lent: Any = None

    def __init__(self, out_channels: int, kernel_size: IntOrTuple, *extra: Any,
                 stride: IntOrTuple = 1, padding: Padding = 0, dilation: IntOrTuple = 1,
                 groups: int = 1, use_bias: bool = True,
                 kernel_initializer: Optional[Initializer] = "glorot_uniform",
                 bias_initializer: Optional[Initializer] = "zeros",
                 name: Optional[str] = None) -> None:
        _refuse_positional(self, extra, _CONV_USAGE)
        super().__init__(name)
        if not isinstance(out_channels, (int, np.integer)) or out_channels < 1:
            raise ValueError(f"out_channels={out_channels!r} must be a positive int")
        self.out_channels = int(out_channels)
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.groups = int(groups)
        self.use_bias = bool(use_bias)
        # None (how a config stores a callable) means the default.
        self.kernel_initializer = kernel_initializer or "glorot_uniform"
        self.bias_initializer = bias_initializer or "zeros"
        get_initializer(self.kernel_initializer)  # fail early on a bad name
        get_initializer(self.bias_initializer)
        self._pads: Any = None

    def _resolve(self, input_shape):
        rank = len(input_shape) - 1
        k = _tuple(self.kernel_size, rank, "kernel_size")
        s = _tuple(self.stride, rank, "stride")
        d = _tuple(self.dilation, rank, "dilation")
        pads = _resolve_padding(self.padding, input_shape[1:], k, s, d)
        return k, s, d, pads

    def _weight_shape(self, c_in, k):
        return (self.out_channels, c_in // self.groups) + k

    def _params(self, input_shape):
        k, s, d, pads = self._resolve(input_shape)
        w_shape = self._weight_shape(input_shape[0], k)
        p = P.conv_params((1,) + tuple(input_shape), w_shape, s, pads, d, self.groups)
        return p, w_shape

    def param_shapes(self, input_shape: ShapeLike) -> Dict[str, Shape]:
        _check_input(self, input_shape, self.rank)
        _, w_shape = self._params(input_shape)
        shapes: Dict[str, Shape] = {"weight": w_shape}
        if self.use_bias:
            shapes["bias"] = (self._bias_channels(w_shape),)
        return shapes

    def build(self, input_shape: ShapeLike, rng: np.random.Generator, dtype: Any) -> None:
        shapes = self.param_shapes(input_shape)
        self._pads = self._params(input_shape)[0].padding
        fan_in, fan_out = fans(shapes["weight"])
        self.params["weight"] = get_initializer(self.kernel_initializer)(
            shapes["weight"], fan_in, fan_out, rng, dtype)
        if self.use_bias:
            self.params["bias"] = get_initializer(self.bias_initializer)(
                shapes["bias"], fan_in, fan_out, rng, dtype)
        super().build(input_shape, rng, dtype)

    def _bias_channels(self, w_shape):
        return w_shape[0]

    def output_shape(self, input_shape: ShapeLike) -> Shape:
        _check_input(self, input_shape, self.rank)
        p, w_shape = self._params(input_shape)
        return (self._bias_channels(w_shape),) + p.out_shape

    def _kernel_args(self):
        w = self.params["weight"]
        rank = w.ndim - 2
        return dict(stride=_tuple(self.stride, rank, "stride"), padding=self._pads,
                    dilation=_tuple(self.dilation, rank, "dilation"), groups=self.groups)

    def forward(self, x: Array, training: bool = False) -> Array:
        return self.forward_activated(x, training)

    def forward_activated(self, x: Array, training: bool = False,
                          activation: Optional[str] = None,
                          negative_slope: float = 0.0) -> Array:
        """``forward`` followed by ``activation`` (``cnnfast.activation``'s names),
        applied by the kernel call itself (``activation=`` of ``cnnfast.conv`` and
        ``conv_transpose``): how ``Sequential`` fuses this layer with the activation
        layer after it. ``backward`` applies the activation's derivative, read from
        the activated output kept here."""
        self._require_built()
        sig = (x.shape, x.dtype, type(x))
        y = _keep(self, "y", sig, getattr(api, self._op)(
            x, self.params["weight"], self.params.get("bias"), backend=self.backend,
            activation=activation, negative_slope=negative_slope,
            out=_lent_out(self, "y", sig), **self._kernel_args()))
        if training:
            self._cache = (x, activation, negative_slope,
                           None if activation is None else y)
        return y

    def _needs(self, need_input_grad):
        needs = ["x"] if need_input_grad else []
        if self.trainable:
            needs.append("weight")
            if self.use_bias:
                needs.append("bias")
        return tuple(needs)

    def backward(self, grad: Array, need_input_grad: bool = True) -> Optional[Array]:
        x, activation, slope, y = self._need_cache()
        needs = self._needs(need_input_grad)
        if not needs:
            return None
        sig = (x.shape, x.dtype, type(x))
        gx_out = _lent_out(self, "grad_x", sig) if need_input_grad else None
        gx, gw, gb = getattr(api, self._op + "_backward")(
            grad, x, self.params["weight"], needs=needs, backend=self.backend,
            activation=activation, negative_slope=slope, y=y,
            out=None if gx_out is None else (gx_out, None, None),  # parameter grads: fresh
            **self._kernel_args())
        if gx is not None:
            _keep(self, "grad_x", sig, gx)
        if self.trainable:
            self.grads["weight"] = gw
            if self.use_bias:
                self.grads["bias"] = gb
        return gx

    def config(self) -> Dict[str, Any]:
        return {"out_channels": self.out_channels,
                "kernel_size": _jsonable(self.kernel_size),
                "stride": _jsonable(self.stride), "padding": _jsonable(self.padding),
                "dilation": _jsonable(self.dilation), "groups": self.groups,
                "use_bias": self.use_bias,
                "kernel_initializer": init_name(self.kernel_initializer),
                "bias_initializer": init_name(self.bias_initializer)}


@register_layer
class Conv(_Conv):
    """Convolution of any rank (1 to 3 spatial dims, read from the input), weight
    (C_out, C_in // groups, *kernel) (torch's layout). ``padding``: an int, per-dim
    ints or (before, after) pairs, ``'valid'``, or ``'same'`` (any stride,
    TensorFlow's rule: output = ceil(input / stride)). ``Conv1d``, ``Conv2d`` and
    ``Conv3d`` are the same layer for one rank.

    Parameters
    ----------
    out_channels : int
        Output channels (the input channels are inferred from the input).
    kernel_size : int or tuple of int
        Kernel extent, one value for every spatial dim or one per dim.
    stride, dilation : int or tuple of int
        Per spatial dim, or one value for all.
    padding : str, int or sequence
        ``'same'``, ``'valid'``, an int, per-dim ints or ``(before, after)`` pairs.
    groups : int
        Channel groups (must divide the input and output channels).
    use_bias : bool
        Add a per-channel bias.
    kernel_initializer, bias_initializer : str or callable
        A name of ``cnnfast.nn.INITIALIZERS`` or ``f(shape, fan_in, fan_out, rng, dtype)``.
    name : str, optional
        The layer's name.

    Raises
    ------
    TypeError
        If more than two positional arguments are given (torch's
        ``Conv2d(in, out, k)`` order).
    ValueError
        If ``out_channels`` is not a positive int or an initializer is unknown.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnfast import nn
    >>> conv = nn.Conv2d(4, 3, stride=2, padding="same")
    >>> conv.output_shape((1, 8, 8)), conv.param_shapes((1, 8, 8))
    ((4, 4, 4), {'weight': (4, 1, 3, 3), 'bias': (4,)})
    >>> conv.build((1, 8, 8), np.random.default_rng(0), np.float32)
    >>> conv.forward(np.ones((2, 1, 8, 8), np.float32)).shape
    (2, 4, 4, 4)
    """


@register_layer
class Conv1d(_Conv):
    """1-d convolution: per-sample input (C, L), batches (N, C, L).

    Parameters
    ----------
    out_channels : int
        Output channels (the input channels are inferred from the input).
    kernel_size : int or tuple of int
        Kernel extent: an int or a 1-tuple ``(kL,)``.
    **options
        ``stride``, ``padding``, ``dilation``, ``groups``, ``use_bias``,
        ``kernel_initializer``, ``bias_initializer``, ``name``: keyword-only, as for
        ``Conv``.

    Raises
    ------
    TypeError, ValueError
        As ``Conv``; also ValueError (``build``/``output_shape``) for an input
        without 1 spatial dim.

    Examples
    --------
    >>> from cnnfast import nn
    >>> nn.Conv1d(8, 3, padding="same").output_shape((2, 100))
    (8, 100)
    """

    rank = 1


@register_layer
class Conv2d(_Conv):
    """2-d convolution: per-sample input (C, H, W), batches (N, C, H, W).

    Parameters
    ----------
    out_channels : int
        Output channels (the input channels are inferred from the input).
    kernel_size : int or tuple of int
        Kernel extent: an int (both dims) or ``(kH, kW)``.
    **options
        ``stride``, ``padding``, ``dilation``, ``groups``, ``use_bias``,
        ``kernel_initializer``, ``bias_initializer``, ``name``: keyword-only, as for
        ``Conv``.

    Raises
    ------
    TypeError, ValueError
        As ``Conv``; also ValueError (``build``/``output_shape``) for an input
        without 2 spatial dims.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnfast import nn
    >>> conv = nn.Conv2d(4, 3, stride=2, padding=1)
    >>> conv.build((1, 8, 8), np.random.default_rng(0), np.float32)
    >>> conv.forward(np.ones((2, 1, 8, 8), np.float32)).shape
    (2, 4, 4, 4)
    """

    rank = 2


@register_layer
class Conv3d(_Conv):
    """3-d convolution: per-sample input (C, D, H, W), batches (N, C, D, H, W).

    Parameters
    ----------
    out_channels : int
        Output channels (the input channels are inferred from the input).
    kernel_size : int or tuple of int
        Kernel extent: an int (every dim) or ``(kD, kH, kW)``.
    **options
        ``stride``, ``padding``, ``dilation``, ``groups``, ``use_bias``,
        ``kernel_initializer``, ``bias_initializer``, ``name``: keyword-only, as for
        ``Conv``.

    Raises
    ------
    TypeError, ValueError
        As ``Conv``; also ValueError (``build``/``output_shape``) for an input
        without 3 spatial dims.

    Examples
    --------
    >>> from cnnfast import nn
    >>> nn.Conv3d(4, (1, 3, 3)).output_shape((2, 5, 8, 8))
    (4, 5, 6, 6)
    """

    rank = 3


class _ConvTranspose(_Conv):
    """Base of the transposed convolution layers (documented on
    ``ConvTranspose``)."""

    _op = "conv_transpose"

    def __init__(self, out_channels: int, kernel_size: IntOrTuple, *extra: Any,
                 stride: IntOrTuple = 1, padding: Padding = 0,
                 output_padding: IntOrTuple = 0, groups: int = 1, dilation: IntOrTuple = 1,
                 use_bias: bool = True,
                 kernel_initializer: Optional[Initializer] = "glorot_uniform",
                 bias_initializer: Optional[Initializer] = "zeros",
                 name: Optional[str] = None) -> None:
        _refuse_positional(self, extra, _CONV_USAGE)
        super().__init__(out_channels, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, groups=groups, use_bias=use_bias,
                         kernel_initializer=kernel_initializer,
                         bias_initializer=bias_initializer, name=name)
        if self.out_channels % self.groups:
            raise ValueError(f"groups={groups} does not divide out_channels={out_channels}")
        self.output_padding = output_padding

    def _weight_shape(self, c_in, k):
        return (c_in, self.out_channels // self.groups) + k

    def _bias_channels(self, w_shape):
        return w_shape[1] * self.groups

    def _params(self, input_shape):
        rank = len(input_shape) - 1
        k = _tuple(self.kernel_size, rank, "kernel_size")
        w_shape = self._weight_shape(input_shape[0], k)
        pad = self.padding if isinstance(self.padding, str) else P.padding_pairs(
            self.padding, rank)
        p = P.conv_transpose_params((1,) + tuple(input_shape), w_shape, self.stride, pad,
                                    self.output_padding, self.groups, self.dilation)
        return p, w_shape

    def _kernel_args(self):
        w = self.params["weight"]
        rank = w.ndim - 2
        return dict(stride=_tuple(self.stride, rank, "stride"), padding=self._pads,
                    output_padding=_tuple(self.output_padding, rank, "output_padding"),
                    dilation=_tuple(self.dilation, rank, "dilation"), groups=self.groups)

    def config(self) -> Dict[str, Any]:
        cfg = super().config()
        cfg["output_padding"] = _jsonable(self.output_padding)
        return cfg


@register_layer
class ConvTranspose(_ConvTranspose):
    """Transposed convolution of any rank (1 to 3 spatial dims, read from the input),
    weight (C_in, C_out // groups, *kernel) (torch's layout). ``padding`` crops the
    output; ``'same'`` gives output = input * stride. ``ConvTranspose1d``,
    ``ConvTranspose2d`` and ``ConvTranspose3d`` are the same layer for one rank.

    Parameters
    ----------
    out_channels, kernel_size, stride, padding, groups, dilation, use_bias
        As for ``Conv`` (all but the first two keyword-only).
    output_padding : int or tuple of int
        Extra output rows at the end of each spatial dim, less than the stride.
    kernel_initializer, bias_initializer, name
        As for ``Conv``.

    Raises
    ------
    ValueError
        If ``groups`` does not divide ``out_channels`` (and as ``Conv``).

    Examples
    --------
    >>> from cnnfast import nn
    >>> nn.ConvTranspose2d(3, 2, stride=2).output_shape((4, 5, 5))
    (3, 10, 10)
    """


@register_layer
class ConvTranspose1d(_ConvTranspose):
    """1-d transposed convolution: per-sample input (C, L), batches (N, C, L).

    Parameters
    ----------
    out_channels : int
        Output channels (the input channels are inferred from the input).
    kernel_size : int or tuple of int
        Kernel extent: an int or a 1-tuple ``(kL,)``.
    **options
        ``stride``, ``padding``, ``output_padding``, ``groups``, ``dilation``,
        ``use_bias``, ``kernel_initializer``, ``bias_initializer``, ``name``:
        keyword-only, as for ``ConvTranspose``.

    Raises
    ------
    TypeError, ValueError
        As ``ConvTranspose``; also ValueError (``build``/``output_shape``) for an
        input without 1 spatial dim.

    Examples
    --------
    >>> from cnnfast import nn
    >>> nn.ConvTranspose1d(8, 4, stride=2, padding=1).output_shape((3, 50))
    (8, 100)
    """

    rank = 1


@register_layer
class ConvTranspose2d(_ConvTranspose):
    """2-d transposed convolution: per-sample input (C, H, W), batches (N, C, H, W).

    Parameters
    ----------
    out_channels : int
        Output channels (the input channels are inferred from the input).
    kernel_size : int or tuple of int
        Kernel extent: an int (both dims) or ``(kH, kW)``.
    **options
        ``stride``, ``padding``, ``output_padding``, ``groups``, ``dilation``,
        ``use_bias``, ``kernel_initializer``, ``bias_initializer``, ``name``:
        keyword-only, as for ``ConvTranspose``.

    Raises
    ------
    TypeError, ValueError
        As ``ConvTranspose``; also ValueError (``build``/``output_shape``) for an
        input without 2 spatial dims.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnfast import nn
    >>> up = nn.ConvTranspose2d(2, 2, stride=2)
    >>> up.build((3, 4, 4), np.random.default_rng(0), np.float32)
    >>> up.forward(np.ones((1, 3, 4, 4), np.float32)).shape
    (1, 2, 8, 8)
    """

    rank = 2


@register_layer
class ConvTranspose3d(_ConvTranspose):
    """3-d transposed convolution: per-sample input (C, D, H, W), batches
    (N, C, D, H, W).

    Parameters
    ----------
    out_channels : int
        Output channels (the input channels are inferred from the input).
    kernel_size : int or tuple of int
        Kernel extent: an int (every dim) or ``(kD, kH, kW)``.
    **options
        ``stride``, ``padding``, ``output_padding``, ``groups``, ``dilation``,
        ``use_bias``, ``kernel_initializer``, ``bias_initializer``, ``name``:
        keyword-only, as for ``ConvTranspose``.

    Raises
    ------
    TypeError, ValueError
        As ``ConvTranspose``; also ValueError (``build``/``output_shape``) for an
        input without 3 spatial dims.

    Examples
    --------
    >>> from cnnfast import nn
    >>> nn.ConvTranspose3d(4, 2, stride=2).output_shape((1, 3, 4, 4))
    (4, 6, 8, 8)
    """

    rank = 3
