"""The backend registry and backend selection.

A backend is a module that exposes:

* ``ARRAY``: ``"numpy"`` or ``"cupy"`` -- the kind of arrays it takes and returns;
* ``DTYPES``: the dtype names it computes in (``("float32", "float64")``);
* ``OPS``: a dict from op name (``"conv"``, ``"conv_backward"``, ...; see
  ``OP_NAMES``) to a kernel function taking normalised parameters (see
  ``cnnfast.params`` and ``cnnfast.backends.numpy.backend`` for the signatures);
* optionally ``WRITES_OUT = True``: its kernels take the caller's ``out=`` as a last
  argument and write into it (``KERNEL_ARITY``); without it the
  registry drops that argument and the dispatcher copies the results into ``out``;
* optionally ``availability() -> None | str``: the reason it cannot run here;
* optionally ``unsupported(op, params, dtype) -> None | str``: the reason a
  particular case is not implemented, from its arguments alone (the dispatcher keeps
  the choice per call signature: ``cnnfast.plans``);
* optionally ``ALGORITHMS``: the names of its convolution algorithms, which
  ``algorithm=`` may pin (``ConvParams.algorithm``); a backend runs the pinned one or
  raises ``NotImplementedError`` with the reason;
* optionally ``explain(op, params, dtype, **shapes) -> str``: which algorithm it would
  run and why (``cnnfast.explain``).

A module that fails to import is unavailable, with the import error as the reason.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

from .environ import getenv

OP_NAMES = ("conv", "conv_backward", "conv_transpose", "conv_transpose_backward",
            "max_pool", "max_pool_backward", "avg_pool", "avg_pool_backward")

_MODULES: Dict[str, str] = {
    "numpy": "cnnfast.backends.numpy.backend",
    "numba": "cnnfast.backends.numba.backend",
    "cpp": "cnnfast.backends.cpp.backend",
    "cupy": "cnnfast.backends.cuda.cupy_backend",
    "cuda-emu": "cnnfast.backends.cuda.emu_backend",
}
# Automatic choice for numpy arrays, fastest first; cuda-emu is opt-in only.
AUTO_CPU_ORDER = ("cpp", "numba", "numpy")

_lock = threading.Lock()
_loaded: Dict[str, "Backend"] = {}
_global_choice: Optional[str] = None
_context_choice: contextvars.ContextVar = contextvars.ContextVar("cnnfast_backend",
                                                                 default=None)


class BackendUnavailable(ValueError, RuntimeError):
    """Raised when a named backend cannot run on this machine.

    A ValueError, as the contract promises for every bad argument (here ``backend``);
    still a RuntimeError, as it was first, so existing ``except RuntimeError`` code
    keeps working."""


# The arguments of each op's kernel before its destination (``out``, or ``outs`` for
# conv_backward's triple and max_pool's pair), which the dispatcher appends last when
# the call has one: conv(x, w, b, p), conv_backward(gy, x, w, p, needs, y), ...
KERNEL_ARITY = {"conv": 4, "conv_backward": 6, "conv_transpose": 4,
                "conv_transpose_backward": 6, "max_pool": 3, "max_pool_backward": 3,
                "avg_pool": 2, "avg_pool_backward": 2}


def copied_out(ops: Dict[str, Callable]) -> Dict[str, Callable]:
    """The kernels ``ops`` of a backend that computes in arrays of its own, taking the
    dispatcher's destination argument and dropping it: ``write`` then copies each
    result into the caller's ``out``."""

    def taking_out(fn: Callable, arity: int) -> Callable:
        def kernel(*args: Any) -> Any:
            return fn(*args[:arity])

        return functools.update_wrapper(kernel, fn)

    return {op: taking_out(fn, KERNEL_ARITY[op]) for op, fn in ops.items()}


@dataclass
class Backend:
    name: str
    module: Any = None
    reason: Optional[str] = None  # why it is unavailable; None when usable
    ops: Dict[str, Callable] = field(default_factory=dict)
    array: str = "numpy"
    dtypes: tuple = ("float32", "float64")
    algorithms: tuple = ()  # the module's ALGORITHMS

    @property
    def available(self) -> bool:
        return self.reason is None

    def unsupported(self, op: str, params: Any, dtype: str) -> Optional[str]:
        if op not in self.ops:
            return f"backend {self.name!r} does not implement {op}"
        if dtype not in self.dtypes:
            return f"backend {self.name!r} does not compute in {dtype}"
        check = getattr(self.module, "unsupported", None)
        return check(op, params, dtype) if check else None


