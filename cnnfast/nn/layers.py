"""The built-in layers: convolutions, pooling, activations, Linear, Dropout, BatchNorm.

Convolution and pooling call the public kernel API (``cnnfast.conv``,
``cnnfast.conv_backward``, ``cnnfast.max_pool(..., return_indices=True)``, ...) with
the layer's ``backend``; everything else is written with the array module of the
input (numpy or cupy), so one model runs on either.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from .. import api
from .. import params as P
from .base import Layer, array_module, register_layer
from .init import fans, get_initializer, init_name


def _tuple(value, rank, name):
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return (int(value),) * rank
    if isinstance(value, (tuple, list)) and len(value) == rank:
        return tuple(int(v) for v in value)
    raise ValueError(f"{name}={value!r} must be an int or {rank} ints")


def _jsonable(value):
    """Tuples -> lists recursively (a config must survive a JSON round trip)."""
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value


# The layers' 'same' is TensorFlow's (any stride), not the kernel API's (stride 1);
# both rules live in cnnfast.params. tf_same_pads is its public name in cnnfast.nn.
tf_same_pads = P.same_pads_tensorflow


def _resolve_padding(padding, spatial_shape, k, s, d):
    """A layer's ``padding`` (``'same'``, ``'valid'``, ints or pairs) as
    ``(before, after)`` pairs for this input."""
    rank = len(k)
    if isinstance(padding, str):
        if padding == "same":
            return tf_same_pads(spatial_shape, k, s, d)
        if padding == "valid":
            return ((0, 0),) * rank
        raise ValueError(f"padding={padding!r}: expected 'same', 'valid', "
                         f"an int or per-dim ints/(before, after) pairs")
    return P.padding_pairs(padding, rank)


def _check_input(layer, input_shape, rank):
    if rank is not None and len(input_shape) != rank + 1:
        raise ValueError(f"{layer.name or type(layer).__name__} expects per-sample input "
                         f"(C, *spatial) with {rank} spatial dims, got {tuple(input_shape)}")
    if len(input_shape) < 2 or len(input_shape) > 4:
        raise ValueError(f"{layer.name or type(layer).__name__} expects per-sample input "
                         f"(C, *spatial) with 1 to 3 spatial dims, got {tuple(input_shape)}")


# ----------------------------------------------------------------------------- convolution


class _Conv(Layer):
    """N-d convolution, weight (C_out, C_in // groups, *kernel). ``padding``: an int,
    per-dim ints or (before, after) pairs, ``'valid'``, or ``'same'`` (any stride,
    TensorFlow's rule: output = ceil(input / stride))."""

    rank: Optional[int] = None

    def __init__(self, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", name=None):
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
        self._pads = None

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

    def param_shapes(self, input_shape):
        _check_input(self, input_shape, self.rank)
        _, w_shape = self._params(input_shape)
        shapes = {"weight": w_shape}
        if self.use_bias:
            shapes["bias"] = (self._bias_channels(w_shape),)
        return shapes

    def build(self, input_shape, rng, dtype):
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

    def output_shape(self, input_shape):
        _check_input(self, input_shape, self.rank)
        p, w_shape = self._params(input_shape)
        return (self._bias_channels(w_shape),) + p.out_shape

    def _kernel_args(self):
        w = self.params["weight"]
        rank = w.ndim - 2
        return dict(stride=_tuple(self.stride, rank, "stride"), padding=self._pads,
                    dilation=_tuple(self.dilation, rank, "dilation"), groups=self.groups)

    def forward(self, x, training=False):
        self._require_built()
        y = api.conv(x, self.params["weight"], self.params.get("bias"),
                     backend=self.backend, **self._kernel_args())
        if training:
            self._cache = x
        return y

    def _needs(self, need_input_grad):
        needs = ["x"] if need_input_grad else []
        if self.trainable:
            needs.append("weight")
            if self.use_bias:
                needs.append("bias")
        return tuple(needs)

    def backward(self, grad, need_input_grad=True):
        x = self._need_cache()
        needs = self._needs(need_input_grad)
        if not needs:
            return None
        gx, gw, gb = api.conv_backward(grad, x, self.params["weight"], needs=needs,
                                       backend=self.backend, **self._kernel_args())
        if self.trainable:
            self.grads["weight"] = gw
            if self.use_bias:
                self.grads["bias"] = gb
        return gx

    def config(self):
        return {"out_channels": self.out_channels,
                "kernel_size": _jsonable(self.kernel_size),
                "stride": _jsonable(self.stride), "padding": _jsonable(self.padding),
                "dilation": _jsonable(self.dilation), "groups": self.groups,
                "use_bias": self.use_bias,
                "kernel_initializer": init_name(self.kernel_initializer),
                "bias_initializer": init_name(self.bias_initializer)}



@register_layer
class Conv(_Conv):
    """Convolution of any rank (inferred from the input)."""


@register_layer
class Conv1d(_Conv):
    rank = 1


@register_layer
class Conv2d(_Conv):
    rank = 2


@register_layer
class Conv3d(_Conv):
    rank = 3


class _ConvTranspose(_Conv):
    """N-d transposed convolution, weight (C_in, C_out // groups, *kernel) (torch's
    layout). ``padding`` crops the output; ``'same'`` gives output = input * stride."""

    def __init__(self, out_channels, kernel_size, stride=1, padding=0, output_padding=0,
                 groups=1, dilation=1, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", name=None):
        super().__init__(out_channels, kernel_size, stride, padding, dilation, groups,
                         use_bias, kernel_initializer, bias_initializer, name)
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

    def forward(self, x, training=False):
        self._require_built()
        y = api.conv_transpose(x, self.params["weight"], self.params.get("bias"),
                               backend=self.backend, **self._kernel_args())
        if training:
            self._cache = x
        return y

    def backward(self, grad, need_input_grad=True):
        x = self._need_cache()
        needs = self._needs(need_input_grad)
        if not needs:
            return None
        gx, gw, gb = api.conv_transpose_backward(
            grad, x, self.params["weight"], needs=needs, backend=self.backend,
            **self._kernel_args())
        if self.trainable:
            self.grads["weight"] = gw
            if self.use_bias:
                self.grads["bias"] = gb
        return gx

    def config(self):
        cfg = super().config()
        cfg["output_padding"] = _jsonable(self.output_padding)
        return cfg


@register_layer
class ConvTranspose(_ConvTranspose):
    """Transposed convolution of any rank (inferred from the input)."""


@register_layer
class ConvTranspose1d(_ConvTranspose):
    rank = 1


@register_layer
class ConvTranspose2d(_ConvTranspose):
    rank = 2


@register_layer
class ConvTranspose3d(_ConvTranspose):
    rank = 3


# ----------------------------------------------------------------------------- pooling


class _Pool(Layer):
    rank: Optional[int] = None

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                 name=None):
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

    def build(self, input_shape, rng, dtype):
        _check_input(self, input_shape, self.rank)
        self._args = self._resolve(input_shape)
        super().build(input_shape, rng, dtype)

    def output_shape(self, input_shape):
        _check_input(self, input_shape, self.rank)
        return (input_shape[0],) + self._pool_params(input_shape).out_shape

    def config(self):
        return {"kernel_size": _jsonable(self.kernel_size), "stride": _jsonable(self.stride),
                "padding": _jsonable(self.padding), "dilation": _jsonable(self.dilation),
                "ceil_mode": self.ceil_mode}


class _MaxPool(_Pool):
    """Max pooling; ``'same'`` padding as TensorFlow (padding never wins a max)."""

    def forward(self, x, training=False):
        self._require_built()
        k, s, pads, d = self._args
        if not training:
            return api.max_pool(x, k, s, pads, d, self.ceil_mode, backend=self.backend)
        y, idx = api.max_pool(x, k, s, pads, d, self.ceil_mode, return_indices=True,
                              backend=self.backend)
        self._cache = (idx, tuple(x.shape))
        return y

    def backward(self, grad, need_input_grad=True):
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
    TensorFlow), whatever ``count_include_pad`` says."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                 count_include_pad=True, name=None):
        super().__init__(kernel_size, stride, padding, dilation, ceil_mode, name)
        self.count_include_pad = bool(count_include_pad)

    def _extra(self):
        return (self.count_include_pad and self.padding != "same",)

    def _kw(self):
        k, s, pads, d = self._args
        return dict(kernel_size=k, stride=s, padding=pads, ceil_mode=self.ceil_mode,
                    count_include_pad=self._extra()[0], dilation=d, backend=self.backend)

    def forward(self, x, training=False):
        self._require_built()
        y = api.avg_pool(x, **self._kw())
        if training:
            self._cache = tuple(x.shape)
        return y

    def backward(self, grad, need_input_grad=True):
        x_shape = self._need_cache()
        if not need_input_grad:
            return None
        return api.avg_pool_backward(grad, x_shape, **self._kw())

    def config(self):
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
    """Mean over every spatial dim: (N, C, *spatial) -> (N, C)."""

    def output_shape(self, input_shape):
        _check_input(self, input_shape, None)
        return (input_shape[0],)

    def forward(self, x, training=False):
        axes = tuple(range(2, x.ndim))
        if training:
            self._cache = tuple(x.shape)
        return x.mean(axis=axes)

    def backward(self, grad, need_input_grad=True):
        shape = self._need_cache()
        if not need_input_grad:
            return None
        xp = array_module(grad)
        count = int(np.prod(shape[2:]))
        g = (grad / grad.dtype.type(count)).reshape(shape[:2] + (1,) * (len(shape) - 2))
        return xp.ascontiguousarray(xp.broadcast_to(g, shape))


# ----------------------------------------------------------------------------- activations


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


# ----------------------------------------------------------------------------- shape / dense


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

    def __init__(self, out_features, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", name=None):
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
        y = x @ w.T
        if self.use_bias:
            y += self.params["bias"]
        if training:
            self._cache = x
        return y

    def backward(self, grad, need_input_grad=True):
        x = self._need_cache()
        if self.trainable:
            self.grads["weight"] = grad.T @ x
            if self.use_bias:
                self.grads["bias"] = grad.sum(axis=0)
        return grad @ self.params["weight"] if need_input_grad else None

    def config(self):
        return {"out_features": self.out_features, "use_bias": self.use_bias,
                "kernel_initializer": init_name(self.kernel_initializer),
                "bias_initializer": init_name(self.bias_initializer)}


Dense = Linear  # the Keras name


@register_layer
class Dropout(Layer):
    """Inverted dropout: in training, zero each element with probability ``rate`` and
    scale the rest by ``1 / (1 - rate)``; the identity in evaluation. The mask comes
    from ``self.rng`` (the model's generator, so checkpoints restore it)."""

    def __init__(self, rate=0.5, name=None):
        super().__init__(name)
        if not 0.0 <= float(rate) < 1.0:
            raise ValueError(f"rate={rate!r} must be in [0, 1)")
        self.rate = float(rate)
        self.rng = np.random.default_rng()

    def forward(self, x, training=False):
        if not training or self.rate == 0.0:
            if training:
                self._cache = (None,)
            return x
        xp = array_module(x)
        keep = self.rng.random(x.shape) >= self.rate  # drawn on the CPU: reproducible
        mask = xp.asarray(keep.astype(x.dtype) * x.dtype.type(1.0 / (1.0 - self.rate)))
        self._cache = (mask,)
        return x * mask

    def backward(self, grad, need_input_grad=True):
        (mask,) = self._need_cache()
        if not need_input_grad:
            return None
        return grad if mask is None else grad * mask

    def config(self):
        return {"rate": self.rate}


@register_layer
class BatchNorm(Layer):
    """Batch normalisation over the channel axis (axis 1) of (N, C, *spatial) or
    (N, C). Training uses the batch statistics and updates the running ones
    (``running = (1 - momentum) * running + momentum * batch``, unbiased variance,
    as torch); evaluation -- and a frozen layer, as Keras -- uses the running ones."""

    def __init__(self, momentum=0.1, eps=1e-5, name=None):
        super().__init__(name)
        self.momentum = float(momentum)
        self.eps = float(eps)

    def param_shapes(self, input_shape):
        return {"weight": (int(input_shape[0]),), "bias": (int(input_shape[0]),)}

    def buffer_shapes(self, input_shape):
        return {"running_mean": (int(input_shape[0]),), "running_var": (int(input_shape[0]),)}

    def build(self, input_shape, rng, dtype):
        p, b = self.param_shapes(input_shape), self.buffer_shapes(input_shape)
        self.params["weight"] = np.ones(p["weight"], dtype)
        self.params["bias"] = np.zeros(p["bias"], dtype)
        self.buffers["running_mean"] = np.zeros(b["running_mean"], dtype)
        self.buffers["running_var"] = np.ones(b["running_var"], dtype)
        super().build(input_shape, rng, dtype)

    def forward(self, x, training=False):
        self._require_built()
        shape = (1, -1) + (1,) * (x.ndim - 2)
        axes = (0,) + tuple(range(2, x.ndim))
        gamma = self.params["weight"].reshape(shape)
        beta = self.params["bias"].reshape(shape)
        if not (training and self.trainable):
            xp = array_module(x)
            inv = 1 / xp.sqrt(self.buffers["running_var"] + x.dtype.type(self.eps))
            y = (x - self.buffers["running_mean"].reshape(shape)) * (inv * self.params[
                "weight"]).reshape(shape) + beta
            if training:
                self._cache = ("frozen", (inv * self.params["weight"]).reshape(shape))
            return y
        xp = array_module(x)
        count = x.size // x.shape[1]
        if count < 2:
            raise ValueError(f"{self.name}: batch normalisation needs more than one value "
                             f"per channel in training, got input shape {tuple(x.shape)}")
        mean = x.mean(axis=axes, keepdims=True)
        xc = x - mean
        var = (xc * xc).mean(axis=axes, keepdims=True)
        inv = 1 / xp.sqrt(var + x.dtype.type(self.eps))
        xhat = xc * inv
        m = x.dtype.type(self.momentum)
        self.buffers["running_mean"] = ((1 - m) * self.buffers["running_mean"]
                                        + m * mean.reshape(-1))
        unbiased = var.reshape(-1) * x.dtype.type(count / (count - 1))
        self.buffers["running_var"] = (1 - m) * self.buffers["running_var"] + m * unbiased
        self._cache = ("batch", xhat, inv)
        return xhat * gamma + beta

    def backward(self, grad, need_input_grad=True):
        cache = self._need_cache()
        axes = (0,) + tuple(range(2, grad.ndim))
        if cache[0] == "frozen":  # an affine map with fixed statistics
            return grad * cache[1] if need_input_grad else None
        _, xhat, inv = cache
        gsum = grad.sum(axis=axes, keepdims=True)
        gxhat = (grad * xhat).sum(axis=axes, keepdims=True)
        self.grads["weight"] = gxhat.reshape(-1)
        self.grads["bias"] = gsum.reshape(-1)
        if not need_input_grad:
            return None
        count = grad.dtype.type(grad.size // grad.shape[1])
        gamma = self.params["weight"].reshape((1, -1) + (1,) * (grad.ndim - 2))
        return (gamma * inv / count) * (count * grad - gsum - xhat * gxhat)

    def config(self):
        return {"momentum": self.momentum, "eps": self.eps}
