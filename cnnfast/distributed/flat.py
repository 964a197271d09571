"""The flat gradient buffer and the model-state collectives.

One allreduce per step carries every trainable gradient (``flatten_grads`` /
``unflatten_into``, laid out by ``grad_layout``) plus a few extra slots for the
step's statistics. ``broadcast_parameters`` makes every rank start from root's
parameters and buffers; ``average_buffers`` gives every rank one set of BatchNorm
running statistics before evaluation and checkpoints.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import numpy as np

from .comm import Communicator

if TYPE_CHECKING:
    from ..nn.base import Array, Layer
    from ..nn.model import Sequential

#: ``[(layer, param_name, shape, offset, size)]``: see ``grad_layout``.
Layout = List[Tuple["Layer", str, Tuple[int, ...], int, int]]


def grad_layout(model: Sequential) -> Tuple[Layout, int]:
    """``[(layer, param_name, shape, offset, size)]`` of the parameters the optimizer
    updates, in ``model.trainable_params()`` order, and the total element count."""
    layout: Layout = []
    offset = 0
    for _key, layer, pname in model.trainable_params():
        shape = tuple(layer.params[pname].shape)
        size = int(np.prod(shape, dtype=np.int64))
        layout.append((layer, pname, shape, offset, size))
        offset += size
    return layout, offset


def flatten_grads(model: Sequential, out: Optional[Array] = None, extra: int = 0,
                  scale: Optional[float] = None) -> Array:
    """The gradients of the trainable parameters in one flat buffer (``model.xp``,
    ``model.dtype``), optionally times ``scale``, followed by ``extra`` free slots
    (the caller fills them: small values that ride along with the same allreduce).
    ``out`` (a buffer of the right length) is reused when given. A layer with no
    gradient yet (``model.backward`` not called) is an error; ``scale=0`` writes
    zeros without reading any gradient (a rank with an empty slice)."""
    layout, total = grad_layout(model)
    xp, dtype = model.xp, model.dtype
    n = total + int(extra)
    if out is None:
        out = xp.empty(n, dtype)
    elif out.shape != (n,) or out.dtype != dtype:
        raise ValueError(f"out has shape {tuple(out.shape)} and dtype {out.dtype}; "
                         f"expected ({n},) {dtype}")
    if scale == 0:
        out[:total] = 0
        return out
    for layer, pname, shape, off, size in layout:
        g = layer.grads.get(pname)
        if g is None:
            raise RuntimeError(f"no gradient for {layer.name}.{pname}: call "
                               f"model.backward first")
        if tuple(g.shape) != shape:
            raise ValueError(f"gradient of {layer.name}.{pname} has shape "
                             f"{tuple(g.shape)}, the parameter {shape}")
        dst = out[off:off + size]
        if scale is None:
            dst[...] = g.reshape(-1)
        else:
            xp.multiply(g.reshape(-1), dtype.type(scale), out=dst)
    return out


def unflatten_into(model: Sequential, buffer: Array) -> None:
    """Point every trainable layer's ``grads`` at its slice of ``buffer`` (views: no
    copy; the optimizer consumes them before the buffer is reused)."""
    layout, total = grad_layout(model)
    if buffer.ndim != 1 or buffer.shape[0] < total:
        raise ValueError(f"buffer of shape {tuple(buffer.shape)} is too short for "
                         f"{total} gradient values")
    for layer, pname, shape, off, size in layout:
        layer.grads[pname] = buffer[off:off + size].reshape(shape)


def _state_arrays(model: Sequential) -> List[Tuple[Dict[str, Array], str]]:
    """Every parameter and buffer, trainable or not: ``[(dict, key)]``."""
    out: List[Tuple[Dict[str, Array], str]] = []
    for layer in model.layers:
        out += [(layer.params, k) for k in sorted(layer.params)]
        out += [(layer.buffers, k) for k in sorted(layer.buffers)]
    return out


def broadcast_parameters(model: Sequential, comm: Communicator, root: int = 0) -> None:
    """Copy root's parameters and buffers into every rank's model (one broadcast
    per dtype, in place)."""
    if comm.size == 1:
        return
    xp = model.xp
    groups: Dict[np.dtype[Any], List[Tuple[Dict[str, Array], str]]] = {}
    for d, k in _state_arrays(model):
        groups.setdefault(np.dtype(d[k].dtype), []).append((d, k))
    for dtype in sorted(groups, key=str):  # the same order on every rank
        items = groups[dtype]
        flat = xp.concatenate([d[k].reshape(-1) for d, k in items])
        comm.bcast(flat, root)
        off = 0
        for d, k in items:
            size = int(np.prod(d[k].shape, dtype=np.int64))
            d[k][...] = flat[off:off + size].reshape(d[k].shape)
            off += size


def average_buffers(model: Sequential, comm: Communicator) -> None:
    """Replace each floating buffer (BatchNorm running statistics) by its mean over
    the ranks, so evaluation and checkpoints see one set of statistics."""
    if comm.size == 1:
        return
    items = [(layer.buffers, k) for layer in model.layers for k in sorted(layer.buffers)
             if np.dtype(layer.buffers[k].dtype).kind == "f"]
    if not items:
        return
    xp = model.xp
    flat = xp.concatenate([d[k].reshape(-1).astype(np.float64) for d, k in items])
    comm.allreduce_mean(flat)
    off = 0
    for d, k in items:
        size = int(np.prod(d[k].shape, dtype=np.int64))
        d[k] = flat[off:off + size].reshape(d[k].shape).astype(d[k].dtype)
        off += size