def register_backend(name: str, module_path: str) -> None:
    """Register (or replace) a backend implemented by the module ``module_path``.

    The module is imported on first use, not here; one that fails to import is
    unavailable, with the import error as the reason (see this module's docstring for
    what a backend module exposes).

    Parameters
    ----------
    name : str
        The name ``backend=`` will take.
    module_path : str
        The dotted path of the module, e.g. ``"mypackage.my_backend"``.

    Examples
    --------
    >>> import cnnfast
    >>> cnnfast.register_backend("reference", "cnnfast.backends.numpy.backend")
    >>> "reference" in cnnfast.available_backends()
    True
    >>> from cnnfast import registry  # undo it (there is no public unregister)
    >>> del registry._MODULES["reference"], registry._loaded["reference"]
    """
    with _lock:
        _MODULES[name] = module_path
        _loaded.pop(name, None)


def backend_names() -> Tuple[str, ...]:
    return tuple(_MODULES)


def get_backend(name: str) -> Backend:
    """The backend object for ``name``, importing its module on first use."""
    if name not in _MODULES:
        raise ValueError(f"backend={name!r} is unknown; expected one of "
                         f"{', '.join(map(repr, _MODULES))}")
    with _lock:
        if name in _loaded:
            return _loaded[name]
        backend = Backend(name)
        try:
            module = importlib.import_module(_MODULES[name])
        except ImportError as exc:
            backend.reason = f"cannot import {_MODULES[name]}: {exc}"
        else:
            backend.module = module
            backend.array = getattr(module, "ARRAY", "numpy")
            backend.dtypes = tuple(getattr(module, "DTYPES", ("float32", "float64")))
            ops = dict(getattr(module, "OPS", {}))
            if not getattr(module, "WRITES_OUT", False):
                ops = copied_out(ops)
            backend.ops = ops
            backend.algorithms = tuple(getattr(module, "ALGORITHMS", ()))
            check = getattr(module, "availability", None)
            try:
                backend.reason = check() if check else None
            except Exception as exc:  # a broken driver must not break the library
                backend.reason = f"{type(exc).__name__}: {exc}"
        _loaded[name] = backend
        return backend


def available_backends(with_reasons: bool = False
                       ) -> Union[List[str], Dict[str, Optional[str]]]:
    """Names of the backends usable here.

    Parameters
    ----------
    with_reasons : bool
        Return a dict from every known backend name to ``None`` (usable) or the reason
        it is unavailable, instead of the list of usable names.

    Returns
    -------
    list of str or dict
        The usable backends' names, in registration order; or the dict above.

    Examples
    --------
    >>> import cnnfast
    >>> "numpy" in cnnfast.available_backends()
    True
    >>> cnnfast.available_backends(with_reasons=True)["numpy"] is None
    True
    """
    status = {name: get_backend(name).reason for name in _MODULES}
    if with_reasons:
        return status
    return [name for name, reason in status.items() if reason is None]


def set_backend(name: Optional[str]) -> None:
    """Make ``name`` the default backend (``None`` or ``"auto"`` restores the
    automatic choice). Checked at once: unknown or unavailable names raise.

    Process-wide; ``use_backend`` blocks and a call's ``backend=`` come first, and
    this comes before ``CNNFAST_BACKEND``.

    Parameters
    ----------
    name : str or None
        A name of ``available_backends()``, or ``None`` / ``"auto"``.

    Raises
    ------
    TypeError
        ``name`` is not a str or None.
    ValueError
        ``name`` is not a known backend.
    cnnfast.BackendUnavailable
        The backend cannot run on this machine (a ``ValueError`` too).

    Examples
    --------
    >>> import numpy as np, cnnfast
    >>> cnnfast.set_backend("numpy")
    >>> cnnfast.explain("max_pool1d", np.ones((1, 1, 4)), 2).split(":")[0]
    'numpy'
    >>> cnnfast.set_backend(None)
    """
    global _global_choice
    _global_choice = _checked_choice(name)


@contextlib.contextmanager
def use_backend(name: Optional[str]) -> Iterator[None]:
    """Context manager: use backend ``name`` inside the ``with`` block (per thread
    and per asyncio task).

    Parameters
    ----------
    name : str or None
        As in ``set_backend``; ``None`` or ``"auto"``: the automatic choice in the
        block, whatever ``set_backend`` says.

    Raises
    ------
    TypeError, ValueError, cnnfast.BackendUnavailable
        As ``set_backend``, on entering the block.

    Examples
    --------
    >>> import numpy as np, cnnfast
    >>> with cnnfast.use_backend("numpy"):
    ...     cnnfast.explain("max_pool1d", np.ones((1, 1, 4)), 2).split(":")[0]
    'numpy'
    """
    token = _context_choice.set(_checked_choice(name))
    try:
        yield
    finally:
        _context_choice.reset(token)


