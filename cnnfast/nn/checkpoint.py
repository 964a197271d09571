"""Checkpoints: one ``.npz`` file holding the model configuration, its weights, the
optimizer state and whatever training metadata the caller adds (epoch, RNG states,
metrics), written atomically.

The file layout and its safe reader are in ``cnnfast.nn.checkpoint_file``, below
``cnnfast.nn.model`` (which reads weights with it); this module saves and rebuilds
whole models, above it.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..atomic_file import write_atomic
from .checkpoint_file import FORMAT, CheckpointError, read_arrays
from .data import PathLike
from .model import Sequential
from .optim import Optimizer, make_optimizer


# save_checkpoint writes to a temporary file named like this in the target folder
# first; one left behind means a process was killed mid-write.
TMP_PREFIX, TMP_SUFFIX = ".tmp-", ".npz"


def save_checkpoint(path: PathLike, model: Sequential, optimizer: Optional[Optimizer] = None,
                    extra: Optional[Dict[str, Any]] = None, *,
                    arrays: Optional[Dict[str, Any]] = None) -> str:
    """Write ``model`` (+ ``optimizer`` and ``extra``, JSON-able) to ``path``: to a
    temporary file in the same directory first, then ``os.replace`` -- a crash
    never leaves a half-written checkpoint under ``path``.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.npz`` file to write; missing folders are created.
    model : Sequential
        A built model (on CPU or GPU).
    optimizer : Optimizer, optional
        Its configuration and state (moments, step count) are saved too.
    extra : dict, optional
        JSON-able training metadata (epoch, metrics), returned by ``load_checkpoint``.
    arrays : dict, optional
        Further numpy arrays stored under their own names, which may not start with
        ``param/``, ``buffer/``, ``optim/`` or be ``__meta__`` (a GAN's second network,
        ``cnnfast.nn.gan``); ``load_checkpoint`` ignores them, ``read_arrays`` returns
        them.

    Returns
    -------
    str
        ``path`` as a str.

    Raises
    ------
    TypeError
        If ``extra`` is not JSON-able.
    ValueError
        If a name in ``arrays`` is one the model or optimizer arrays use.
    OSError
        If the file cannot be written (no temporary file is left behind).

    Examples
    --------
    >>> import os, tempfile
    >>> from cnnfast import nn
    >>> model = nn.Sequential([nn.Flatten(), nn.Dense(3)], input_shape=(1, 2, 2), seed=0)
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = nn.save_checkpoint(os.path.join(folder, "ck.npz"), model, nn.Adam(),
    ...                               extra={"epoch": 4})
    ...     loaded, optimizer, extra = nn.load_checkpoint(path)
    >>> loaded.param_count(), type(optimizer).__name__, extra
    (15, 'Adam', {'epoch': 4})
    """
    path = os.fspath(path)
    reserved = [k for k in arrays or {} if k == "__meta__" or k.startswith(
        ("param/", "buffer/", "optim/"))]
    if reserved:
        raise ValueError(f"arrays: the names {reserved} are the model's or optimizer's")
    meta = {"format": FORMAT, "model": model.config(),
            "optimizer": optimizer.config() if optimizer is not None else None,
            "extra": extra or {}}
    stored: Dict[str, Any] = {"__meta__": np.array(json.dumps(meta))}
    stored.update(model.state_dict())
    if optimizer is not None:
        for k, v in optimizer.state_dict().items():
            stored[f"optim/{k}"] = np.asarray(v)
    stored.update({k: np.asarray(v) for k, v in (arrays or {}).items()})
    return write_atomic(path, lambda f: np.savez(f, **stored), prefix=TMP_PREFIX,
                        suffix=TMP_SUFFIX, fsync=True)


def remove_stale_temporaries(directory: PathLike) -> List[str]:
    """Delete the temporary files a killed ``save_checkpoint`` left in
    ``directory`` (only names of its own pattern); returns their paths. Call it
    when a run starts, before any checkpoint of this run is being written.

    Parameters
    ----------
    directory : str or os.PathLike
        The checkpoint folder.

    Returns
    -------
    list of str
        The deleted files.

    Raises
    ------
    FileNotFoundError
        If ``directory`` does not exist.

    Examples
    --------
    >>> import tempfile
    >>> from cnnfast.nn.checkpoint import remove_stale_temporaries
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     remove_stale_temporaries(folder)
    []
    """
    removed = []
    for name in sorted(os.listdir(directory)):
        full = os.path.join(directory, name)
        if name.startswith(TMP_PREFIX) and name.endswith(TMP_SUFFIX) and os.path.isfile(full):
            os.unlink(full)
            removed.append(full)
    return removed


def load_checkpoint(path: PathLike, backend: Optional[str] = None, device: str = "cpu"
                    ) -> Tuple[Sequential, Optional[Optimizer], Dict[str, Any]]:
    """``(model, optimizer or None, extra)`` rebuilt from a checkpoint file.

    The stored arrays are checked against the model configuration before the
    model allocates anything, so a crafted configuration cannot make it allocate
    more than the file holds; every problem is a ``CheckpointError``.

    Parameters
    ----------
    path : str or os.PathLike
        A file ``save_checkpoint`` wrote.
    backend : str, optional
        The kernel backend of the rebuilt model (``None``: automatic).
    device : str
        ``'cpu'`` or ``'gpu'`` (cupy).

    Returns
    -------
    tuple
        ``(model, optimizer, extra)``: the built ``Sequential`` with its weights, the
        optimizer with its state (``None`` when none was saved), the ``extra`` dict.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    CheckpointError
        If the file is not a valid checkpoint (a ``ValueError``).

    Examples
    --------
    See ``save_checkpoint``; a file that is not a checkpoint:

    >>> import os, tempfile
    >>> from cnnfast import nn
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = os.path.join(folder, "bad.npz")
    ...     with open(path, "wb") as f:
    ...         _ = f.write(b"not a zip")
    ...     nn.load_checkpoint(path)
    Traceback (most recent call last):
    cnnfast.nn.checkpoint_file.CheckpointError: ...
    """
    path = os.fspath(path)
    arrays = read_arrays(path)
    meta = arrays["__meta__"]
    try:
        cfg = meta["model"]
        model = Sequential.from_config(cfg, backend=backend, build=False)
        expected = model.state_shapes(cfg["input_shape"])
    except (KeyError, TypeError, ValueError, AttributeError, NotImplementedError,
            OverflowError, RecursionError) as exc:
        raise CheckpointError(f"{path!r}: invalid model configuration "
                              f"({type(exc).__name__}: {exc})") from exc
    problems = _shape_problems(expected, arrays)
    optimizer: Optional[Optimizer] = None
    if meta.get("optimizer"):
        try:
            optimizer = make_optimizer(meta["optimizer"])
        except (TypeError, ValueError, AttributeError) as exc:
            raise CheckpointError(f"{path!r}: invalid optimizer configuration "
                                  f"({type(exc).__name__}: {exc})") from exc
        problems += _optimizer_problems(expected, arrays, optimizer)
    if problems:
        raise CheckpointError(f"{path!r}: the arrays do not match the stored model "
                              f"configuration: {'; '.join(problems[:5])}"
                              + (f" (and {len(problems) - 5} more)" if len(problems) > 5
                                 else ""))
    # Now the weights are known to match: building allocates what the file holds.
    model.build(cfg["input_shape"])
    model.load_state_dict(arrays, strict=True)
    if device != "cpu":
        model.to(device)
    if optimizer is not None:
        optimizer.load_state_dict({k[len("optim/"):]: v for k, v in arrays.items()
                                   if k.startswith("optim/")}, model.xp)
    extra = meta.get("extra", {})
    if not isinstance(extra, dict):
        raise CheckpointError(f"{path!r}: the extra metadata is not a JSON object")
    return model, optimizer, extra


def _shape_problems(expected: Dict[str, Any], arrays: Dict[str, Any]) -> List[str]:
    """Weights and buffers: exactly the expected names, shapes and real dtypes."""
    problems = []
    for key, shape in expected.items():
        value = arrays.get(key)
        if value is None:
            problems.append(f"{key} missing")
        elif value.shape != shape:
            problems.append(f"{key} has shape {value.shape}, the configuration "
                            f"gives {shape}")
        elif value.dtype.kind not in "fiu":
            problems.append(f"{key} has dtype {value.dtype}")
    problems += [f"{k} unexpected" for k in arrays
                 if k.startswith(("param/", "buffer/")) and k not in expected]
    return problems


def _optimizer_problems(expected: Dict[str, Any], arrays: Dict[str, Any],
                        optimizer: Optimizer) -> List[str]:
    """Optimizer slots: one per parameter, of its shape; ``t`` a scalar."""
    problems = []
    for key, value in arrays.items():
        if not key.startswith("optim/"):
            continue
        name = key[len("optim/"):]
        if name == "t":
            if value.shape != () or value.dtype.kind not in "iu":
                problems.append(f"{key} is not an integer scalar")
            continue
        slot, _, param = name.partition("/")
        shape = expected.get(f"param/{param}")
        if slot not in optimizer.slots or shape is None:
            problems.append(f"{key} does not belong to {type(optimizer).__name__}")
        elif value.shape != shape or value.dtype.kind not in "fiu":
            problems.append(f"{key} has shape {value.shape} ({value.dtype}), the "
                            f"parameter {shape}")
    return problems
