"""Element-wise activations: ``ReLU``, ``LeakyReLU``, ``Sigmoid``, ``Tanh``, written
with the array module of the input (numpy or cupy).

Their arithmetic is ``cnnfast.activation``'s (the reference of the kernels' fused
``activation=``; Sigmoid and Tanh call its derivative), operation for operation, so a
``Sequential`` that fuses one into the convolution before it (``fused_activation``)
computes the same numbers.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import numpy as np

from ... import activation as _reference
from ..base import Array, Layer, array_module, register_layer


@register_layer
class ReLU(Layer):
    """``max(x, 0)`` (NaN stays NaN).

    Examples
    --------
    >>> import numpy as np
    >>> from cnnfast import nn
    >>> nn.ReLU().forward(np.array([-1.0, 2.0]))
    array([0., 2.])
    """

    @classmethod
    def default_name(cls) -> str:
        return "relu"

    def fused_activation(self) -> Optional[Tuple[str, float]]:
        """``(activation, negative_slope)`` for a convolution kernel's
        ``activation=`` doing this layer's work."""
        return "relu", 0.0

    def forward(self, x: Array, training: bool = False) -> Array:
        xp = array_module(x)
        y = xp.maximum(x, 0)  # NaN stays NaN
        if training:
            self._cache = x > 0  # a bool mask: a quarter of a float32 copy
        return y

    def backward(self, grad: Array, need_input_grad: bool = True) -> Optional[Array]:
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
    """``x`` where positive, else ``negative_slope * x``.

    Parameters
    ----------
    negative_slope : float
        Slope for negative inputs.
    name : str, optional
        The layer's name.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnfast import nn
    >>> nn.LeakyReLU(0.5).forward(np.array([-2.0, 2.0]))
    array([-1.,  2.])
    """

    def __init__(self, negative_slope: float = 0.01, name: Optional[str] = None) -> None:
        super().__init__(name)
        self.negative_slope = float(negative_slope)

    @classmethod
    def default_name(cls) -> str:
        return "leaky_relu"

    def fused_activation(self) -> Optional[Tuple[str, float]]:
        """As ``ReLU.fused_activation``; ``None`` for a negative (or NaN) slope, which
        the kernels refuse: their derivative is read from the output's sign."""
        s = self.negative_slope
        return ("leaky_relu", s) if math.isfinite(s) and s >= 0 else None

    def forward(self, x: Array, training: bool = False) -> Array:
        xp = array_module(x)
        pos = x > 0
        y = xp.where(pos, x, x * x.dtype.type(self.negative_slope))
        if training:
            self._cache = pos
        return y

    def backward(self, grad: Array, need_input_grad: bool = True) -> Optional[Array]:
        pos = self._need_cache()
        if not need_input_grad:
            return None
        xp = array_module(grad)
        return xp.where(pos, grad, grad * grad.dtype.type(self.negative_slope))

    def config(self) -> Dict[str, Any]:
        return {"negative_slope": self.negative_slope}


@register_layer
class Sigmoid(Layer):
    """``1 / (1 + exp(-x))``, stable for large ``|x|``.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnfast import nn
    >>> nn.Sigmoid().forward(np.array([0.0]))
    array([0.5])
    """

    def fused_activation(self) -> Optional[Tuple[str, float]]:
        """As ``ReLU.fused_activation``."""
        return "sigmoid", 0.0

    def forward(self, x: Array, training: bool = False) -> Array:
        xp = array_module(x)
        # Stable for large |x|: exp of a non-positive number only.
        e = xp.exp(-xp.abs(x))
        y = xp.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)
        if training:
            self._cache = y
        return y

    def backward(self, grad: Array, need_input_grad: bool = True) -> Optional[Array]:
        y = self._need_cache()
        if not need_input_grad:
            return None
        return _reference.grad(grad, y, "sigmoid", 0.0)


@register_layer
class Tanh(Layer):
    """Hyperbolic tangent.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnfast import nn
    >>> nn.Tanh().forward(np.array([0.0]))
    array([0.])
    """

    def fused_activation(self) -> Optional[Tuple[str, float]]:
        """As ``ReLU.fused_activation``."""
        return "tanh", 0.0

    def forward(self, x: Array, training: bool = False) -> Array:
        y = array_module(x).tanh(x)
        if training:
            self._cache = y
        return y

    def backward(self, grad: Array, need_input_grad: bool = True) -> Optional[Array]:
        y = self._need_cache()
        if not need_input_grad:
            return None
        return _reference.grad(grad, y, "tanh", 0.0)
