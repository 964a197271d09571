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
from typing import Any, Dict, Optional, Tuple, TypeVar

import numpy as np

from ..arrays import Array  # noqa: F401 - the array type of the layers' signatures
from ..arrays import array_module  # noqa: F401 - public as cnnfast.nn.array_module

#: A per-sample shape, channels first: ``(C, *spatial)`` or ``(features,)``.
Shape = Tuple[int, ...]
#: A per-sample shape as the layers take it (a tuple or list of ints). ``Any`` for now,
#: since ``Sequential`` hands its ``Optional`` input shape on after its own check.
ShapeLike = Any

_LAYERS: Dict[str, type] = {}

_L = TypeVar("_L", bound=type)


def register_layer(cls: _L) -> _L:
    """Class decorator: make ``cls`` rebuildable from a checkpoint by its class name.

    Parameters
    ----------
    cls : type
        A ``Layer`` subclass; registered under ``cls.__name__``.

    Returns
    -------
    type
        ``cls`` itself.

    Raises
    ------
    ValueError
        If a different class of the same name is already registered.

    Examples
    --------
    Registering the same class again is allowed (it is how every built-in layer is
    registered):

    >>> from cnnfast.nn import Conv2d, layer_class, register_layer
    >>> register_layer(Conv2d) is Conv2d is layer_class("Conv2d")
    True
    """
    name = cls.__name__
    if name in _LAYERS and _LAYERS[name] is not cls:
        raise ValueError(f"a different layer class named {name!r} is already registered")
    _LAYERS[name] = cls
    return cls


def layer_class(name: str) -> type:
    """The registered layer class called ``name``.

    Parameters
    ----------
    name : str
        The class name a checkpoint config stores.

    Returns
    -------
    type
        The class registered under ``name``.

    Raises
    ------
    ValueError
        If no class of that name is registered.

    Examples
    --------
    >>> from cnnfast.nn import layer_class
    >>> layer_class("Conv2d").__name__
    'Conv2d'
    """
    try:
        return _LAYERS[name]
    except KeyError:
        raise ValueError(f"unknown layer class {name!r}; registered: "
                         f"{', '.join(sorted(_LAYERS))}") from None


def layer_from_config(entry: Dict[str, Any]) -> "Layer":
    """Rebuild a layer from ``{"class": name, "config": kwargs}``.

    Parameters
    ----------
    entry : dict
        ``{"class": name, "config": kwargs}``, as ``Layer.full_config()`` returns it.

    Returns
    -------
    Layer
        A new, unbuilt layer.

    Raises
    ------
    ValueError
        If the class is not registered.

    Examples
    --------
    >>> from cnnfast.nn import Dense, layer_from_config
    >>> layer = layer_from_config(Dense(3, name="out").full_config())
    >>> layer.name, layer.config()["out_features"]
    ('out', 3)
    """
    cls = layer_class(entry["class"])
    return cls(**entry.get("config", {}))


def to_numpy(a: Optional[Array]) -> Optional[np.ndarray]:
    """``a`` as a numpy array: a numpy array itself (no copy), a cupy array copied
    to the host.

    Parameters
    ----------
    a : numpy.ndarray, cupy.ndarray or None

    Returns
    -------
    numpy.ndarray or None
        None for None.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnfast.nn.base import to_numpy
    >>> x = np.arange(3.0)
    >>> to_numpy(x) is x, to_numpy(None)
    (True, None)
    """
    if a is None or isinstance(a, np.ndarray):
        return a
    return a.get()