def _checked_choice(name: Optional[str]) -> Optional[str]:
    if name is None or name == "auto":
        return None
    if not isinstance(name, str):
        raise TypeError(f"backend={name!r} must be a backend name (str) or None")
    backend = get_backend(name)
    if not backend.available:
        raise BackendUnavailable(f"backend {name!r} is unavailable: {backend.reason}")
    return name


def current_choice() -> Optional[str]:
    """The backend the user asked for outside a call: context, global, env."""
    choice = _context_choice.get()
    if choice is None:
        choice = _global_choice
    if choice is None:
        env = getenv("CNNFAST_BACKEND").strip()
        if env and env != "auto":
            choice = env
    return choice


def select(op: str, array_kind: str, dtype: str, params, requested: Optional[str]):
    """The kernel for ``op``: the backend asked for (argument, context, global or
    ``CNNFAST_BACKEND``), else the automatic choice for the array kind."""
    return select_backend(op, array_kind, dtype, params, requested).ops[op]


def select_backend(op: str, array_kind: str, dtype: str, params,
                   requested: Optional[str]) -> Backend:
    """The backend ``select`` takes ``op``'s kernel from."""
    if requested is not None and not isinstance(requested, str):
        raise TypeError(f"backend={requested!r} must be a backend name (str) or None")
    name = requested if requested not in (None, "auto") else None
    if name is None and requested is None:
        name = current_choice()
    algorithm = getattr(params, "algorithm", "auto")
    if name is None and algorithm != "auto":
        name = _backend_knowing(algorithm, array_kind)  # a pinned algorithm pins its backend
    if name is not None:
        backend = get_backend(name)
        if not backend.available:
            raise BackendUnavailable(
                f"backend {name!r} is unavailable: {backend.reason}")
        if backend.array != array_kind:
            raise TypeError(
                f"backend {name!r} takes {backend.array} arrays but got {array_kind} "
                f"arrays; no silent transfer between devices (convert the inputs, "
                f"or pick a backend for {array_kind} arrays)")
        if algorithm != "auto" and algorithm not in backend.algorithms:
            raise ValueError(f"algorithm={algorithm!r} is not an algorithm of backend "
                             f"{name!r}; expected 'auto' or one of "
                             f"{', '.join(map(repr, backend.algorithms)) or '(none)'}")
        reason = backend.unsupported(op, params, dtype)
        if reason is not None:
            others = [n for n in _MODULES if n != name and _can_run(n, op, array_kind,
                                                                      dtype, params)]
            hint = (f"; backends that can: {', '.join(others)}" if others
                    else "; no available backend can")
            raise NotImplementedError(f"{reason} for this case{hint}")
        return backend
    # Automatic choice: the user asked for it, so falling back is allowed.
    order = ("cupy",) if array_kind == "cupy" else AUTO_CPU_ORDER
    reasons = []
    for candidate in order:
        backend = get_backend(candidate)
        if not backend.available:
            reasons.append(f"{candidate}: {backend.reason}")
            continue
        reason = backend.unsupported(op, params, dtype)
        if reason is None:
            return backend
        reasons.append(f"{candidate}: {reason}")
    raise NotImplementedError(f"no available backend runs {op} on {array_kind} "
                              f"{dtype} arrays here ({'; '.join(reasons)})")


def _backend_knowing(algorithm, array_kind):
    """The first backend, in the automatic order, whose vocabulary has ``algorithm``."""
    order = ("cupy",) if array_kind == "cupy" else AUTO_CPU_ORDER
    vocabularies = []
    for candidate in order:
        backend = get_backend(candidate)
        if algorithm in backend.algorithms:
            return candidate
        vocabularies.append(f"{candidate}: {', '.join(backend.algorithms) or '(unavailable)'}")
    raise ValueError(f"algorithm={algorithm!r} is unknown; expected 'auto' or one of "
                     f"({'; '.join(vocabularies)})")


def _can_run(name, op, array_kind, dtype, params) -> bool:
    backend = get_backend(name)
    return (backend.available and backend.array == array_kind
            and backend.unsupported(op, params, dtype) is None)


def backend_for(op: str, array_kind: str, dtype: str, params, requested=None) -> str:
    """Name of the backend ``select`` would use (for reports and tests)."""
    return select_backend(op, array_kind, dtype, params, requested).name


def is_current(backend: Backend) -> bool:
    """Whether ``backend`` is still the registry's backend of its name (not replaced
    by ``register_backend`` or a reload)."""
    return _loaded.get(backend.name) is backend
