"""The checkpoint file format and its reader, which trusts nothing in the file.

Layout (all plain arrays; loading never needs pickle):

* ``__meta__``: a JSON string ``{"format": 1, "model": <Sequential.config()>,
  "optimizer": <Optimizer.config()> | null, "extra": {...}}``;
* ``param/<layer>.<name>``, ``buffer/<layer>.<name>``: weights and buffers;
* ``optim/<slot>/<layer>.<name>`` and ``optim/t``: the optimizer state.

Writing and rebuilding a model are in ``cnnfast.nn.checkpoint``; this module knows
no model, so ``Sequential.load_weights`` can use it without an import cycle.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from typing import TYPE_CHECKING, Any, Dict

import numpy as np

if TYPE_CHECKING:
    from .data import PathLike

FORMAT = 1


class CheckpointError(ValueError):
    """A file that is not a valid cnnfast checkpoint: not a zip of ``.npy`` arrays,
    corrupt, crafted, or weights that do not fit the stored model configuration."""


def read_arrays(path: PathLike) -> Dict[str, Any]:
    """Every array of a checkpoint by name (``__meta__`` decoded to a dict).

    The file is untrusted: no pickle, and nothing is allocated before it is known
    to fit in the file -- the arrays together may not declare more bytes than the
    file holds (cnnfast writes them uncompressed), and each ``.npy`` header's shape
    must fit in its member.

    Parameters
    ----------
    path : str or os.PathLike
        The checkpoint file.

    Returns
    -------
    dict
        ``{name: numpy.ndarray}`` in the layout of the module docstring, with
        ``"__meta__"`` the decoded metadata dict.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    CheckpointError
        If it is not a valid checkpoint (a ``ValueError``).

    Examples
    --------
    >>> import os, tempfile
    >>> from cnnfast import nn
    >>> model = nn.Sequential([nn.Flatten(), nn.Dense(2)], input_shape=(1, 2, 2), seed=0)
    >>> tmp = tempfile.TemporaryDirectory()
    >>> path = nn.save_checkpoint(os.path.join(tmp.name, "model.npz"), model)
    >>> arrays = nn.read_arrays(path)
    >>> sorted(arrays)
    ['__meta__', 'param/dense.bias', 'param/dense.weight']
    >>> arrays["__meta__"]["format"], arrays["param/dense.weight"].shape
    (1, (2, 4))
    >>> nn.read_arrays(os.path.join(tmp.name, "missing.npz"))
    Traceback (most recent call last):
    ...
    FileNotFoundError: checkpoint '.../missing.npz' does not exist
    >>> tmp.cleanup()
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    if os.path.isdir(path):
        raise CheckpointError(f"{path!r} is a folder, not a checkpoint file")
    try:
        size = os.path.getsize(path)
        with zipfile.ZipFile(path) as z:
            members = z.infolist()
            declared = sum(m.file_size for m in members)
            if declared > size:
                raise CheckpointError(
                    f"{path!r}: its arrays declare {declared:,} bytes in a file of "
                    f"{size:,} (compressed or crafted; cnnfast writes checkpoints "
                    f"uncompressed)")
            arrays: Dict[str, Any] = {}
            for m in members:
                if not m.filename.endswith(".npy"):
                    raise CheckpointError(f"{path!r}: unexpected member {m.filename!r} "
                                          f"(a checkpoint holds .npy arrays only)")
                arrays[m.filename[:-len(".npy")]] = _read_npy(z, m, path)
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError,
            NotImplementedError, RuntimeError) as exc:  # zip/npy format errors
        raise CheckpointError(f"{path!r} is not a readable cnnfast checkpoint: "
                              f"{type(exc).__name__}: {exc}") from exc
    if "__meta__" not in arrays:
        raise CheckpointError(f"{path!r} is not a cnnfast checkpoint (no __meta__ entry)")
    meta = arrays["__meta__"]
    try:
        if meta.dtype.kind != "U" or meta.shape != ():
            raise ValueError(f"a {meta.dtype} array of shape {meta.shape}, not a string")
        meta = json.loads(str(meta))
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path!r}: unreadable __meta__ entry ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise CheckpointError(f"{path!r}: checkpoint format {found} is not supported "
                              f"(expected {FORMAT})")
    arrays["__meta__"] = meta
    return arrays


def _read_npy(z: zipfile.ZipFile, member: zipfile.ZipInfo, path: str) -> np.ndarray:
    """One ``.npy`` member, its header checked before its data is allocated."""
    fmt = np.lib.format
    with z.open(member) as f:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = fmt.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = fmt.read_array_header_2_0(f)
        else:
            raise CheckpointError(f"{path!r}: {member.filename}: unsupported .npy "
                                  f"version {version}")
    if dtype.hasobject:
        raise CheckpointError(f"{path!r}: {member.filename} holds Python objects; "
                              f"checkpoints are plain arrays (pickle is never loaded)")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > member.file_size:
        raise CheckpointError(f"{path!r}: {member.filename} declares shape {shape} "
                              f"({nbytes:,} bytes) in a member of {member.file_size:,} "
                              f"bytes (truncated or crafted)")
    with z.open(member) as f:
        return fmt.read_array(f, allow_pickle=False)
