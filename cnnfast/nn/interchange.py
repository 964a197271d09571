"""A model's weights under torch's ``state_dict`` names, in files other tools read:
safetensors (written and read here: no dependency, no pickle) and torch's ``.pt`` /
``.pth`` (through torch: ``torch.save``, ``torch.load(weights_only=True)``).

Names: layer ``i`` of a ``Sequential`` is module ``i`` of a ``torch.nn.Sequential``
holding the same layers in the same order (activations, pooling and flatten count, as
torch counts them): ``"0.weight"``, ``"0.bias"``, ``"4.running_mean"``; inner layer
``j`` of a block (``Residual``, ``SkipConcat``) is ``"i.j.weight"``. The layouts are
torch's already (convolution ``(out, in/groups, *k)``, transposed ``(in,
out/groups, *k)``, linear ``(out, in)``), so nothing is transposed. BatchNorm's
``num_batches_tracked`` is written as 0 (torch reads it only with ``momentum=None``)
and ignored when read.

    >>> from cnnfast import nn
    >>> m = nn.Sequential([nn.Flatten(), nn.Linear(3)], input_shape=(4,), seed=0)
    >>> sorted(nn.torch_state_dict(m))
    ['1.bias', '1.weight']
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List

import numpy as np

from ..atomic_file import write_atomic
from .data import PathLike

if TYPE_CHECKING:  # for the annotations only
    from .model import Sequential

# safetensors' dtype names for the arrays a model holds
_DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "I64": np.int64}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}
# A header larger than this is not a weights file (safetensors itself refuses > 100 MB).
MAX_HEADER_BYTES = 100_000_000


def _key_map(model: Sequential) -> Dict[str, str]:
    """torch name -> ``model.state_dict()`` key, for every parameter and buffer."""
    out = {}
    for i, layer in enumerate(model.layers):
        inner = {sub.name: j for j, sub in enumerate(getattr(layer, "layers", ()))}
        for kind, arrays in (("param", layer.params), ("buffer", layer.buffers)):
            for name in arrays:
                head, _, tail = name.rpartition(".")
                torch_name = f"{i}.{inner[head]}.{tail}" if head in inner else f"{i}.{name}"
                out[torch_name] = f"{kind}/{layer.name}.{name}"
    return out


def torch_state_dict(model: Sequential) -> Dict[str, np.ndarray]:
    """The model's weights and buffers as numpy arrays under torch's names."""
    state = model.state_dict()
    out = {t: state[k] for t, k in _key_map(model).items()}
    for name in list(out):
        if name.endswith(".running_mean"):
            out[name[:-len("running_mean")] + "num_batches_tracked"] = np.array(0, np.int64)
    return out


def load_torch_state_dict(model: Sequential, state: Dict[str, Any],
                          strict: bool = True) -> List[str]:
    """Copy weights given under torch's names (numpy arrays or CPU tensors) into
    ``model``; ``strict`` as ``Sequential.load_state_dict``. Returns the torch names
    loaded."""
    names = _key_map(model)
    ours, unexpected = {}, []
    for name, value in state.items():
        if name.endswith(".num_batches_tracked"):
            continue
        if name not in names:
            unexpected.append(name)
            continue
        ours[names[name]] = np.asarray(value.detach().cpu().numpy()
                                       if hasattr(value, "detach") else value)
    if strict and unexpected:
        raise ValueError(f"weights do not match the model: {', '.join(unexpected)} "
                         f"unexpected (the model has {', '.join(names) or 'no weights'})")
    loaded = set(model.load_state_dict(ours, strict=strict))
    return [t for t, k in names.items() if k in loaded]


def save_torch_weights(model: Sequential, path: PathLike) -> None:
    """Write ``torch_state_dict(model)`` to ``path``: safetensors for a
    ``.safetensors`` suffix, else torch's format (``.pt``/``.pth``; needs torch).
    Written atomically (a temporary file, then renamed)."""
    path = Path(path)
    state = torch_state_dict(model)
    if path.suffix == ".safetensors":
        write_atomic(path, lambda f: write_safetensors(f, state), prefix=path.name + ".")
        return
    import torch

    tensors = {k: torch.from_numpy(_c_order(v)) for k, v in state.items()}
    write_atomic(path, lambda f: torch.save(tensors, f), prefix=path.name + ".")


def load_torch_weights(model: Sequential, path: PathLike, strict: bool = True) -> List[str]:
    """Read a file ``save_torch_weights`` (or torch, or the safetensors library) wrote
    and load it into ``model`` (``load_torch_state_dict``)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_torch_state_dict(model, read_safetensors(path), strict)
    import torch

    return load_torch_state_dict(model, torch.load(path, map_location="cpu",
                                                   weights_only=True), strict)


