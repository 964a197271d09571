"""``Dropout`` (inverted dropout; the mask is drawn on the CPU from the layer's
generator, so runs and checkpoints are reproducible on numpy and cupy alike)."""

from __future__ import annotations

import numpy as np

from ..base import Layer, array_module, register_layer


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
