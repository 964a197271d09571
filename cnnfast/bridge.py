"""DLPack arrays in and out, and ``out=``: the array boundary of ``cnnfast.api``.

Any DLPack array (torch tensors, JAX arrays, array-API objects) goes in as the numpy
(CPU memory) or cupy (CUDA memory) array that views its memory (``cnnfast.arrays``),
runs as those do, and comes back as the caller's array type: that of the first array
argument (x for the forward functions, grad_y for the backward ones). Arrays of
several kinds are accepted when they live on one device. ``out=`` is validated by each
op before any work (shape, dtype, device, C-contiguity, writability, no overlap with an
input or another out) and then handed to the backend's kernel, which writes the result
into it directly (cpp, numba) or computes it in arrays of its own that ``write`` copies
there (the numpy reference, the CUDA backends): see docs/interop.md.
"""

from __future__ import annotations

import numpy as np

from .arrays import (cuda_scope, dlpack_device, dtype_name, export, import_dlpack,
                     is_cuda_device, is_cupy_array, is_native)


#
# Any DLPack array (torch tensors, JAX arrays, array-API objects) goes in as the numpy
# (CPU memory) or cupy (CUDA memory) array that views its memory (cnnfast.arrays), runs
# as those do, and comes back as the caller's array type: that of the first array
# argument (x for the forward functions, grad_y for the backward ones). Arrays of
# several kinds are accepted when they live on one device. ``out=`` is validated by each
# op before any work and then written by the backend's kernel (directly for cpp and
# numba; through ``write``'s copy for the numpy reference and CUDA): see docs/interop.md.


class Bridge:
    """One call's conversions: its DLPack arrays in, its results out as the caller's
    array type; for CUDA memory the device (and torch's stream) of the call."""

    __slots__ = ("like", "scope")

    def __init__(self, like):
        self.like = like
        self.scope = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        if self.scope is not None:
            self.scope.close()

    def take(self, a, name):
        """``a`` as a numpy or cupy array when it is a DLPack array (without a copy),
        else as it is (the op's validation names what is wrong with it)."""
        if a is None or is_native(a) or not hasattr(a, "__dlpack__"):
            return a
        device = dlpack_device(a, name)
        if self.scope is None and is_cuda_device(device):
            self.scope = cuda_scope(a, name, device)
        return import_dlpack(a, name, device)

    def take_out(self, out):
        if isinstance(out, (tuple, list)):
            return type(out)(self.take(o, f"out[{i}]") for i, o in enumerate(out))
        return self.take(out, "out")

    def give(self, result, out):
        """The call's answer: ``out`` (the caller's own object) where given, else the
        result as the caller's array type."""
        if isinstance(result, tuple):
            if out is None:
                out = (None,) * len(result)
            elif not isinstance(out, (tuple, list)):
                out = (out,) + (None,) * (len(result) - 1)  # max_pool: out is y's
            return tuple(o if o is not None else export(r, self.like)
                         for r, o in zip(result, out))
        return out if out is not None else export(result, self.like)


def all_native(*arrays) -> bool:
    """True when every array given is numpy or cupy: the call needs no bridge."""
    for a in arrays:
        if a is not None and not isinstance(a, np.ndarray) and not is_cupy_array(a):
            return False
    return True


def bridged(run, names, arrays, out, *args):
    """``run(*arrays, *args, out)``: directly for numpy/cupy arrays and no ``out``, else
    with the DLPack arrays and ``out`` imported and the result handed back as the
    caller's array type (``out`` itself where given)."""
    if out is None and all_native(*arrays):
        return run(*arrays, *args, None)
    with Bridge(arrays[0]) as bridge:
        imported = [bridge.take(a, name) for a, name in zip(arrays, names)]
        return bridge.give(run(*imported, *args, bridge.take_out(out)), out)


_MAX_OVERLAP_WORK = 1 << 16  # numpy.shares_memory's effort before assuming overlap


def _overlaps(a, b) -> bool:
    """Whether arrays ``a`` and ``b`` share memory: exact for numpy (within a bounded
    effort; too hard counts as overlap), the memory bounds for cupy."""
    if a is None or b is None or a.size == 0 or b.size == 0:
        return False
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
            return False  # host and device memory
        if not np.may_share_memory(a, b):
            return False
        try:
            # numpy's stubs allow only -1 and 0, but any bound works (and is documented)
            return bool(np.shares_memory(a, b, max_work=_MAX_OVERLAP_WORK))  # type: ignore[arg-type]
        except Exception:  # numpy.exceptions.TooHardError
            return True
    (a_lo, a_hi), (b_lo, b_hi) = _span(a), _span(b)
    return a_lo < b_hi and b_lo < a_hi


