"""Swap the convolution and pooling modules of an existing torch model for cnnfast's.

``replace`` changes the class of each matching module in place (``module.__class__``)
to its ``cnnfast.torch.nn`` subclass, which adds no state: the module objects, their
parameters and buffers, hooks, ``training`` flag and ``state_dict`` stay exactly as
they were (an optimizer built before the swap keeps working). ``restore`` undoes it.
"""

from __future__ import annotations

import warnings
from typing import Dict, Iterable, List, Optional, Tuple, Type, Union

import torch

from . import ops as _ops
from .nn import FAMILIES

OPS = tuple(FAMILIES)  # ("conv", "conv_transpose", "max_pool", "avg_pool")


class ReplaceWarning(UserWarning):
    """``replace`` left some matching modules as torch's (the message says which and
    why)."""


def _families(ops_arg: Union[str, Iterable[str]]) -> Tuple[str, ...]:
    names = (ops_arg,) if isinstance(ops_arg, str) else tuple(ops_arg)
    for name in names:
        if name not in FAMILIES:
            raise ValueError(f"ops={ops_arg!r}: unknown op family {name!r}; expected names "
                             f"from {OPS}")
    return names


def _unsupported(module: torch.nn.Module) -> Optional[str]:
    """Why cnnfast cannot run ``module`` (its parameters' dtype or device), or None."""
    for name, p in module.named_parameters(recurse=False):
        if isinstance(p, torch.nn.parameter.UninitializedParameter):
            return f"its {name} is not initialised (a lazy module)"
        if not _ops.supports(p):
            return f"cnnfast has no kernels for its {name}: {p.dtype} on {p.device.type}"
    return None


def replace(model: torch.nn.Module,
            ops: Union[str, Iterable[str]] = OPS) -> torch.nn.Module:
    """Make the ``torch.nn`` modules of the op families ``ops`` in ``model`` (itself
    included, recursively) run on cnnfast, in place, and return ``model``.

    ``ops``: names from ``"conv"`` (Conv1d/2d/3d), ``"conv_transpose"``
    (ConvTranspose1d/2d/3d), ``"max_pool"`` (MaxPool1d/2d/3d) and ``"avg_pool"``
    (AvgPool1d/2d/3d), so that only the operations where cnnfast wins need be swapped.

    Only modules of exactly those torch classes are swapped. Left as they are, with
    one ``ReplaceWarning`` naming each and why: subclasses of them (their ``forward``
    may differ: lazy, parametrized or user-defined modules) and modules whose
    parameters cnnfast has no kernels for (bfloat16, say, or an MPS device). A module
    that already runs on cnnfast is left alone, silently.
    """
    families = _families(ops)
    swap: Dict[Type[torch.nn.Module], Type[torch.nn.Module]] = {}
    for family in families:
        swap.update(FAMILIES[family])
    ours = {cls for table in FAMILIES.values() for cls in table.values()}
    skipped: List[str] = []
    for name, module in model.named_modules():
        cls = type(module)
        target = swap.get(cls)
        if target is None:
            if cls in ours:
                continue
            base = next((b for b in swap if isinstance(module, b)), None)
            if base is not None:
                skipped.append(f"{name or '<model>'} ({cls.__name__}): a subclass of "
                               f"torch.nn.{base.__name__}, whose forward may differ")
            continue
        reason = _unsupported(module)
        if reason is not None:
            skipped.append(f"{name or '<model>'} ({cls.__name__}): {reason}")
            continue
        module.__class__ = target
    if skipped:
        warnings.warn("cnnfast.torch.replace left these modules as torch's:\n  "
                      + "\n  ".join(skipped), ReplaceWarning, stacklevel=2)
    return model


def restore(model: torch.nn.Module) -> torch.nn.Module:
    """Undo ``replace``: every cnnfast.torch.nn module in ``model`` becomes its torch
    class again, in place; returns ``model``."""
    back = {ours: theirs for table in FAMILIES.values() for theirs, ours in table.items()}
    for module in model.modules():
        target = back.get(type(module))
        if target is not None:
            module.__class__ = target
    return model
