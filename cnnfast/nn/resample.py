"""Resampling and skip-connection layers: ``Upsample`` (nearest, bilinear),
``SkipConcat`` and ``Residual``.

``Sequential`` is a straight chain, so a skip connection is a layer that *holds*
a chain of layers: ``SkipConcat(inner)`` computes ``concat([x, inner(x)], axis=1)``
and ``Residual(inner)`` computes ``x + inner(x)``. Nesting ``SkipConcat`` blocks
builds a U-Net (see ``cnnfast.nn.encdec.unet``).

A block presents its inner layers' parameters, gradients and buffers to the
outer ``Sequential`` (and so to optimizers, ``state_dict`` and checkpoints) as
its own, under the keys ``"<inner layer>.<param>"``: the outer model sees e.g.
``"skip.conv2d.weight"``. These dicts are live views: reading returns the inner
layer's array, writing (``load_state_dict``, ``to``) replaces it there, and the
optimizers' in-place updates land in the inner layer. Nothing in ``Sequential``
needs to know about nesting.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union, cast

import numpy as np

from .base import (Array, Layer, Shape, ShapeLike, array_module, layer_from_config,
                   register_layer)

# ----------------------------------------------------------------------------- Upsample


def _scales(scale_factor: Any, rank: int) -> Tuple[int, ...]:
    if isinstance(scale_factor, (int, np.integer)) and not isinstance(scale_factor, bool):
        scales = (int(scale_factor),) * rank
    elif isinstance(scale_factor, (tuple, list)) and len(scale_factor) == rank and all(
            isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in scale_factor):
        scales = tuple(int(s) for s in scale_factor)
    else:
        raise ValueError(f"scale_factor={scale_factor!r} must be a positive int or "
                         f"{rank} positive ints")
    if any(s < 1 for s in scales):
        raise ValueError(f"scale_factor={scale_factor!r} must be positive")
    return scales


def linear_resize_matrix(n_in: int, n_out: int, dtype: Any = np.float64) -> np.ndarray:
    """The ``(n_out, n_in)`` matrix of 1-D linear interpolation with
    ``align_corners=False`` (torch's rule): output ``o`` reads the input at
    ``src = (o + 0.5) * n_in / n_out - 0.5``, clamped below at 0, between
    ``floor(src)`` and the next cell (clamped at the last).

    Parameters
    ----------
    n_in, n_out : int
        Input and output lengths, positive.
    dtype : numpy dtype
        The matrix's dtype.

    Returns
    -------
    numpy.ndarray
        ``(n_out, n_in)``; each row sums to 1.

    Raises
    ------
    ValueError
        If a size is not positive.

    Examples
    --------
    >>> from cnnfast.nn.resample import linear_resize_matrix
    >>> linear_resize_matrix(2, 4)
    array([[1.  , 0.  ],
           [0.75, 0.25],
           [0.25, 0.75],
           [0.  , 1.  ]])
    """
    if n_in < 1 or n_out < 1:
        raise ValueError(f"sizes must be positive, got n_in={n_in}, n_out={n_out}")
    src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = src - i0
    m = np.zeros((n_out, n_in), np.float64)
    rows = np.arange(n_out)
    np.add.at(m, (rows, i0), 1.0 - lam)
    np.add.at(m, (rows, i1), lam)
    return m.astype(dtype)


def bilinear_matrix(n_in: int, scale: int, dtype: Any = np.float64) -> np.ndarray:
    """:func:`linear_resize_matrix` for an integer upscaling factor: torch computes
    the source as ``(o + 0.5) / scale - 0.5`` then, exactly what this gives."""
    return linear_resize_matrix(n_in, n_in * scale, dtype)


def resize_bilinear(x: Array, size: Sequence[int]) -> Array:
    """Resize the last two axes of ``x`` (numpy or cupy) to ``size = (h, w)``,
    bilinear, ``align_corners=False`` (torch's ``interpolate`` with ``size=``;
    no antialiasing when shrinking).

    Parameters
    ----------
    x : array
        ``(..., H, W)``; integer inputs are computed in float64.
    size : sequence of int
        ``(h, w)``.

    Returns
    -------
    array
        ``(..., h, w)``.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnfast.nn.resample import resize_bilinear
    >>> resize_bilinear(np.ones((1, 1, 4, 4), np.float32), (2, 6)).shape
    (1, 1, 2, 6)
    """
    xp = array_module(x)
    dtype = x.dtype if x.dtype.kind == "f" else np.float64
    ah = xp.asarray(linear_resize_matrix(x.shape[-2], int(size[0]), dtype))
    aw = xp.asarray(linear_resize_matrix(x.shape[-1], int(size[1]), dtype))
    return ah @ x.astype(dtype, copy=False) @ aw.T


@register_layer
class Upsample(Layer):
    """Upsampling by an integer ``scale_factor`` (one int, or one per spatial dim).

    * ``mode="nearest"``: every cell repeated ``scale`` times along each spatial dim
      (any rank; torch's ``interpolate(mode="nearest")`` for integer factors);
      backward sums each block of the gradient.
    * ``mode="bilinear"``: 2-D only, ``align_corners=False`` (torch's default). It is
      separable, ``y = A_h @ x @ A_w^T`` with the interpolation matrices of
      :func:`bilinear_matrix`, so the backward is exactly ``A_h^T @ gy @ A_w``
      (matrix products: fast at the small sizes these models use).

    Parameters
    ----------
    scale_factor : int or sequence of int
        Positive.
    mode : str
        ``'nearest'`` or ``'bilinear'``.
    name : str, optional
        The layer's name.

    Raises
    ------
    ValueError
        For an unknown ``mode`` or a non-positive ``scale_factor``.
    NotImplementedError
        (``build``/``forward``) For ``'bilinear'`` on other than 2 spatial dims.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnfast import nn
    >>> nn.Upsample(2).forward(np.array([[[1.0, 2.0]]]))
    array([[[1., 1., 2., 2.]]])
    """

    MODES = ("nearest", "bilinear")

    def __init__(self, scale_factor: Union[int, Sequence[int]] = 2, mode: str = "nearest",
                 name: Optional[str] = None) -> None:
        super().__init__(name)
        if mode not in self.MODES:
            raise ValueError(f"mode={mode!r}: expected one of {', '.join(self.MODES)}")
        _scales(scale_factor, 1 if not isinstance(scale_factor, (tuple, list))
                else len(scale_factor))
        self.scale_factor: Any = scale_factor  # an int or one int per spatial dim
        self.mode = mode
        self._mats: Dict[Tuple[Any, ...], Tuple[Array, Array]] = {}

    def _check(self, input_shape: ShapeLike) -> Tuple[int, ...]:
        rank = len(input_shape) - 1
        if rank < 1:
            raise ValueError(f"{self.name or 'Upsample'} expects per-sample input "
                             f"(C, *spatial), got {tuple(input_shape)}")
        if self.mode == "bilinear" and rank != 2:
            raise NotImplementedError(f"{self.name or 'Upsample'}: bilinear mode is 2-D "
                                      f"only, got {rank} spatial dims (use 'nearest')")
        return _scales(self.scale_factor, rank)

    def build(self, input_shape: ShapeLike, rng: np.random.Generator, dtype: Any) -> None:
        self._check(input_shape)
        super().build(input_shape, rng, dtype)

    def output_shape(self, input_shape: ShapeLike) -> Shape:
        scales = self._check(input_shape)
        return (input_shape[0],) + tuple(n * s for n, s in zip(input_shape[1:], scales))

    def _matrices(self, h: int, w: int, xp: Any, dtype: Any) -> Tuple[Array, Array]:
        sh, sw = _scales(self.scale_factor, 2)
        key = (h, w, sh, sw, xp.__name__, np.dtype(dtype).str)
        if key not in self._mats:
            self._mats[key] = (xp.asarray(bilinear_matrix(h, sh, dtype)),
                               xp.asarray(bilinear_matrix(w, sw, dtype)))
        return self._mats[key]

    def forward(self, x: Array, training: bool = False) -> Array:
        scales = self._check(x.shape[1:])
        xp = array_module(x)
        if training:
            self._cache = tuple(x.shape)
        if self.mode == "nearest":
            # (N, C, a, b) -> (N, C, a, 1, b, 1) broadcast to (N, C, a, s, b, t).
            expanded = x.reshape(x.shape[:2] + sum(((n, 1) for n in x.shape[2:]), ()))
            target = x.shape[:2] + sum(((n, s) for n, s in zip(x.shape[2:], scales)), ())
            out = x.shape[:2] + tuple(n * s for n, s in zip(x.shape[2:], scales))
            return xp.ascontiguousarray(xp.broadcast_to(expanded, target)).reshape(out)
        ah, aw = self._matrices(x.shape[2], x.shape[3], xp, x.dtype)
        return xp.ascontiguousarray(ah @ x @ aw.T)

    def backward(self, grad: Array, need_input_grad: bool = True) -> Optional[Array]:
        x_shape = self._need_cache()
        if not need_input_grad:
            return None
        xp = array_module(grad)
        scales = _scales(self.scale_factor, len(x_shape) - 2)
        if self.mode == "nearest":
            split = grad.shape[:2] + sum(((n, s) for n, s in zip(x_shape[2:], scales)), ())
            axes = tuple(3 + 2 * i for i in range(len(scales)))
            return xp.ascontiguousarray(grad.reshape(split).sum(axis=axes))
        ah, aw = self._matrices(x_shape[2], x_shape[3], xp, grad.dtype)
        return xp.ascontiguousarray(ah.T @ grad @ aw)

    def config(self) -> Dict[str, Any]:
        sf = self.scale_factor
        return {"scale_factor": list(sf) if isinstance(sf, (tuple, list)) else int(sf),
                "mode": self.mode}


# ----------------------------------------------------------------------------- blocks


def _assign_names(layers: List[Layer]) -> None:
    """Give unnamed layers ``Sequential``'s default names, unique in ``layers``."""
    used = {layer.name for layer in layers if layer.name is not None}
    counts: Dict[str, int] = {}
    for layer in layers:
        if layer.name is not None:
            continue
        base = layer.default_name()
        i = counts.get(base, 0)
        candidate = base if i == 0 else f"{base}_{i}"
        while candidate in used:
            i += 1
            candidate = f"{base}_{i}"
        counts[base] = i + 1
        used.add(candidate)
        layer.name = candidate
    names = [cast(str, layer.name) for layer in layers]  # every layer is named now
    dotted = [n for n in names if "." in n]
    if dotted:  # "." separates the levels of the nested parameter keys
        raise ValueError(f"inner layer names must not contain '.': {dotted}")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"inner layer names must be unique; repeated: {dupes}")


class _NestedView(MutableMapping[str, Any]):
    """``{"<inner layer>.<key>": array}`` over one dict attribute (``params``,
    ``grads`` or ``buffers``) of each inner layer, read and written through."""

    def __init__(self, block: "_Block", attr: str):
        self._block = block
        self._attr = attr

    def _locate(self, key: str) -> Tuple[Dict[str, Any], str]:
        name, dot, sub = key.partition(".")
        if dot:
            for layer in self._block.layers:
                if layer.name == name:
                    d = getattr(layer, self._attr)
                    if sub in d:
                        return d, sub
        raise KeyError(key)

    def __getitem__(self, key: str) -> Any:
        d, sub = self._locate(key)
        return d[sub]

    def __setitem__(self, key: str, value: Any) -> None:
        d, sub = self._locate(key)  # new keys cannot be invented from outside
        d[sub] = value

    def __delitem__(self, key: str) -> None:
        d, sub = self._locate(key)
        del d[sub]

    def __iter__(self) -> Iterator[str]:
        for layer in self._block.layers:
            for k in list(getattr(layer, self._attr)):
                yield f"{layer.name}.{k}"

    def __len__(self) -> int:
        return sum(len(getattr(layer, self._attr)) for layer in self._block.layers)

    def __repr__(self) -> str:
        return f"{{{', '.join(f'{k!r}: ...' for k in self)}}}"


class _Block(Layer):
    """A layer holding a chain of layers (``layers``, built and run in order).

    ``params``, ``buffers`` and ``grads`` are live views of the inner layers' dicts
    (see the module docstring); ``trainable`` and ``backend`` set on the block are
    passed to every inner layer. ``layers`` accepts Layer objects or their
    ``full_config()`` dicts (how a checkpoint rebuilds a block)."""

    def __init__(self, layers: Iterable[Union[Layer, Dict[str, Any]]],
                 name: Optional[str] = None) -> None:
        self.layers: List[Layer] = []
        for entry in layers:
            if isinstance(entry, dict):
                entry = layer_from_config(entry)
            if not isinstance(entry, Layer):
                raise TypeError(f"{entry!r} is not a cnnfast.nn Layer")
            self.layers.append(entry)
        if not self.layers:
            raise ValueError(f"{type(self).__name__} needs at least one inner layer")
        super().__init__(name)
        _assign_names(self.layers)
        # Live views, not dicts (see the module docstring); used as mappings only.
        self.params = _NestedView(self, "params")  # type: ignore[assignment]
        self.buffers = _NestedView(self, "buffers")  # type: ignore[assignment]

    # trainable/backend: stored on the block and pushed down to the inner layers.
    @property
    def trainable(self):
        return self.__dict__.get("_trainable", True)

    @trainable.setter
    def trainable(self, value):
        self.__dict__["_trainable"] = bool(value)
        for layer in self.__dict__.get("layers", ()):
            layer.trainable = bool(value)

    @property
    def backend(self):
        return self.__dict__.get("_backend")

    @backend.setter
    def backend(self, value):
        self.__dict__["_backend"] = value
        for layer in self.__dict__.get("layers", ()):
            layer.backend = value

    @property
    def grads(self):
        return _NestedView(self, "grads")

    @grads.setter
    def grads(self, value):
        # The optimizers clear a layer's gradients with ``layer.grads = {}``.
        if value:
            raise ValueError("a block's gradients live in its inner layers; only "
                             "clearing (grads = {}) is supported")
        for layer in self.__dict__.get("layers", ()):
            layer.grads = {}

    @property
    def _cache(self):
        return self.__dict__.get("_block_cache")

    @_cache.setter
    def _cache(self, value):
        # Sequential frees a skipped layer's activations with ``layer._cache = None``:
        # free the inner layers' too.
        self.__dict__["_block_cache"] = value
        if value is None:
            for layer in self.__dict__.get("layers", ()):
                layer._cache = None

    def _need_cache(self):
        # The block's own cache only: the inner caches are consumed by the inner
        # backward passes.
        cache = self.__dict__.get("_block_cache")
        if cache is None:
            raise RuntimeError(f"{self.name or type(self).__name__}.backward called "
                               f"without a forward(x, training=True) before it")
        self.__dict__["_block_cache"] = None
        return cache

    def inner_output_shape(self, input_shape: ShapeLike) -> Shape:
        """Per-sample output shape of the inner chain."""
        shape = tuple(input_shape)
        for layer in self.layers:
            shape = tuple(layer.output_shape(shape))
        return shape

    def build(self, input_shape: ShapeLike, rng: np.random.Generator, dtype: Any) -> None:
        shape = tuple(int(v) for v in input_shape)
        for layer in self.layers:
            layer.build(shape, rng, dtype)
            if hasattr(layer, "rng"):
                layer.rng = rng  # Dropout: the model's generator, as Sequential does
            shape = tuple(layer.output_shape(shape))
        self._check_shapes(tuple(input_shape), shape)
        super().build(input_shape, rng, dtype)

    def _check_shapes(self, input_shape: Shape, inner_shape: Shape) -> None:
        pass

    def _inner_shapes(self, input_shape: ShapeLike, kind: str) -> Dict[str, Shape]:
        shapes, shape = {}, tuple(input_shape)
        for layer in self.layers:
            inner = getattr(layer, kind)(shape)
            shapes.update({f"{layer.name}.{k}": tuple(s) for k, s in inner.items()})
            shape = tuple(layer.output_shape(shape))
        self._check_shapes(tuple(input_shape), shape)
        return shapes

    def param_shapes(self, input_shape: ShapeLike) -> Dict[str, Shape]:
        return self._inner_shapes(input_shape, "param_shapes")

    def buffer_shapes(self, input_shape: ShapeLike) -> Dict[str, Shape]:
        return self._inner_shapes(input_shape, "buffer_shapes")

    def to(self, xp: Any) -> "_Block":
        for layer in self.layers:
            layer.to(xp)
        self._cache = None
        return self

    def zero_grads(self) -> None:
        self.grads = {}

    def _inner_forward(self, x: Array, training: bool) -> Array:
        for layer in self.layers:
            x = layer.forward(x, training)
        return x

    def _inner_backward(self, grad: Array, need_input_grad: bool) -> Optional[Array]:
        """Back through the inner chain; as Sequential, layers before the first one
        with parameters to update are only asked for an input gradient when the
        block's own input gradient is needed."""
        first = 0
        if not need_input_grad:
            first = next((i for i, layer in enumerate(self.layers)  # type: ignore[assignment]
                          if layer.needs_param_grads), None)  # None: handled just below
            if first is None:
                for layer in self.layers:
                    layer._cache = None
                return None
        for i in range(len(self.layers) - 1, first - 1, -1):
            grad = self.layers[i].backward(grad, need_input_grad=need_input_grad or i > first)
        for layer in self.layers[:first]:
            layer._cache = None
        return grad if need_input_grad else None

    def config(self) -> Dict[str, Any]:
        return {"layers": [layer.full_config() for layer in self.layers]}

    def summary_lines(self, indent: str = "  ") -> List[str]:
        """The inner layers, one per line, indented (nested blocks recursively)."""
        lines: List[str] = []
        shape: Optional[Tuple[int, ...]] = self.input_shape
        for layer in self.layers:
            shape = tuple(layer.output_shape(shape)) if shape is not None else None
            lines.append(f"{indent}{layer.name} ({type(layer).__name__}) -> {shape} "
                         f"[{layer.param_count() + layer.buffer_count():,}]")
            if isinstance(layer, _Block):
                lines += layer.summary_lines(indent + "  ")
        return lines

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.layers!r})"