def _span(a):
    """[first byte, last byte + 1) of the memory a cupy array spans."""
    lo = hi = a.data.ptr
    for n, s in zip(a.shape, a.strides):
        if s > 0:
            hi += (n - 1) * s
        else:
            lo += (n - 1) * s
    return lo, hi + a.itemsize


def check_out(out, name, shape, dtype, kind, inputs, taken=()):
    """``out`` (``name``: ``"out"`` or ``"out[i] (grad_...)"``) fits a result of
    ``shape`` and ``dtype`` on ``kind`` arrays, is C-contiguous and writable and
    shares memory with none of ``inputs`` (name -> array) nor the outs ``taken``
    earlier. Returns it."""
    if not is_native(out):
        raise TypeError(f"{name} must be a numpy or cupy array or a DLPack array of "
                        f"shape {tuple(shape)} and dtype {dtype}, got {type(out).__name__}")
    k = "numpy" if isinstance(out, np.ndarray) else "cupy"
    if k != kind:
        raise TypeError(f"{name} is a {k} array but the inputs are {kind} arrays; {name} "
                        f"must live on the inputs' device (no silent transfer)")
    d = dtype_name(out.dtype)
    if d != dtype:
        raise TypeError(f"{name} has dtype {d}; expected {dtype}, the result's dtype (no "
                        f"silent cast)")
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(out.shape)}; expected {tuple(shape)}, "
                         f"the result's shape")
    if not out.flags.c_contiguous:
        raise ValueError(f"{name} is not C-contiguous (strides {tuple(out.strides)}); "
                         f"cnnfast writes results only into C-contiguous arrays")
    if not getattr(out.flags, "writeable", True):
        raise ValueError(f"{name} is read-only; it must be a writable array")
    for other, a in inputs.items():
        if _overlaps(out, a):
            raise ValueError(f"{name} shares memory with the input {other}; {name} must "
                             f"overlap no input (and no other out)")
    for other, a in taken:
        if _overlaps(out, a):
            raise ValueError(f"{name} shares memory with {other}; each out must have "
                             f"memory of its own")
    return out


GRAD_NAMES = ("x", "weight", "bias")


def check_grad_outs(out, shapes, dtype, kind, wanted, inputs):
    """``out`` of a convolution backward function: ``None`` or ``(grad_x,
    grad_weight, grad_bias)`` with ``None`` for any not given; each given one checked
    as ``check_out`` checks, and only for a gradient in ``needs``. Returns the three
    (``None`` where not given)."""
    if out is None:
        return (None, None, None)
    if not isinstance(out, (tuple, list)) or len(out) != 3:
        raise TypeError(f"out must be a tuple (or list) (grad_x, grad_weight, grad_bias) "
                        f"with None for any not given, got {type(out).__name__}"
                        + (f" of length {len(out)}" if isinstance(out, (tuple, list))
                           else ""))
    taken: list = []
    for i, (o, grad, shape) in enumerate(zip(out, GRAD_NAMES, shapes)):
        if o is None:
            continue
        name = f"out[{i}] (grad_{grad})"
        if grad not in wanted:
            asked = tuple(g for g in GRAD_NAMES if g in wanted)
            raise ValueError(f"{name} is given but {grad!r} is not in needs={asked}")
        taken.append((name, check_out(o, name, shape, dtype, kind, inputs, taken)))
    return out


def write(out, result):
    """``out`` holding ``result`` (returned), or ``result`` itself without one. A
    kernel that wrote into ``out`` returns ``out`` itself: nothing to copy then."""
    if out is None or result is out:
        return result
    out[...] = result
    return out


def write_grads(outs, grads):
    return tuple(write(o, g) if g is not None else g for o, g in zip(outs, grads))


def check_pool_outs(out, shape, dtype, kind, return_indices, x):
    """``max_pool``'s ``out``: y's array, or with ``return_indices=True`` also a pair
    ``(y, indices)`` with ``None`` for either. Returns the two (``None`` where not
    given)."""
    if out is None:
        return None, None
    if not isinstance(out, tuple):
        return check_out(out, "out", shape, dtype, kind, {"x": x}), None
    if not return_indices or len(out) != 2:
        raise TypeError("out must be an array for the pooled output"
                        + (" or, with return_indices=True, a pair (y, indices) with None "
                           "for either" if return_indices else "")
                        + f"; got a {len(out)}-tuple")
    y_out, idx_out = out
    taken = []
    if y_out is not None:
        taken.append(("out[0] (y)", check_out(y_out, "out[0] (y)", shape, dtype, kind,
                                               {"x": x})))
    if idx_out is not None:
        check_out(idx_out, "out[1] (indices)", shape, "int64", kind, {"x": x}, taken)
    return y_out, idx_out
