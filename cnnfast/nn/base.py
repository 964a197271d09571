"""The layer base class, the layer registry and the array-module helper.

A layer is an object with an explicit ``forward(x, training)`` and
``backward(grad, need_input_grad=True)``: no autograd tape. ``forward`` keeps only
what ``backward`` needs (in ``self._cache``) and only when ``training`` is true;
``backward`` fills ``self.grads`` (same keys as ``self.params``) and returns the
gradient with respect to the layer's input (or ``None`` when
``need_input_grad=False``, which the model passes to the first layers, whose
input gradient nobody uses).

Shapes handed to ``build``/``output_shape`` are per sample, without the batch
axis, channels first: ``(C, *spatial)`` or ``(features,)``.

To add a layer in a new file::

    from cnnfast.nn.base import Layer, register_layer

    @register_layer
    class Upsample(Layer):
        def __init__(self, scale=2, name=None):
            super().__init__(name)
            self.scale = scale
        def output_shape(self, input_shape): ...
        def forward(self, x, training=False): ...
        def backward(self, grad, need_input_grad=True): ...
        def config(self): return {"scale": self.scale}

``config()`` returns the constructor keyword arguments (JSON-able, without
``name``, which the base class adds); ``layer_from_config`` rebuilds a layer
from ``{"class": ..., "config": ...}`` when a checkpoint is loaded.
"""

from __future__ import annotations

import re
from typing import Dict, Optional

import numpy as np

from ..arrays import array_module  # noqa: F401 - public as cnnfast.nn.array_module

_LAYERS: Dict[str, type] = {}


def register_layer(cls):
    """Class decorator: make ``cls`` rebuildable from a checkpoint by its class name."""
    name = cls.__name__
    if name in _LAYERS and _LAYERS[name] is not cls:
        raise ValueError(f"a different layer class named {name!r} is already registered")
    _LAYERS[name] = cls
    return cls


def layer_class(name: str) -> type:
    try:
        return _LAYERS[name]
    except KeyError:
        raise ValueError(f"unknown layer class {name!r}; registered: "
                         f"{', '.join(sorted(_LAYERS))}") from None


def layer_from_config(entry: dict) -> "Layer":
    """Rebuild a layer from ``{"class": name, "config": kwargs}``."""
    cls = layer_class(entry["class"])
    return cls(**entry.get("config", {}))


def to_numpy(a):
    """A numpy copy (or view) of a numpy or cupy array."""
    if a is None or isinstance(a, np.ndarray):
        return a
    return a.get()


def to_device(a, xp):
    """``a`` as an array of module ``xp`` (numpy or cupy)."""
    if a is None:
        return None
    if xp is np:
        return to_numpy(a)
    return xp.asarray(a)


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


class Layer:
    """Base class of every layer.

    Attributes:
        name: unique within a model (assigned by ``Sequential`` when not given).
        trainable: a frozen layer (``False``) gets no parameter gradients and is
            skipped by the optimizers.
        params: dict of trainable arrays (empty for parameter-free layers).
        grads: dict of their gradients after ``backward``.
        buffers: dict of non-trainable state saved in checkpoints (BatchNorm's
            running statistics).
        backend: the cnnfast backend name for the kernel calls (``None``: automatic).
    """

    def __init__(self, name: Optional[str] = None):
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name={name!r} must be a str or None")
        self.name = name
        self.trainable = True
        self.params: Dict[str, object] = {}
        self.grads: Dict[str, object] = {}
        self.buffers: Dict[str, object] = {}
        self.backend: Optional[str] = None
        self.built = False
        self.input_shape = None  # per sample, set by build
        self._cache = None

    # -- construction ---------------------------------------------------------------
    @classmethod
    def default_name(cls) -> str:
        return _snake(cls.__name__)

    def build(self, input_shape, rng: np.random.Generator, dtype) -> None:
        """Create the parameters for per-sample ``input_shape`` (numpy, on CPU).
        Parameter-free layers only record the shape."""
        self.input_shape = tuple(int(v) for v in input_shape)
        self.built = True

    def output_shape(self, input_shape):
        """Per-sample output shape for per-sample ``input_shape``."""
        return tuple(input_shape)

    def param_shapes(self, input_shape) -> dict:
        """``{name: shape}`` of the parameters ``build(input_shape)`` creates,
        computed without allocating them (a checkpoint is checked against it)."""
        return {}

    def buffer_shapes(self, input_shape) -> dict:
        """``{name: shape}`` of the buffers ``build(input_shape)`` creates."""
        return {}

    def config(self) -> dict:
        """Constructor keyword arguments (JSON-able), ``name`` excluded."""
        return {}

    def full_config(self) -> dict:
        cfg = dict(self.config())
        cfg["name"] = self.name
        return {"class": type(self).__name__, "config": cfg}

    # -- computation ----------------------------------------------------------------
    def forward(self, x, training: bool = False):
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, grad, need_input_grad: bool = True):
        raise NotImplementedError(f"{type(self).__name__}.backward")

    def __call__(self, x, training: bool = False):
        return self.forward(x, training)

    def _require_built(self):
        if not self.built:
            raise RuntimeError(f"{self.name or type(self).__name__} is not built: put it in a "
                               f"Sequential with an input_shape, or call "
                               f"build(input_shape, rng, dtype)")

    def _need_cache(self):
        if self._cache is None:
            raise RuntimeError(f"{self.name or type(self).__name__}.backward called "
                               f"without a forward(x, training=True) before it")
        cache, self._cache = self._cache, None  # free the activations at once
        return cache

    @property
    def needs_param_grads(self) -> bool:
        return self.trainable and bool(self.params)

    # -- parameters -----------------------------------------------------------------
    def param_count(self) -> int:
        return int(sum(int(np.prod(p.shape)) for p in self.params.values()))

    def buffer_count(self) -> int:
        return int(sum(int(np.prod(b.shape)) for b in self.buffers.values()))

    def to(self, xp) -> "Layer":
        """Move parameters and buffers to array module ``xp`` (numpy or cupy)."""
        for d in (self.params, self.buffers):
            for k in d:
                d[k] = to_device(d[k], xp)
        self.grads = {}
        self._cache = None
        return self

    def zero_grads(self):
        self.grads = {}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"
