"""``Sequential``: a stack of layers with forward, backward, summary, freezing and
(de)serialisation of its configuration and weights."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable, Iterator, List, Optional, Tuple, Union, cast

import numpy as np

from .base import Layer, array_module, layer_from_config, to_device, to_numpy
from .checkpoint_file import read_arrays
from .fusion import plan


class _Buffers:
    """The result arrays a ``Sequential`` lends its convolution and pooling layers
    (through ``out=``) for results only the model itself reads, kept from one training
    step to the next: a fresh large array per call is returned to the OS by glibc when
    it is freed and page-faults again, every step.

    Lent only where no one else can still hold the previous result:

    * in a training forward, to every step but the last: a step's output is read by
      the next step and kept in the layers' caches for backward, and the next training
      forward replaces those caches anyway (a layer keeps its last forward's cache
      only, so a model called twice before its backward back-propagates the second
      call, buffers or not);
    * in backward, to every step: each input gradient it computes is consumed by the
      step before (the first step computes none).

    Never for the model's output (a result that views a buffer, through a layer that
    passes its input on, is copied before it is returned), never in an evaluation
    forward (one between a training forward and its backward must not overwrite the
    cached activations), never for parameter gradients (the optimizer and user code
    keep those). A layer asks with ``take`` and records its result with ``keep``: one
    array (or tuple) per layer and role, replaced when the call's signature (shapes,
    dtype, array type) changes."""

    def __init__(self) -> None:
        self._held: dict = {}

    def take(self, layer: Layer, role: str, signature: tuple) -> Any:
        """The array kept for ``layer``'s ``role`` result of this ``signature``, or
        None (the kernel allocates; ``keep`` then records its result)."""
        held = self._held.get((id(layer), role))
        return held[2] if held is not None and held[1] == signature else None

    def keep(self, layer: Layer, role: str, signature: tuple, result: Any) -> None:
        # The layer itself is held too, so that its id is not reused while kept.
        self._held[(id(layer), role)] = (layer, signature, result)

    def viewed_by(self, a: Any) -> bool:
        """Whether ``a`` may share memory with a kept array."""
        share = array_module(a).may_share_memory
        return any(share(a, b) for _, _, r in self._held.values()
                   for b in (r if isinstance(r, tuple) else (r,)) if b is not None)

    def clear(self) -> None:
        self._held.clear()


@contextlib.contextmanager
def _lending(step: Any, buffers: Optional["_Buffers"]) -> Iterator[None]:
    """``buffers`` lent to the layers of ``step`` that take them, for one call (None:
    nothing lent)."""
    if buffers is None:
        yield
        return
    takers = [layer for layer in step.layers if hasattr(type(layer), "_lent")]
    for layer in takers:
        layer._lent = buffers
    try:
        yield
    finally:
        for layer in takers:
            layer._lent = None


def _xp_for(device: str) -> Any:
    if device in ("cpu", "numpy"):
        return np
    if device in ("gpu", "cuda", "cupy"):
        import cupy

        return cupy
    raise ValueError(f"device={device!r}: expected 'cpu' or 'gpu'")


class Sequential:
    """Layers applied in order. ``input_shape`` is per sample, channels first
    (e.g. ``(1, 28, 28)``); given it, the model is built at once (parameters created
    from ``seed``), else call ``build(input_shape)``.

    ``fuse`` (default ``True``, also a settable attribute): run a convolution and the
    activation after it as one kernel call, and convolution -> ReLU -> max pooling as
    convolution -> max pooling -> ReLU (``cnnfast.nn.fusion``; ``fusion_plan()`` shows
    the groups). The results equal the unfused model's (bit for bit where the
    arithmetic is the same; the activations' arithmetic may differ by rounding where a
    backend's kernels compute them); layers, parameters, summaries and checkpoints are
    the same either way.

    In training, the convolution and pooling layers write their intermediate results
    (and the input gradients backward passes on) into arrays the model keeps from one
    step to the next, through ``out=`` (``_Buffers``): a fresh large array per step
    costs its page faults again every step. The model's output, the parameter
    gradients and evaluation calls stay fresh arrays, and the results are the same.

    >>> from cnnfast import nn
    >>> m = nn.Sequential([nn.Flatten(), nn.Dense(3)], input_shape=(1, 2, 2), seed=0)
    >>> m.output_shape, m.param_count()
    ((3,), 15)
    """

    def __init__(self, layers: Iterable[Layer], input_shape: Optional[Iterable[int]] = None,
                 *, dtype: Any = "float32",
                 seed: Optional[int] = None, name: str = "sequential",
                 backend: Optional[str] = None, fuse: bool = True):
        self.layers: List[Layer] = list(layers)
        for layer in self.layers:
            if not isinstance(layer, Layer):
                raise TypeError(f"{layer!r} is not a cnnfast.nn Layer")
        self.name = name
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype={dtype!r}: expected float32 or float64")
        self.seed = seed
        self.rng = np.random.default_rng(seed)  # initial weights, then dropout masks
        self.input_shape: Optional[Tuple[int, ...]] = None
        self.output_shape: Optional[Tuple[int, ...]] = None
        self.xp: Any = np
        self.fuse = fuse
        # the plan the last training forward ran, for backward
        self._steps: Optional[list] = None
        # result arrays reused between training steps (None: allocate every call)
        self._buffers: Optional[_Buffers] = _Buffers()
        self._assign_names()
        self.set_backend(backend)
        if input_shape is not None:
            self.build(input_shape)

    def _assign_names(self) -> None:
        seen: dict[str, int] = {}
        used = {layer.name for layer in self.layers if layer.name is not None}
        for layer in self.layers:
            if layer.name is not None:
                continue
            base = layer.default_name()
            i = seen.get(base, 0)
            candidate = base if i == 0 else f"{base}_{i}"
            while candidate in used:
                i += 1
                candidate = f"{base}_{i}"
            seen[base] = i + 1
            used.add(candidate)
            layer.name = candidate
        names = [cast(str, layer.name) for layer in self.layers]  # all assigned above
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"layer names must be unique; repeated: {sorted(dupes)}")

    # -- building -------------------------------------------------------------------
    def build(self, input_shape: Iterable[int]) -> "Sequential":
        """Create every layer's parameters for samples of ``input_shape`` (per sample,
        channels first), from the model's ``seed``; returns the model."""
        shape = tuple(int(v) for v in input_shape)
        self.input_shape = shape
        for layer in self.layers:
            layer.build(shape, self.rng, self.dtype)
            if hasattr(layer, "rng"):
                layer.rng = self.rng
            shape = tuple(layer.output_shape(shape))
        self.output_shape = shape
        return self

    def state_shapes(self, input_shape: Optional[Iterable[int]] = None) -> dict:
        """``{"param/<layer>.<name>": shape, "buffer/...": shape}``: the keys and
        shapes of ``state_dict()`` once built for ``input_shape`` (default: the
        model's), computed without allocating anything."""
        shape = tuple(int(v) for v in (input_shape if input_shape is not None
                                       else self.input_shape or ()))
        if not shape:
            raise ValueError("state_shapes needs an input_shape")
        out = {}
        for layer in self.layers:
            for kind, shapes in (("param", layer.param_shapes(shape)),
                                 ("buffer", layer.buffer_shapes(shape))):
                out.update({f"{kind}/{layer.name}.{k}": tuple(int(n) for n in s)
                            for k, s in shapes.items()})
            shape = tuple(layer.output_shape(shape))
        return out

    @property
    def fuse(self) -> bool:
        """Whether ``forward`` runs the fused steps of ``fusion_plan()``."""
        return self._fuse

    @fuse.setter
    def fuse(self, value: bool) -> None:
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"fuse={value!r} must be a bool")
        self._fuse = bool(value)

    def fusion_plan(self) -> List[tuple]:
        """The layer names of each step ``forward`` runs, in order: a tuple of several
        names is a fused group (see ``fuse``)."""
        return [tuple(layer.name for layer in step.layers)
                for step in plan(self.layers, self.fuse)]

    def _check_built(self) -> None:
        if self.input_shape is None:
            raise RuntimeError("the model is not built: pass input_shape or call build()")

    def set_backend(self, backend: Optional[str]) -> "Sequential":
        """Kernel backend for every layer (``None``: the automatic choice)."""
        self.backend = backend
        for layer in self.layers:
            layer.backend = backend
        return self

    def to(self, device: str) -> "Sequential":
        """Move the weights to ``'cpu'`` (numpy) or ``'gpu'`` (cupy)."""
        self.xp = _xp_for(device)
        if self._buffers is not None:
            self._buffers.clear()
        for layer in self.layers:
            layer.to(self.xp)
        return self

    # -- computation ----------------------------------------------------------------
    def forward(self, x: Any, training: bool = False) -> Any:
        """The model's output for the batch ``x``; ``model(x)`` is the same.

        Parameters
        ----------
        x : array
            (N, *input_shape), the model's dtype, on the model's device (numpy for
            ``'cpu'``, cupy for ``'gpu'``).
        training : bool
            Training mode (dropout active, batch statistics; ``backward`` then
            follows this call).

        Returns
        -------
        array
            (N, *output_shape).

        Raises
        ------
        RuntimeError
            The model is not built.
        ValueError
            ``x`` of another sample shape.
        TypeError
            ``x`` of another dtype or array module.

        Examples
        --------
        >>> import numpy as np
        >>> from cnnfast import nn
        >>> m = nn.Sequential([nn.Flatten(), nn.Dense(3)], input_shape=(1, 2, 2), seed=0)
        >>> m.forward(np.ones((5, 1, 2, 2), np.float32)).shape
        (5, 3)
        """
        self._check_built()
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"input has shape {tuple(x.shape)}; the model expects "
                             f"(N, {', '.join(map(str, self.input_shape or ()))})")
        if x.dtype != self.dtype:
            raise TypeError(f"input dtype {x.dtype} != model dtype {self.dtype} "
                            f"(cast the batch explicitly)")
        if array_module(x) is not self.xp:
            raise TypeError(f"input is a {array_module(x).__name__} array but the model "
                            f"weights live in {self.xp.__name__} (use model.to(...))")
        steps = plan(self.layers, self.fuse)
        if training:
            self._steps = steps  # backward follows the plan this forward ran
        buffers = self._buffers if training else None
        if buffers is None:
            for step in steps:
                x = step.forward(x, training)
            return x
        last = len(steps) - 1
        for i, step in enumerate(steps):
            # the next step reads this output; the last step's is the model's
            with _lending(step, buffers if i < last else None):
                x = step.forward(x, training)
        return x.copy() if buffers.viewed_by(x) else x

    __call__ = forward

    def backward(self, grad: Any) -> None:
        """Back-propagate ``grad`` (d loss / d output); fills each trainable layer's
        ``grads``. Layers before the first trainable one are skipped, and that one
        computes no input gradient.

        Parameters
        ----------
        grad : array
            d loss / d output, the shape of the last ``forward(..., training=True)``
            call's output (as the losses of ``cnnfast.nn.losses`` return it).

        Examples
        --------
        >>> import numpy as np
        >>> from cnnfast import nn
        >>> m = nn.Sequential([nn.Flatten(), nn.Dense(3)], input_shape=(1, 2, 2), seed=0)
        >>> y = m.forward(np.ones((5, 1, 2, 2), np.float32), training=True)
        >>> loss, grad = nn.mse(y, np.zeros_like(y))
        >>> m.backward(grad)
        >>> sorted(m.get_layer("dense").grads)
        ['bias', 'weight']
        >>> nn.SGD(lr=0.1).step(m)  # updates the weights, clears the gradients
        """
        steps = self._steps if self._steps is not None else plan(self.layers, self.fuse)
        self._steps = None
        first = next((i for i, step in enumerate(steps) if step.needs_param_grads), None)
        if first is None:
            for step in steps:
                step.clear()
            return
        for i in range(len(steps) - 1, first - 1, -1):
            # Every input gradient computed here is consumed by the step before (or,
            # inside a fused step, by its next layer): the first step returns none.
            # (Should it ever return one to the caller, that step must not be lent.)
            with _lending(steps[i], self._buffers):
                grad = steps[i].backward(grad, need_input_grad=i > first)
        for step in steps[:first]:
            step.clear()

    def predict(self, x: Any, batch_size: int = 256) -> Any:
        """Forward in evaluation mode, in batches of ``batch_size``; returns the
        stacked outputs (``None`` for an empty ``x``). ``ValueError`` for a
        ``batch_size`` below 1."""
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be >= 1")
        outs = [self.forward(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
        return self.xp.concatenate(outs) if outs else None

    # -- parameters -----------------------------------------------------------------
    def trainable_params(self) -> Iterator[Tuple[str, Layer, str]]:
        """``(key, layer, param_name)`` for every parameter the optimizer updates."""
        for layer in self.layers:
            if layer.trainable:
                for pname in layer.params:
                    yield f"{layer.name}.{pname}", layer, pname

    def param_count(self, trainable: Optional[bool] = None) -> int:
        """Parameters (plus buffers, as non-trainable, like Keras)."""
        total = 0
        for layer in self.layers:
            if trainable in (None, layer.trainable):
                total += layer.param_count()
            if trainable in (None, False):
                total += layer.buffer_count()
        return total

    def get_layer(self, name: str) -> Layer:
        """The layer named ``name`` (``KeyError`` if none)."""
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no layer named {name!r}; layers: {[l.name for l in self.layers]}")

    def freeze(self, layers: Union[None, int, str, Iterable[str]] = None) -> "Sequential":
        """Freeze layers: ``None`` all; an int ``k`` the first ``k`` (negative: all but
        the last ``-k``, as slicing); or an iterable of layer names."""
        for layer in self._select(layers):
            layer.trainable = False
        return self

    def unfreeze(self, layers: Union[None, int, str, Iterable[str]] = None) -> "Sequential":
        """Make layers trainable again; ``layers`` as in ``freeze``."""
        for layer in self._select(layers):
            layer.trainable = True
        return self

    def _select(self, which: Union[None, int, str, Iterable[str]]) -> List[Layer]:
        if which is None:
            return list(self.layers)
        if isinstance(which, (int, np.integer)) and not isinstance(which, bool):
            return self.layers[:which]
        if isinstance(which, str):
            which = [which]
        # a bool is no layer selection: iterating it raises TypeError
        return [self.get_layer(n) for n in which]  # type: ignore[union-attr]

    def state_dict(self) -> dict:
        """Copies of the weights and buffers as numpy arrays:
        ``{"param/<layer>.<name>": ..., "buffer/<layer>.<name>": ...}``."""
        out = {}
        for layer in self.layers:
            for k, v in layer.params.items():
                out[f"param/{layer.name}.{k}"] = np.array(to_numpy(v))
            for k, v in layer.buffers.items():
                out[f"buffer/{layer.name}.{k}"] = np.array(to_numpy(v))
        return out

    def load_state_dict(self, state: dict, strict: bool = True) -> List[str]:
        """Copy weights from ``state`` (as from ``state_dict``). With
        ``strict=False``, entries missing from ``state`` or of another shape are left
        as they are; returns the keys that were loaded."""
        self._check_built()
        loaded: List[str] = []
        problems: List[str] = []
        known: set[str] = set()
        for layer in self.layers:
            groups: Tuple[Tuple[str, dict[str, Any]], ...] = (("param", layer.params),
                                                              ("buffer", layer.buffers))
            for kind, d in groups:
                for k in list(d):
                    key = f"{kind}/{layer.name}.{k}"
                    known.add(key)
                    if key not in state:
                        problems.append(f"{key} missing")
                        continue
                    value = np.asarray(state[key])
                    if value.shape != tuple(d[k].shape):
                        problems.append(f"{key} has shape {value.shape}, the model "
                                        f"expects {tuple(d[k].shape)}")
                        continue
                    d[k] = to_device(value.astype(self.dtype), self.xp)
                    loaded.append(key)
        problems += [f"{k} unexpected" for k in state
                     if k.startswith(("param/", "buffer/")) and k not in known]
        if strict and problems:
            raise ValueError("weights do not match the model: " + "; ".join(problems))
        return loaded

    def load_weights(self, path: Any, strict: bool = True) -> List[str]:
        """Load weights from a checkpoint file (see ``cnnfast.nn.checkpoint``)."""
        return self.load_state_dict(read_arrays(path), strict=strict)

    # -- configuration --------------------------------------------------------------
    def config(self) -> dict:
        """The model's configuration (JSON-ready; ``from_config`` rebuilds it)."""
        return {"name": self.name, "input_shape": list(self.input_shape or ()),
                "dtype": self.dtype.name, "layers": [l.full_config() for l in self.layers],
                "trainable": [l.trainable for l in self.layers]}

    @classmethod
    def from_config(cls, cfg: dict, seed: Optional[int] = None,
                    backend: Optional[str] = None,
                    build: bool = True, fuse: bool = True) -> "Sequential":
        """The model ``config()`` describes; ``build=False`` leaves it unbuilt
        (nothing allocated: ``state_shapes`` can check a checkpoint first). ``fuse``
        is not part of the configuration: it does not change what the model computes."""
        layers = [layer_from_config(entry) for entry in cfg["layers"]]
        model = cls(layers, input_shape=(cfg.get("input_shape") or None) if build else None,
                    dtype=cfg["dtype"], seed=seed, name=cfg.get("name", "sequential"),
                    backend=backend, fuse=fuse)
        for layer, flag in zip(model.layers, cfg.get("trainable", [])):
            layer.trainable = bool(flag)
        return model

    # -- summary --------------------------------------------------------------------
    def summary_rows(self) -> List[tuple]:
        """``(name, type, output shape with None batch, parameter count)`` per layer."""
        self._check_built()
        rows, shape = [], self.input_shape
        for layer in self.layers:
            shape = tuple(layer.output_shape(shape))
            rows.append((layer.name, type(layer).__name__, (None,) + shape,
                         layer.param_count() + layer.buffer_count()))
        return rows

    def summary(self, print_fn: Optional[Callable[[str], Any]] = print) -> str:
        """A Keras-like table: layer, output shape, parameter count, with totals."""
        rows = self.summary_rows()
        cells = [(f"{n} ({t})" + ("" if self.get_layer(n).trainable or not
                                   self.get_layer(n).params else " [frozen]"),
                  str(s).replace("None,)", "None)"), f"{c:,}") for n, t, s, c in rows]
        w0 = max([len("Layer (type)")] + [len(c[0]) for c in cells]) + 2
        w1 = max([len("Output Shape")] + [len(c[1]) for c in cells]) + 2
        w2 = max([len("Param #")] + [len(c[2]) for c in cells])
        width = w0 + w1 + w2 + 1
        lines = [f'Model: "{self.name}"', "_" * width,
                 f" {'Layer (type)':<{w0}}{'Output Shape':<{w1}}{'Param #':>{w2}}",
                 "=" * width]
        for i, (a, b, c) in enumerate(cells):
            lines.append(f" {a:<{w0}}{b:<{w1}}{c:>{w2}}")
            lines.append(("_" if i < len(cells) - 1 else "=") * width)
        if not cells:
            lines.append("=" * width)
        total, trainable = self.param_count(), self.param_count(trainable=True)
        lines += [f"Total params: {total:,}", f"Trainable params: {trainable:,}",
                  f"Non-trainable params: {total - trainable:,}", "_" * width]
        text = "\n".join(lines)
        if print_fn is not None:
            print_fn(text)
        return text

    def __repr__(self) -> str:
        return f"Sequential({self.layers!r})"
