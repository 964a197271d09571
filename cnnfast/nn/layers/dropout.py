"""``Dropout`` (inverted dropout; the mask is drawn on the CPU from the layer's
generator, so runs and checkpoints are reproducible on numpy and cupy alike)."""

from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np

from ..base import Array, Layer, array_module, register_layer


@register_layer
class Dropout(Layer):
    """Inverted dropout: in training, zero each element with probability ``rate`` and
    scale the rest by ``1 / (1 - rate)``; the identity in evaluation. The mask comes
    from ``self.rng`` (the model's generator, so checkpoints restore it).

    Parameters
    ----------
    rate : float
        Probability of zeroing an element, in [0, 1).
    name : str, optional
        The layer's name.

    Raises
    ------
    ValueError
        If ``rate`` is outside [0, 1).

    Examples
    --------
    >>> import numpy as np
    >>> from cnnfast import nn
    >>> x = np.ones((2, 3))
    >>> nn.Dropout(0.5).forward(x) is x  # the identity in evaluation
    True
    """

    def __init__(self, rate: float = 0.5, name: Optional[str] = None) -> None:
        super().__init__(name)
        if not 0.0 <= float(rate) < 1.0:
            raise ValueError(f"rate={rate!r} must be in [0, 1)")
        self.rate = float(rate)
        self.rng = np.random.default_rng()

    def forward(self, x: Array, training: bool = False) -> Array:
        if not training or self.rate == 0.0:
            if training:
                self._cache = (None,)
            return x
        xp = array_module(x)
        keep = self.rng.random(x.shape) >= self.rate  # drawn on the CPU: reproducible
        mask = xp.asarray(keep.astype(x.dtype) * x.dtype.type(1.0 / (1.0 - self.rate)))
        self._cache = (mask,)
        return x * mask

    def backward(self, grad: Array, need_input_grad: bool = True) -> Optional[Array]:
        (mask,) = self._need_cache()
        if not need_input_grad:
            return None
        return grad if mask is None else grad * mask

    def config(self) -> Dict[str, Any]:
        return {"rate": self.rate}