def _c_order(value) -> np.ndarray:
    """``value`` as a C-contiguous array of its own shape (``np.ascontiguousarray``
    would make a 0-d array 1-d)."""
    a = np.asarray(value)
    return a if a.flags.c_contiguous else a.copy(order="C")


# ----------------------------------------------------------------------------- safetensors


def write_safetensors(f, arrays: dict) -> None:
    """The safetensors layout: the header's length (u64 little-endian), the JSON
    header (name -> dtype, shape, data offsets), then the arrays' bytes, little-endian,
    C order, in the header's order."""
    header, blobs, offset = {}, [], 0
    for name, value in arrays.items():
        a = _c_order(value)
        if a.dtype not in _NAMES:
            raise TypeError(f"{name} has dtype {a.dtype}; safetensors here takes "
                            f"{', '.join(str(np.dtype(t)) for t in _DTYPES.values())}")
        data = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": _NAMES[a.dtype], "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    f.write(struct.pack("<Q", len(text)))
    f.write(text)
    for data in blobs:
        f.write(data)


def read_safetensors(path) -> dict:
    """The arrays of a safetensors file, checked before anything is allocated: the
    header fits in the file and MAX_HEADER_BYTES, every entry has a known dtype, a
    shape that matches its byte range, and ranges inside the data that do not
    overlap. A ``ValueError`` naming the file otherwise."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > min(MAX_HEADER_BYTES, size - 8):
            raise ValueError(f"{path}: the header claims {n} bytes; the file has "
                             f"{size - 8} after the length (corrupt or not safetensors)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: the header is not JSON ({exc})") from None
        if not isinstance(header, dict):
            raise ValueError(f"{path}: the header is not a JSON object")
        header.pop("__metadata__", None)
        data_size, spans = size - 8 - n, []
        for name, entry in header.items():
            spans.append((*_check_entry(path, name, entry, data_size), name))
        spans.sort()
        for (_, end, a), (begin, _, b) in zip(spans, spans[1:]):
            if begin < end:
                raise ValueError(f"{path}: the data of {a!r} and {b!r} overlap")
        out = {}
        for begin, end, name in spans:
            entry = header[name]
            f.seek(8 + n + begin)
            dtype = np.dtype(_DTYPES[entry["dtype"]]).newbyteorder("<")
            out[name] = np.frombuffer(f.read(end - begin), dtype).reshape(
                entry["shape"]).astype(dtype.newbyteorder("="))
    return out


def _check_entry(path, name, entry, data_size):
    """(begin, end) of one header entry, after checking it."""
    ok = (isinstance(entry, dict) and entry.get("dtype") in _DTYPES
          and isinstance(entry.get("shape"), list)
          and all(isinstance(d, int) and d >= 0 for d in entry["shape"])
          and isinstance(entry.get("data_offsets"), list) and len(entry["data_offsets"]) == 2
          and all(isinstance(o, int) for o in entry["data_offsets"]))
    if not ok:
        raise ValueError(f"{path}: entry {name!r} is malformed ({entry!r}); expected a "
                         f"dtype in {sorted(_DTYPES)}, a shape and two data offsets")
    begin, end = entry["data_offsets"]
    want = int(np.prod(entry["shape"], dtype=object)) * np.dtype(_DTYPES[entry["dtype"]]).itemsize
    if not 0 <= begin <= end <= data_size or end - begin != want:
        raise ValueError(f"{path}: entry {name!r} spans bytes [{begin}, {end}) of "
                         f"{data_size}, but its shape {entry['shape']} needs {want}")
    return begin, end