def to_device(a: Optional[Array], xp: Any) -> Optional[Array]:
    """``a`` as an array of module ``xp`` (numpy or cupy): copied between host and
    GPU when it lives on the other one, else returned as it is.

    Parameters
    ----------
    a : numpy.ndarray, cupy.ndarray or None
    xp : module
        ``numpy`` or ``cupy`` (a model's ``xp``).

    Returns
    -------
    numpy.ndarray, cupy.ndarray or None
        None for None.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnfast.nn.base import to_device
    >>> x = np.ones(2, np.float32)
    >>> to_device(x, np) is x, to_device(None, np)
    (True, None)
    """
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

    Parameters
    ----------
    name : str, optional
        The layer's name.

    Raises
    ------
    TypeError
        If ``name`` is neither a str nor ``None``.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnfast import nn
    >>> layer = nn.Dense(2)
    >>> layer.build((3,), np.random.default_rng(0), np.float32)
    >>> layer.output_shape((3,)), layer.param_count()
    ((2,), 8)
    >>> y = layer.forward(np.ones((4, 3), np.float32), training=True)
    >>> layer.backward(np.ones_like(y)).shape, sorted(layer.grads)
    ((4, 3), ['bias', 'weight'])
    """

    def __init__(self, name: Optional[str] = None) -> None:
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name={name!r} must be a str or None")
        self.name: Optional[str] = name
        self.trainable = True
        self.params: Dict[str, Array] = {}
        self.grads: Dict[str, Array] = {}
        self.buffers: Dict[str, Array] = {}
        self.backend: Optional[str] = None
        self.built = False
        self.input_shape: Optional[Shape] = None  # per sample, set by build
        self._cache: Any = None

    # -- construction ---------------------------------------------------------------
    @classmethod
    def default_name(cls) -> str:
        """The class name in snake case (``MaxPool2d`` -> ``max_pool2d``)."""
        return _snake(cls.__name__)

    def build(self, input_shape: ShapeLike, rng: np.random.Generator,
              dtype: Any) -> None:
        """Create the parameters for per-sample ``input_shape`` (numpy, on CPU).
        Parameter-free layers only record the shape.

        Parameters
        ----------
        input_shape : tuple of int
            Per-sample input shape, channels first.
        rng : numpy.random.Generator
            Source of the initial weights.
        dtype : numpy dtype
            ``float32`` or ``float64``.
        """
        self.input_shape = tuple(int(v) for v in input_shape)
        self.built = True

    def output_shape(self, input_shape: ShapeLike) -> Shape:
        """Per-sample output shape for per-sample ``input_shape``.

        Parameters
        ----------
        input_shape : tuple of int
            Per-sample input shape, channels first.

        Returns
        -------
        tuple of int
            Per-sample output shape.
        """
        return tuple(input_shape)

    def param_shapes(self, input_shape: ShapeLike) -> Dict[str, Shape]:
        """``{name: shape}`` of the parameters ``build(input_shape)`` creates,
        computed without allocating them (a checkpoint is checked against it)."""
        return {}

    def buffer_shapes(self, input_shape: ShapeLike) -> Dict[str, Shape]:
        """``{name: shape}`` of the buffers ``build(input_shape)`` creates."""
        return {}

    def config(self) -> Dict[str, Any]:
        """Constructor keyword arguments (JSON-able), ``name`` excluded."""
        return {}

    def full_config(self) -> Dict[str, Any]:
        """``{"class": name, "config": kwargs}`` with ``name`` in the kwargs: what
        ``layer_from_config`` rebuilds the layer from."""
        cfg = dict(self.config())
        cfg["name"] = self.name
        return {"class": type(self).__name__, "config": cfg}

    # -- computation ----------------------------------------------------------------
    def forward(self, x: Array, training: bool = False) -> Array:
        """The layer's output for batch ``x``.

        Parameters
        ----------
        x : array
            A batch (numpy or cupy), batch axis first.
        training : bool
            Keep what ``backward`` needs (and apply dropout).

        Returns
        -------
        array
            The output batch.
        """
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, grad: Array, need_input_grad: bool = True) -> Optional[Array]:
        """Fill ``self.grads`` and return the gradient with respect to the input.

        Parameters
        ----------
        grad : array
            Gradient of the loss with respect to the output of the last
            ``forward(x, training=True)``.
        need_input_grad : bool
            ``False``: skip the input gradient and return ``None``.

        Returns
        -------
        array or None
            Gradient with respect to the input.

        Raises
        ------
        RuntimeError
            If no ``forward(x, training=True)`` came before.
        """
        raise NotImplementedError(f"{type(self).__name__}.backward")

    def __call__(self, x: Array, training: bool = False) -> Array:
        return self.forward(x, training)

    def _require_built(self) -> None:
        if not self.built:
            raise RuntimeError(f"{self.name or type(self).__name__} is not built: put it in a "
                               f"Sequential with an input_shape, or call "
                               f"build(input_shape, rng, dtype)")

    def _need_cache(self) -> Any:
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
        """Number of parameter values."""
        return int(sum(int(np.prod(p.shape)) for p in self.params.values()))

    def buffer_count(self) -> int:
        """Number of buffer values."""
        return int(sum(int(np.prod(b.shape)) for b in self.buffers.values()))

    def to(self, xp: Any) -> "Layer":
        """Move parameters and buffers to array module ``xp`` (numpy or cupy)."""
        for d in (self.params, self.buffers):
            for k in d:
                d[k] = to_device(d[k], xp)
        self.grads = {}
        self._cache = None
        return self

    def zero_grads(self) -> None:
        """Drop the gradients."""
        self.grads = {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"
