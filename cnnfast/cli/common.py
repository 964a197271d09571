"""What the commands share: the user-error exception, the option validators, and
the checks around data, checkpoints, backends and output folders.

A user error (a bad option, a missing or corrupt file, an unusable --out) is a
``CliError``: ``cnnfast.cli.main`` prints it as one line on stderr (``report_error``),
prefixed by the command, and exits with status 2 -- never a traceback. Numeric
options are checked when parsed (``type=`` one of the validators below), so each rule
lives here once.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Tuple, TypeVar, cast

if TYPE_CHECKING:  # the library is imported when a command runs, not to build the parser
    import numpy as np

    from ..nn.model import Sequential
    from ..nn.optim import Optimizer

T = TypeVar("T")


class CliError(Exception):
    """A user error: printed as one line, exit status 2. ``prog`` names the
    command when the message comes from argument parsing."""

    def __init__(self, message: str, prog: Optional[str] = None) -> None:
        super().__init__(message)
        self.prog = prog


def report_error(prog: str, exc: BaseException) -> int:
    """Print user error ``exc`` as one line on stderr; the exit status (2)."""
    text = " ".join(str(exc).split())
    print(f"{getattr(exc, 'prog', None) or prog}: {text}", file=sys.stderr)
    return 2


# ----------------------------------------------------------------------------- option types


def _validator(convert: Callable[[str], T], expected: str,
               ok: Callable[[T], bool]) -> Callable[[str], T]:
    """An argparse ``type=``: ``convert(text)``, accepted when ``ok(value)``;
    argparse names the option in the error ("argument --epochs: expected ...")."""

    def parse(text: str) -> T:
        try:
            value = convert(text)
        except (ValueError, OverflowError):
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    parse.__name__ = expected  # argparse's fallback message uses it
    return parse


positive_int = _validator(int, "an int >= 1", lambda v: v >= 1)
non_negative_int = _validator(int, "an int >= 0", lambda v: v >= 0)
# numpy's generators take any int >= 0; the bound keeps seeds JSON- and C-friendly.
random_seed = _validator(int, "an int in [0, 2**63)", lambda v: 0 <= v < 2 ** 63)
positive_float = _validator(float, "a finite number > 0",
                            lambda v: math.isfinite(v) and v > 0)
non_negative_float = _validator(float, "a finite number >= 0",
                                lambda v: math.isfinite(v) and v >= 0)
fraction = _validator(float, "a number in [0, 1)", lambda v: 0 <= v < 1)


# ----------------------------------------------------------------------------- checks


def require_backend(name: Optional[str], device: Optional[str] = None) -> None:
    """CliError unless kernel backend ``name`` (None: automatic) and ``device``
    (None, 'cpu' or 'gpu') can be used here."""
    from ..registry import available_backends

    if name is None and device != "gpu":
        return  # the automatic choice always finds one (numpy at worst)
    status = cast(Dict[str, Optional[str]], available_backends(with_reasons=True))
    usable = ", ".join(n for n, reason in status.items() if reason is None) or "none"
    if name is not None and name not in status:
        raise CliError(f"--backend {name!r} is unknown; available here: {usable}")
    if name is not None and status[name] is not None:
        raise CliError(f"--backend {name!r} is unavailable: {status[name]} "
                       f"(available here: {usable})")
    if device == "gpu" and status.get("cupy") is not None:
        raise CliError(f"--device gpu needs the cupy backend: {status.get('cupy')}")


def prepare_out(path: str, option: str = "--out") -> str:
    """Create output folder ``path`` if needed; CliError when it is a file, cannot
    be created, or is not writable."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise CliError(f"{option} {path}: exists and is not a folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise CliError(f"{option} {path}: cannot create the folder ({exc.strerror})") \
            from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise CliError(f"{option} {path}: the folder is not writable")
    return path


def load_data(split: str, data: Optional[str],
              limit: Optional[int] = None) -> Tuple[str, Tuple[np.ndarray, np.ndarray]]:
    """``(folder, (images, labels))`` of Fashion-MNIST split ``split``; a missing,
    unreadable, corrupt or empty file is a CliError."""
    from ..nn.data import find_fashion_mnist, load_fashion_mnist

    try:
        folder = find_fashion_mnist(data)
        images, labels = load_fashion_mnist(split, folder, limit)
    except (OSError, ValueError) as exc:  # FileNotFoundError, IDXError, permissions
        raise CliError(_one_line(exc)) from exc
    if len(images) == 0:
        raise CliError(f"the {split} set in {folder} holds no images")
    return folder, (images, labels)


def load_model(path: str, option: Optional[str] = None, backend: Optional[str] = None,
               device: str = "cpu"
               ) -> Tuple[Sequential, Optional[Optimizer], Dict[str, Any]]:
    """``load_checkpoint(path)``; a missing, corrupt or crafted file is a CliError
    (prefixed by ``option``, e.g. '--resume', when given)."""
    from ..nn import diffusion  # noqa: F401  (registers its ConditionShift layer)
    from ..nn.checkpoint import load_checkpoint

    try:
        return load_checkpoint(path, backend=backend, device=device)
    except (OSError, ValueError) as exc:  # FileNotFoundError, CheckpointError
        raise CliError(f"{option}: {_one_line(exc)}" if option else _one_line(exc)) \
            from exc


def refuse_gan(extra: Any, path: str) -> None:
    """CliError for a GAN checkpoint (``cnnfast train --model dcgan``), which a
    command for classifiers and denoisers cannot use."""
    if isinstance(extra, dict) and extra.get("task") == "gan":
        raise CliError(f"{path} holds a GAN (--model dcgan): draw from it with cnnfast "
                       f"sample or picture it with cnnfast visualize; measure it with "
                       f"benchmarks/generative_quality.py")
    if isinstance(extra, dict) and extra.get("task") == "diffusion":
        raise CliError(f"{path} holds a diffusion model (--model diffusion): draw from "
                       f"it with cnnfast sample or picture it with cnnfast visualize")


def check_model_fits_data(model: Sequential, images: np.ndarray, name: str) -> None:
    """CliError unless ``model`` takes these images and is a Fashion-MNIST
    classifier (10 or more outputs) or an image-to-image model."""
    from ..nn.data import CLASS_NAMES

    # built (a checkpoint's model or build_model's), so both shapes are set
    shape = cast(Tuple[int, ...], model.input_shape)
    if tuple(shape) != tuple(images.shape[1:]):
        raise CliError(f"{name}: the model takes {tuple(shape)} images, the "
                       f"data has {tuple(images.shape[1:])}")
    out = tuple(cast(Tuple[int, ...], model.output_shape))
    if out != tuple(shape) and not (len(out) == 1 and
                                                 out[0] >= len(CLASS_NAMES)):
        raise CliError(f"{name}: the model maps images to {out}; expected a classifier "
                       f"with {len(CLASS_NAMES)} outputs or an image-to-image model")


def stored_noise(extra: Any, path: str) -> float:
    """The noise std a denoiser checkpoint was trained with (``checkpoint_noise``);
    a corrupt one is a CliError."""
    from ..nn.runs import checkpoint_noise

    try:
        return checkpoint_noise(extra)
    except ValueError as exc:
        raise CliError(f"{path}: {exc}") from exc


def set_threads(n: int) -> None:
    """``--threads n``; a count the library refuses is a CliError."""
    from ..threads import set_num_threads

    try:
        set_num_threads(n)
    except ValueError as exc:
        raise CliError(f"--threads {n}: {exc}") from exc


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
