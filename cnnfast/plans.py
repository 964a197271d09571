"""Call plans: what validation and backend selection decided, per call signature.

Validating a call and choosing its backend cost 10-15 us of Python, as much as or more
than a small kernel (a global average pooling, a convolution of a few 8x8 planes).
Both depend only on the call's signature: each array's type, shape and dtype, the
other arguments, and the settings that steer the choice (the backend asked for by
context, ``set_backend`` or ``CNNFAST_BACKEND``; the automatic order). A plan keeps
their outcome -- the normalised params and the backend -- so that a repeated call (a
training loop repeats a few signatures) is a lookup plus the kernel.

The arguments enter the key by ``repr``, which tells ``True`` from ``1`` and ``1.0``:
a plan is exactly what validation would decide again. Only calls that passed are
planned (errors are raised afresh every time), and the dispatcher plans none with
``out=`` (its checks are about memory, not the signature), under ``explain``, with an
algorithm pinned by ``set_algorithm``, or with autotuning on (``cnnfast.autotune``
keeps its own cache). A plan's backend must still be the registry's for its name, and
its kernel is looked up at each call, so ``register_backend`` takes effect at once.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, NamedTuple, Optional, Sequence

from . import registry

# Enough for every layer of a network, forward and backward; full, the dict starts over.
MAX_PLANS = 1024

_plans: Dict[tuple, "Plan"] = {}


class Plan(NamedTuple):
    ops: Dict[str, Callable]  # the kernels of the chosen backend, looked up per call
    op: str
    kind: str  # the arrays' kind, "numpy" or "cupy"
    params: Any  # the normalised params the kernel takes (ConvParams, PoolParams, ...)
    extra: Any = None  # what else the op's kernel takes (the backward's needs)
    backend: Optional[registry.Backend] = None  # None: a plan for one call, not kept

    def kernel(self) -> Callable:
        return self.ops[self.op]


def _meta(a):
    return None if a is None else (type(a), a.shape, a.dtype)


def key(op: str, arrays: Sequence[Any], args: tuple) -> Optional[tuple]:
    """The key of a call of ``op`` on ``arrays`` (None for an absent one) with the
    other arguments ``args``; None for a call with something not an array where an
    array goes (validation says what)."""
    try:
        metas = tuple(map(_meta, arrays))
    except AttributeError:
        return None
    return (op, metas, repr(args), registry.current_choice(), registry.AUTO_CPU_ORDER)


def find(plan_key: Optional[tuple]) -> Optional[Plan]:
    """The plan kept under ``plan_key`` (None: the call is not planned), if there is one
    and its backend is still the registry's."""
    if plan_key is None:
        return None
    try:
        plan = _plans.get(plan_key)
    except TypeError:  # an unhashable shape or dtype: not an array, validation says so
        return None
    if plan is None or not registry.is_current(plan.backend):
        return None
    return plan


def make(plan_key: Optional[tuple], op: str, kind: str, dtype: str, params: Any,
         requested: Optional[str], kernel: Callable, extra: Any = None) -> Plan:
    """The plan of a call that validation passed, with the ``kernel`` and ``params``
    selection gave; kept under ``plan_key`` (unless None) when that kernel is its
    backend's own (not one wrapped for a pinned or autotuned algorithm)."""
    if plan_key is not None:
        backend = registry.select_backend(op, kind, dtype, params, requested)
        if backend.ops.get(op) is kernel:
            plan = Plan(backend.ops, op, kind, params, extra, backend)
            if len(_plans) >= MAX_PLANS:
                _plans.clear()
            _plans[plan_key] = plan
            return plan
    return Plan({op: kernel}, op, kind, params, extra)


def clear() -> None:
    """Forget every plan."""
    _plans.clear()