@register_layer
class SkipConcat(_Block):
    """``concat([x, inner(x)], axis=1)``: a U-Net skip connection. The inner chain
    must keep the spatial size (e.g. pool, convolutions, then upsample back).
    Backward splits the gradient by channels: the first ``C`` go straight to the
    input, the rest back through the inner chain, and the two are added.

    Parameters
    ----------
    layers : iterable of Layer or dict
        The inner chain (layers, or their ``full_config()`` dicts).
    name : str, optional
        The block's name.

    Raises
    ------
    TypeError
        If an entry is not a layer.
    ValueError
        If ``layers`` is empty, inner names repeat or contain ``'.'``, or (``build``)
        the inner chain changes the spatial size.

    Examples
    --------
    >>> from cnnfast import nn
    >>> skip = nn.SkipConcat([nn.Conv2d(3, 3, padding=1), nn.ReLU()])
    >>> skip.output_shape((2, 8, 8)), skip.param_shapes((2, 8, 8))["conv2d.weight"]
    ((5, 8, 8), (3, 2, 3, 3))
    """

    @classmethod
    def default_name(cls) -> str:
        return "skip"

    def _check_shapes(self, input_shape, inner_shape):
        if inner_shape[1:] != input_shape[1:]:
            raise ValueError(f"{self.name or 'SkipConcat'}: the inner layers map "
                             f"{input_shape} to {inner_shape}; the spatial size must "
                             f"be kept to concatenate")

    def output_shape(self, input_shape: ShapeLike) -> Shape:
        inner = self.inner_output_shape(input_shape)
        self._check_shapes(tuple(input_shape), inner)
        return (input_shape[0] + inner[0],) + tuple(input_shape[1:])

    def forward(self, x: Array, training: bool = False) -> Array:
        xp = array_module(x)
        y = self._inner_forward(x, training)
        if training:
            self._cache = x.shape[1]
        return xp.concatenate([x, y], axis=1)

    def backward(self, grad: Array, need_input_grad: bool = True) -> Optional[Array]:
        c = self._need_cache()
        g_inner = self._inner_backward(grad[:, c:], need_input_grad)
        if not need_input_grad:
            return None
        return grad[:, :c] + g_inner


@register_layer
class Residual(_Block):
    """``x + inner(x)``: the inner chain must keep the shape.

    Parameters and errors as ``SkipConcat`` (the inner chain must keep the whole
    shape).

    Examples
    --------
    >>> from cnnfast import nn
    >>> nn.Residual([nn.Conv2d(2, 3, padding=1)]).output_shape((2, 8, 8))
    (2, 8, 8)
    """

    def _check_shapes(self, input_shape, inner_shape):
        if inner_shape != input_shape:
            raise ValueError(f"{self.name or 'Residual'}: the inner layers map "
                             f"{input_shape} to {inner_shape}; a residual needs the "
                             f"same shape")

    def output_shape(self, input_shape: ShapeLike) -> Shape:
        inner = self.inner_output_shape(input_shape)
        self._check_shapes(tuple(input_shape), inner)
        return tuple(input_shape)

    def forward(self, x: Array, training: bool = False) -> Array:
        y = self._inner_forward(x, training)
        if training:
            self._cache = True
        return x + y

    def backward(self, grad: Array, need_input_grad: bool = True) -> Optional[Array]:
        self._need_cache()
        g_inner = self._inner_backward(grad, need_input_grad)
        if not need_input_grad:
            return None
        return grad + g_inner
