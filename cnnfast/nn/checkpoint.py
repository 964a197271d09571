"""Checkpoints: one ``.npz`` file holding the model configuration, its weights, the
optimizer state and whatever training metadata the caller adds (epoch, RNG states,
metrics), written atomically.

Layout (all plain arrays; loading never needs pickle):

* ``__meta__``: a JSON string ``{"format": 1, "model": <Sequential.config()>,
  "optimizer": <Optimizer.config()> | null, "extra": {...}}``;
* ``param/<layer>.<name>``, ``buffer/<layer>.<name>``: weights and buffers;
* ``optim/<slot>/<layer>.<name>`` and ``optim/t``: the optimizer state.
"""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np

FORMAT = 1


def save_checkpoint(path, model, optimizer=None, extra: dict = None) -> str:
    """Write ``model`` (+ ``optimizer`` and ``extra``, JSON-able) to ``path``: to a
    temporary file in the same directory first, then ``os.replace`` -- a crash
    never leaves a half-written checkpoint under ``path``."""
    path = os.fspath(path)
    meta = {"format": FORMAT, "model": model.config(),
            "optimizer": optimizer.config() if optimizer is not None else None,
            "extra": extra or {}}
    arrays = {"__meta__": np.array(json.dumps(meta))}
    arrays.update(model.state_dict())
    if optimizer is not None:
        for k, v in optimizer.state_dict().items():
            arrays[f"optim/{k}"] = np.asarray(v)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=directory)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; use the usual mode
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def _umask():
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


def read_arrays(path) -> dict:
    """Every array of a checkpoint by name (``__meta__`` decoded to a dict)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:  # zipfile/format errors: name the file
        raise ValueError(f"{path!r} is not a readable cnnfast checkpoint: {exc}") from exc
    if "__meta__" not in arrays:
        raise ValueError(f"{path!r} is not a cnnfast checkpoint (no __meta__ entry)")
    arrays["__meta__"] = json.loads(str(arrays["__meta__"]))
    if arrays["__meta__"].get("format") != FORMAT:
        raise ValueError(f"{path!r}: checkpoint format {arrays['__meta__'].get('format')} "
                         f"is not supported (expected {FORMAT})")
    return arrays


def load_checkpoint(path, backend=None, device="cpu"):
    """``(model, optimizer or None, extra)`` rebuilt from a checkpoint file."""
    from .model import Sequential
    from .optim import make_optimizer

    arrays = read_arrays(path)
    meta = arrays["__meta__"]
    model = Sequential.from_config(meta["model"], backend=backend)
    model.load_state_dict(arrays, strict=True)
    if device != "cpu":
        model.to(device)
    optimizer = None
    if meta.get("optimizer"):
        optimizer = make_optimizer(meta["optimizer"])
        optimizer.load_state_dict({k[len("optim/"):]: v for k, v in arrays.items()
                                   if k.startswith("optim/")}, model.xp)
    return model, optimizer, meta.get("extra", {})
