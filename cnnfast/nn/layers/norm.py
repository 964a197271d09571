"""``BatchNorm``: batch normalisation over the channel axis, written with the array
module of the input (numpy or cupy)."""

from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np

from ..base import Array, Layer, Shape, ShapeLike, array_module, register_layer
from ._common import _refuse_positional


@register_layer
class BatchNorm(Layer):
    """Batch normalisation over the channel axis (axis 1) of (N, C, *spatial) or
    (N, C). Training uses the batch statistics and updates the running ones
    (``running = (1 - momentum) * running + momentum * batch``, unbiased variance,
    as torch); evaluation -- and a frozen layer, as Keras -- uses the running ones.

    Parameters
    ----------
    momentum : float
        Weight of the batch statistics in the running ones.
    eps : float
        Added to the variance.
    name : str, optional
        The layer's name.

    Raises
    ------
    TypeError
        If a positional argument is given (torch's ``BatchNorm2d(64)``).
    ValueError
        (``forward``) If training sees one value per channel only.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnfast import nn
    >>> bn = nn.BatchNorm()
    >>> bn.build((3, 4, 4), np.random.default_rng(0), np.float32)
    >>> sorted(bn.params), sorted(bn.buffers)
    (['bias', 'weight'], ['running_mean', 'running_var'])
    >>> bn.forward(np.ones((2, 3, 4, 4), np.float32)).shape
    (2, 3, 4, 4)
    """

    def __init__(self, *extra: Any, momentum: float = 0.1, eps: float = 1e-5,
                 name: Optional[str] = None) -> None:
        _refuse_positional(self, extra, "the number of features is inferred from the "
                           "input (torch's BatchNorm2d(64) is BatchNorm() here); pass "
                           "momentum= and eps= by keyword")
        super().__init__(name)
        self.momentum = float(momentum)
        self.eps = float(eps)

    def param_shapes(self, input_shape: ShapeLike) -> Dict[str, Shape]:
        return {"weight": (int(input_shape[0]),), "bias": (int(input_shape[0]),)}

    def buffer_shapes(self, input_shape: ShapeLike) -> Dict[str, Shape]:
        return {"running_mean": (int(input_shape[0]),), "running_var": (int(input_shape[0]),)}

    def build(self, input_shape: ShapeLike, rng: np.random.Generator, dtype: Any) -> None:
        p, b = self.param_shapes(input_shape), self.buffer_shapes(input_shape)
        self.params["weight"] = np.ones(p["weight"], dtype)
        self.params["bias"] = np.zeros(p["bias"], dtype)
        self.buffers["running_mean"] = np.zeros(b["running_mean"], dtype)
        self.buffers["running_var"] = np.ones(b["running_var"], dtype)
        super().build(input_shape, rng, dtype)

    def forward(self, x: Array, training: bool = False) -> Array:
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

    def backward(self, grad: Array, need_input_grad: bool = True) -> Optional[Array]:
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

    def config(self) -> Dict[str, Any]:
        return {"momentum": self.momentum, "eps": self.eps}
