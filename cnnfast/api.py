"""The public kernel API (``docs/API.md``): validate once, pick a backend, run.

Every function checks its arrays and parameters before any kernel runs, then hands
contiguous arrays of one dtype and the normalised parameters of ``cnnfast.params``
to the backend chosen by ``cnnfast.registry``. Inputs are never modified.

Any DLPack array (torch tensors, JAX arrays, ...) is read in place as the numpy or
cupy array that views its memory, and the results go back as the caller's array type
(``cnnfast.bridge``); ``out=`` is checked before any work and written after every
kernel of the call has succeeded.

``explain`` runs the same validation and backend choice and stops there: every
function chooses its kernel through ``_select``, which under ``explain`` describes
the choice instead of returning the kernel. The convolution ops go through
``_select_conv``, which also applies the algorithm pin and autotuning
(``cnnfast.autotune``) to calls left to ``algorithm="auto"``.
"""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np

from . import activation as _activation
from . import autotune as _autotune
from . import params as P
from .arrays import FLOAT_DTYPES, array_kind, dtype_name
from .bridge import (bridged, check_grad_outs, check_out, check_pool_outs, write,
                     write_grads)
from .registry import backend_for, get_backend, select



# ----------------------------------------------------------------------------- explain

_explaining = threading.local()  # set by explain() around the validated call


class _Explained(Exception):
    """Carries explain()'s answer out of the call, before any kernel runs."""


def _select(op, kind, dtype, params, backend, **shapes):
    """``registry.select``; under ``explain``, raises the description of the choice
    (backend, and the backend's own ``explain``: algorithm and why) instead."""
    kernel = select(op, kind, dtype, params, backend)
    if getattr(_explaining, "active", False):
        raise _Explained(_describe(op, kind, dtype, params, backend, shapes))
    return kernel


def _describe(op, kind, dtype, params, backend, shapes, name=None, autotune=None):
    """``explain``'s answer: the backend, the backend's own ``explain`` (algorithm and
    why) and, when given, the autotuning line."""
    if name is None:
        name = backend_for(op, kind, dtype, params, backend)
    if "w_shape" in shapes and _is_empty_conv(shapes["x_shape"], shapes["w_shape"]):
        return (f"{name}: no kernel (an empty convolution, computed by the dispatcher: "
                f"see docs/API.md)")
    describe = getattr(get_backend(name).module, "explain", None)
    detail = describe(op, params, dtype, **shapes) if describe else None
    parts = [p for p in (detail, autotune) if p]
    return f"{name}: {'; '.join(parts)}" if parts else name


def _select_conv(op, kind, dtype, params, backend, **shapes):
    """``_select`` for the convolution ops, which returns ``(kernel, params)``: with
    ``algorithm="auto"``, the algorithm pinned by ``set_algorithm``/``use_algorithm``
    applies as ``algorithm=`` would, else, with autotuning on, the autotuned choice
    (``cnnfast.autotune``)."""
    if params.algorithm == "auto":
        pin = _autotune.pinned()
        if pin is not None:
            return _select_pinned(op, kind, dtype, replace(params, algorithm=pin), backend,
                                  shapes)
        if _autotune._enabled:
            return _select_tuned(op, kind, dtype, params, backend, shapes)
    return _select(op, kind, dtype, params, backend, **shapes), params


def _select_pinned(op, kind, dtype, params, backend, shapes):
    """The pinned algorithm's kernel; its refusals (an algorithm the backend does not
    know, a case it cannot run) say that the pin asked for it."""
    note = (f"(algorithm={params.algorithm!r} was pinned by cnnfast.set_algorithm or "
            f"cnnfast.use_algorithm)")
    try:
        kernel = _select(op, kind, dtype, params, backend, **shapes)
    except (ValueError, NotImplementedError) as exc:
        if "algorithm=" in str(exc):
            exc.add_note(note)
        raise

    def pinned_kernel(*args):
        try:
            return kernel(*args)
        except NotImplementedError as exc:
            if "algorithm=" in str(exc):
                exc.add_note(note)
            raise

    return pinned_kernel, params


def _select_tuned(op, kind, dtype, params, backend, shapes):
    """The kernel of the autotuned choice (see ``cnnfast.autotune``)."""
    kernel = select(op, kind, dtype, params, backend)
    name = backend_for(op, kind, dtype, params, backend)
    empty = _is_empty_conv(shapes["x_shape"], shapes["w_shape"])
    plan = None if empty else _autotune.plan(op, kind, dtype, params, name, shapes)
    if getattr(_explaining, "active", False):
        if plan is None:
            raise _Explained(_describe(op, kind, dtype, params, backend, shapes, name))
        chosen = plan.params(plan.winner) if plan.winner is not None else params
        raise _Explained(_describe(op, kind, dtype, chosen, backend, shapes, name,
                                   plan.describe()))
    if plan is None:
        return kernel, params  # not called: the dispatcher computes an empty conv
    return plan.apply(kernel)


def explain(op_name, *arrays, **params) -> str:
    """Which backend and which algorithm ``cnnfast.<op_name>(*arrays, **params)``
    would run, and why, without running it. The arguments are validated as the call
    would validate them (the same errors). The algorithm names are those that
    ``algorithm=`` accepts (each backend's ``ALGORITHMS``).

    >>> import numpy as np, cnnfast
    >>> cnnfast.explain("conv2d", np.ones((1, 1, 4, 4)), np.ones((1, 1, 2, 2)),
    ...                 backend="numpy").split("; ")[0]
    'numpy: tap-matmul (one matrix product per kernel tap)'
    """
    fn = _EXPLAINABLE.get(op_name) if isinstance(op_name, str) else None
    if fn is None:
        raise ValueError(f"explain: op_name={op_name!r} is not one of "
                         f"{', '.join(sorted(_EXPLAINABLE))}")
    _explaining.active = True
    try:
        fn(*arrays, **params)
    except _Explained as answer:
        return str(answer)
    finally:
        _explaining.active = False
    raise AssertionError(f"{op_name} returned without choosing a kernel")


# ----------------------------------------------------------------------------- arrays


def _check_arrays(**arrays):
    """One array kind and one floating dtype for every array given (None skipped).
    Returns (kind, dtype name)."""
    kind = dtype = None
    first = None
    for name, a in arrays.items():
        if a is None:
            continue
        k = array_kind(a, name)
        d = dtype_name(a.dtype)
        if d not in FLOAT_DTYPES:
            raise TypeError(f"{name} has dtype {d}; expected float32 or float64 (or float16 "
                            f"on the CUDA backends)")
        if kind is None:
            kind, dtype, first = k, d, name
            continue
        if k != kind:
            raise TypeError(f"{name} is a {k} array but {first} is a {kind} array; "
                            f"mixed devices are not allowed (move both to one device)")
        if d != dtype:
            raise TypeError(f"{name} has dtype {d} but {first} has dtype {dtype}; mixed "
                            f"dtypes are not allowed (cast one of them explicitly)")
    return kind, dtype


def _contiguous(a, kind):
    if a is None:
        return None
    if kind == "numpy":
        return np.ascontiguousarray(a)
    import cupy  # only reached for cupy arrays

    return cupy.ascontiguousarray(a)


def _check_bias(bias, channels):
    if bias is not None and tuple(bias.shape) != (channels,):
        raise ValueError(f"bias has shape {tuple(bias.shape)}; expected ({channels},) "
                         f"(one value per output channel) or None")


def _check_grad_y(grad_y, expected_shape):
    if tuple(grad_y.shape) != tuple(expected_shape):
        raise ValueError(f"grad_y has shape {tuple(grad_y.shape)}; the forward output "
                         f"has shape {tuple(expected_shape)}")


def _check_activated_y(y, p, expected_shape):
    """The backward's ``y=``: given exactly when ``activation=`` is, shaped like the
    forward output."""
    if p.activation is None and y is not None:
        raise ValueError("y= is only used with activation= (the activated output the "
                         "derivative is read from); pass activation= or drop y=")
    if p.activation is not None and y is None:
        raise ValueError(f"activation={p.activation!r} needs y=, the activated output of "
                         f"the forward call (the derivative is read from it)")
    if y is not None and tuple(y.shape) != tuple(expected_shape):
        raise ValueError(f"y has shape {tuple(y.shape)}; the forward output has shape "
                         f"{tuple(expected_shape)}")


def _empty(kind, shape, dtype):
    if kind == "numpy":
        return np.zeros(shape, dtype)
    import cupy

    return cupy.zeros(shape, dtype)


# A convolution with nothing to sum or nothing to write (x or weight empty: N, C_in,
# C_out or a spatial size of 0) is valid, and computed here, the same for every backend,
# as the sums define it: y is the bias broadcast (zeros without a bias), grad_x and
# grad_weight are zeros, grad_bias is grad_y summed as always. Backends never see an
# empty x or weight (the C++ kernels reject such a geometry).


def _is_empty_conv(x_shape, w_shape) -> bool:
    return 0 in x_shape or 0 in w_shape


def _empty_conv(kind, dtype, out_shape, bias, p):
    y = _empty(kind, out_shape, dtype)
    if bias is not None and y.size:
        y[...] = bias.reshape((-1,) + (1,) * (len(out_shape) - 2))
    return _activation.apply(y, p.activation, p.negative_slope)


def _empty_conv_grads(kind, dtype, wanted, grad_y, x_shape, w_shape, y, p):
    grad_y = _activation.grad(grad_y, y, p.activation, p.negative_slope)
    grad_bias = None
    if "bias" in wanted:
        grad_bias = grad_y.sum(axis=(0,) + tuple(range(2, grad_y.ndim)))
    return (_empty(kind, x_shape, dtype) if "x" in wanted else None,
            _empty(kind, w_shape, dtype) if "weight" in wanted else None,
            grad_bias)


# ----------------------------------------------------------------------------- conv

_CONV_ARRAYS = ("x", "weight", "bias")
_GRAD_ARRAYS = ("grad_y", "x", "weight", "y")
_SLOPE = _activation.DEFAULT_NEGATIVE_SLOPE


def _conv(x, weight, bias, stride, padding, dilation, groups, backend, algorithm,
          activation, negative_slope, rank=None, out=None):
    return bridged(_run_conv, _CONV_ARRAYS, (x, weight, bias), out, stride, padding,
                    dilation, groups, backend, algorithm, activation, negative_slope, rank)


def _run_conv(x, weight, bias, stride, padding, dilation, groups, backend, algorithm,
              activation, negative_slope, rank, out):
    kind, dtype = _check_arrays(x=x, weight=weight, bias=bias)
    P.check_rank(x, "x", rank)
    p = P.with_algorithm(P.conv_params(x.shape, weight.shape, stride, padding, dilation,
                                       groups), algorithm)
    p = P.with_activation(p, activation, negative_slope)
    _check_bias(bias, weight.shape[0])
    out_shape = (x.shape[0], weight.shape[0]) + p.out_shape
    P.check_result_size(out_shape, "the output")
    if out is not None:
        check_out(out, "out", out_shape, dtype, kind, {"x": x, "weight": weight,
                                                        "bias": bias})
    kernel, p = _select_conv("conv", kind, dtype, p, backend, x_shape=x.shape,
                             w_shape=weight.shape)
    if _is_empty_conv(x.shape, weight.shape):
        return write(out, _empty_conv(kind, dtype, out_shape, bias, p))
    return write(out, kernel(_contiguous(x, kind), _contiguous(weight, kind),
                              _contiguous(bias, kind), p))


def conv(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, backend=None,
         algorithm="auto", activation=None, negative_slope=_SLOPE, out=None):
    """Convolution (cross-correlation, as torch) of ``x`` (N, C_in, *spatial) with
    ``weight`` (C_out, C_in // groups, *kernel).

    >>> import numpy as np, cnnfast
    >>> x = np.arange(16.0).reshape(1, 1, 4, 4)
    >>> cnnfast.conv(x, np.ones((1, 1, 2, 2)), stride=2, backend="numpy")[0, 0]
    array([[10., 18.],
           [42., 50.]])

    ``algorithm``: ``"auto"`` (the backend's choice) or a name from the vocabulary of
    ``cnnfast.explain`` (the backend's ``ALGORITHMS``), which pins the backend that
    knows it and that algorithm; ``NotImplementedError`` if it cannot run the case.
    ``"auto"`` follows ``set_algorithm``/``use_algorithm`` when they pin a name, else
    the autotuned choice when ``set_autotune(True)`` (see ``cnnfast.autotune``).

    ``activation``: ``None``, ``"relu"``, ``"leaky_relu"`` (with ``negative_slope``
    >= 0), ``"sigmoid"`` or ``"tanh"``, applied after the bias in the kernel's epilogue
    (``conv_backward`` takes the same arguments and ``y=``, this call's result).

    Every array may be any DLPack array (a torch tensor, ...): the result comes back as
    the type of ``x``. ``out``: an array of the result's shape, dtype and device,
    C-contiguous, overlapping no input; the result is written there and ``out`` is
    returned (see docs/interop.md).
    """
    return _conv(x, weight, bias, stride, padding, dilation, groups, backend, algorithm,
                 activation, negative_slope, out=out)


def conv1d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, backend=None,
           algorithm="auto", activation=None, negative_slope=_SLOPE, out=None):
    """``conv`` for ``x`` of shape (N, C, L)."""
    return _conv(x, weight, bias, stride, padding, dilation, groups, backend, algorithm,
                 activation, negative_slope, rank=1, out=out)


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, backend=None,
           algorithm="auto", activation=None, negative_slope=_SLOPE, out=None):
    """``conv`` for ``x`` of shape (N, C, H, W)."""
    return _conv(x, weight, bias, stride, padding, dilation, groups, backend, algorithm,
                 activation, negative_slope, rank=2, out=out)


def conv3d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, backend=None,
           algorithm="auto", activation=None, negative_slope=_SLOPE, out=None):
    """``conv`` for ``x`` of shape (N, C, D, H, W)."""
    return _conv(x, weight, bias, stride, padding, dilation, groups, backend, algorithm,
                 activation, negative_slope, rank=3, out=out)


def conv_backward(grad_y, x, weight, stride=1, padding=0, dilation=1, groups=1, *,
                  needs=("x", "weight", "bias"), backend=None, algorithm="auto",
                  activation=None, negative_slope=_SLOPE, y=None, out=None):
    """Gradients of ``conv`` with respect to x, weight and bias: ``(grad_x,
    grad_weight, grad_bias)``, with ``None`` for the names not in ``needs``.
    ``algorithm`` pins the algorithm of every kernel of the call (see ``conv``).
    ``out``: ``(grad_x, grad_weight, grad_bias)`` arrays to write the gradients into,
    ``None`` for any not given (each checked as ``conv``'s ``out``, and only for a
    name in ``needs``); results come back as the type of ``grad_y``. With
    ``activation`` (as given to ``conv``), ``y`` is ``conv``'s result and ``grad_y`` is
    multiplied by the activation's derivative at ``y`` first (for all three
    gradients)."""
    return bridged(_run_conv_backward, _GRAD_ARRAYS, (grad_y, x, weight, y), out, stride,
                    padding, dilation, groups, needs, backend, algorithm, activation,
                    negative_slope)


def _run_conv_backward(grad_y, x, weight, y, stride, padding, dilation, groups, needs,
                       backend, algorithm, activation, negative_slope, out):
    wanted = P.grad_needs(needs)
    kind, dtype = _check_arrays(grad_y=grad_y, x=x, weight=weight, y=y)
    P.check_rank(x, "x")
    p = P.with_algorithm(P.conv_params(x.shape, weight.shape, stride, padding, dilation,
                                       groups), algorithm)
    p = P.with_activation(p, activation, negative_slope)
    _check_grad_y(grad_y, (x.shape[0], weight.shape[0]) + p.out_shape)
    _check_activated_y(y, p, grad_y.shape)
    outs = check_grad_outs(out, (x.shape, weight.shape, (weight.shape[0],)), dtype, kind,
                            wanted, {"grad_y": grad_y, "x": x, "weight": weight, "y": y})
    kernel, p = _select_conv("conv_backward", kind, dtype, p, backend, x_shape=x.shape,
                             w_shape=weight.shape, needs=wanted)
    if not wanted:
        return None, None, None
    if _is_empty_conv(x.shape, weight.shape):
        return write_grads(outs, _empty_conv_grads(kind, dtype, wanted, grad_y, x.shape,
                                                    weight.shape, y, p))
    return write_grads(outs, kernel(_contiguous(grad_y, kind), _contiguous(x, kind),
                                     _contiguous(weight, kind), p, wanted,
                                     _contiguous(y, kind)))


# ----------------------------------------------------------------------------- conv_transpose


def _conv_transpose(x, weight, bias, stride, padding, output_padding, groups, dilation,
                    backend, algorithm, activation, negative_slope, rank=None, out=None):
    return bridged(_run_conv_transpose, _CONV_ARRAYS, (x, weight, bias), out, stride,
                    padding, output_padding, groups, dilation, backend, algorithm,
                    activation, negative_slope, rank)


def _run_conv_transpose(x, weight, bias, stride, padding, output_padding, groups, dilation,
                        backend, algorithm, activation, negative_slope, rank, out):
    kind, dtype = _check_arrays(x=x, weight=weight, bias=bias)
    P.check_rank(x, "x", rank)
    p = P.with_algorithm(P.conv_transpose_params(x.shape, weight.shape, stride, padding,
                                                 output_padding, groups, dilation), algorithm)
    p = P.with_activation(p, activation, negative_slope)
    c_out = weight.shape[1] * p.groups
    _check_bias(bias, c_out)
    out_shape = (x.shape[0], c_out) + p.out_shape
    P.check_result_size(out_shape, "the output")
    if out is not None:
        check_out(out, "out", out_shape, dtype, kind, {"x": x, "weight": weight,
                                                        "bias": bias})
    kernel, p = _select_conv("conv_transpose", kind, dtype, p, backend, x_shape=x.shape,
                             w_shape=weight.shape)
    if _is_empty_conv(x.shape, weight.shape):
        return write(out, _empty_conv(kind, dtype, out_shape, bias, p))
    return write(out, kernel(_contiguous(x, kind), _contiguous(weight, kind),
                              _contiguous(bias, kind), p))


def conv_transpose(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                   dilation=1, *, backend=None, algorithm="auto", activation=None,
                   negative_slope=_SLOPE, out=None):
    """Transposed convolution of ``x`` (N, C_in, *spatial) with ``weight``
    (C_in, C_out // groups, *kernel); ``padding`` crops the output. ``activation``,
    DLPack arrays and ``out`` as in ``conv``.

    >>> import numpy as np, cnnfast
    >>> cnnfast.conv_transpose(np.ones((1, 1, 2)), np.ones((1, 1, 2)), stride=2,
    ...                        backend="numpy")[0, 0]
    array([1., 1., 1., 1.])
    """
    return _conv_transpose(x, weight, bias, stride, padding, output_padding, groups,
                           dilation, backend, algorithm, activation, negative_slope,
                           out=out)


def conv_transpose1d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1, *, backend=None, algorithm="auto", activation=None,
                     negative_slope=_SLOPE, out=None):
    """``conv_transpose`` for ``x`` of shape (N, C, L)."""
    return _conv_transpose(x, weight, bias, stride, padding, output_padding, groups,
                           dilation, backend, algorithm, activation, negative_slope,
                           rank=1, out=out)


def conv_transpose2d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1, *, backend=None, algorithm="auto", activation=None,
                     negative_slope=_SLOPE, out=None):
    """``conv_transpose`` for ``x`` of shape (N, C, H, W)."""
    return _conv_transpose(x, weight, bias, stride, padding, output_padding, groups,
                           dilation, backend, algorithm, activation, negative_slope,
                           rank=2, out=out)


def conv_transpose3d(x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1, *, backend=None, algorithm="auto", activation=None,
                     negative_slope=_SLOPE, out=None):
    """``conv_transpose`` for ``x`` of shape (N, C, D, H, W)."""
    return _conv_transpose(x, weight, bias, stride, padding, output_padding, groups,
                           dilation, backend, algorithm, activation, negative_slope,
                           rank=3, out=out)


def conv_transpose_backward(grad_y, x, weight, stride=1, padding=0, output_padding=0,
                            groups=1, dilation=1, *, needs=("x", "weight", "bias"),
                            backend=None, algorithm="auto", activation=None,
                            negative_slope=_SLOPE, y=None, out=None):
    """Gradients of ``conv_transpose``: ``(grad_x, grad_weight, grad_bias)``.
    ``activation`` and ``y``, DLPack arrays and ``out`` as in ``conv_backward``."""
    return bridged(_run_conv_transpose_backward, _GRAD_ARRAYS, (grad_y, x, weight, y), out,
                    stride, padding, output_padding, groups, dilation, needs, backend,
                    algorithm, activation, negative_slope)


def _run_conv_transpose_backward(grad_y, x, weight, y, stride, padding, output_padding,
                                 groups, dilation, needs, backend, algorithm, activation,
                                 negative_slope, out):
    wanted = P.grad_needs(needs)
    kind, dtype = _check_arrays(grad_y=grad_y, x=x, weight=weight, y=y)
    P.check_rank(x, "x")
    p = P.with_algorithm(P.conv_transpose_params(x.shape, weight.shape, stride, padding,
                                                 output_padding, groups, dilation), algorithm)
    p = P.with_activation(p, activation, negative_slope)
    c_out = weight.shape[1] * p.groups
    _check_grad_y(grad_y, (x.shape[0], c_out) + p.out_shape)
    _check_activated_y(y, p, grad_y.shape)
    outs = check_grad_outs(out, (x.shape, weight.shape, (c_out,)), dtype, kind, wanted,
                            {"grad_y": grad_y, "x": x, "weight": weight, "y": y})
    kernel, p = _select_conv("conv_transpose_backward", kind, dtype, p, backend,
                             x_shape=x.shape, w_shape=weight.shape, needs=wanted)
    if not wanted:
        return None, None, None
    if _is_empty_conv(x.shape, weight.shape):
        return write_grads(outs, _empty_conv_grads(kind, dtype, wanted, grad_y, x.shape,
                                                    weight.shape, y, p))
    return write_grads(outs, kernel(_contiguous(grad_y, kind), _contiguous(x, kind),
                                     _contiguous(weight, kind), p, wanted,
                                     _contiguous(y, kind)))


# ----------------------------------------------------------------------------- pooling


def _max_pool(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices,
              backend, rank=None, out=None):
    return bridged(_run_max_pool, ("x",), (x,), out, kernel_size, stride, padding,
                    dilation, ceil_mode, return_indices, backend, rank)


def _run_max_pool(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices,
                  backend, rank, out):
    kind, dtype = _check_arrays(x=x)
    P.check_rank(x, "x", rank)
    p = P.pool_params(x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    if not isinstance(return_indices, (bool, np.bool_)):
        raise TypeError(f"return_indices={return_indices!r} must be a bool")
    out_shape = x.shape[:2] + p.out_shape
    P.check_result_size(out_shape, "the output")
    y_out, idx_out = check_pool_outs(out, out_shape, dtype, kind, return_indices, x)
    kernel = _select("max_pool", kind, dtype, p, backend)
    if x.shape[0] == 0 or x.shape[1] == 0:
        y = _empty(kind, out_shape, dtype)
        idx = _empty(kind, y.shape, "int64")
    else:
        y, idx = kernel(_contiguous(x, kind), p, bool(return_indices))
    y = write(y_out, y)
    return (y, write(idx_out, idx)) if return_indices else y


def max_pool(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, *,
             return_indices=False, backend=None, out=None):
    """Max pooling; NaN wins a window. With ``return_indices=True`` also the int64
    flat offsets of the winners in each (n, c) plane of ``x``.

    >>> import numpy as np, cnnfast
    >>> x = np.array([[[[2., 3, 1, 9], [4, 7, 3, 5], [8, 2, 2, 2], [1, 3, 4, 5]]]])
    >>> cnnfast.max_pool(x, 2, backend="numpy")[0, 0]
    array([[7., 9.],
           [8., 5.]])

    DLPack arrays as in ``conv``. ``out``: y's array; with ``return_indices=True``
    also a pair ``(y, indices)`` with ``None`` for either.
    """
    return _max_pool(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices,
                     backend, out=out)


def max_pool1d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, *,
               return_indices=False, backend=None, out=None):
    """``max_pool`` for ``x`` of shape (N, C, L)."""
    return _max_pool(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices,
                     backend, rank=1, out=out)


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, *,
               return_indices=False, backend=None, out=None):
    """``max_pool`` for ``x`` of shape (N, C, H, W)."""
    return _max_pool(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices,
                     backend, rank=2, out=out)


def max_pool3d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, *,
               return_indices=False, backend=None, out=None):
    """``max_pool`` for ``x`` of shape (N, C, D, H, W)."""
    return _max_pool(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices,
                     backend, rank=3, out=out)


def _check_x_shape(x_shape):
    if not isinstance(x_shape, (tuple, list)) or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in x_shape):
        raise TypeError(f"x_shape={x_shape!r} must be a tuple of ints")
    x_shape = tuple(int(v) for v in x_shape)
    if len(x_shape) not in (3, 4, 5) or min(x_shape) < 0:
        raise ValueError(f"x_shape={x_shape!r} must be (N, C, *spatial) with 1 to 3 "
                         f"non-negative spatial sizes")
    P.check_x_shape_extents(x_shape)
    P.check_result_size(x_shape, "grad_x (x_shape)")
    return x_shape


def max_pool_backward(grad_y, indices, x_shape, *, backend=None, out=None):
    """Gradient of ``max_pool`` with respect to x, from the winners' ``indices``.
    DLPack arrays as in ``conv_backward``; ``out``: grad_x's array."""
    return bridged(_run_max_pool_backward, ("grad_y", "indices"), (grad_y, indices), out,
                    x_shape, backend)


def _run_max_pool_backward(grad_y, indices, x_shape, backend, out):
    kind, dtype = _check_arrays(grad_y=grad_y)
    x_shape = _check_x_shape(x_shape)
    if array_kind(indices, "indices") != kind:
        raise TypeError(f"indices is a {array_kind(indices, 'indices')} array but grad_y "
                        f"is a {kind} array; mixed devices are not allowed")
    if dtype_name(indices.dtype) != "int64":
        raise TypeError(f"indices has dtype {indices.dtype}; expected int64 (as returned "
                        f"by max_pool(..., return_indices=True))")
    if tuple(indices.shape) != tuple(grad_y.shape):
        raise ValueError(f"indices has shape {tuple(indices.shape)} but grad_y has shape "
                         f"{tuple(grad_y.shape)}; they must match")
    if grad_y.ndim != len(x_shape) or tuple(grad_y.shape[:2]) != x_shape[:2]:
        raise ValueError(f"grad_y has shape {tuple(grad_y.shape)}; for x_shape={x_shape} "
                         f"it must be ({x_shape[0]}, {x_shape[1]}, *pooled)")
    if out is not None:
        check_out(out, "out", x_shape, dtype, kind, {"grad_y": grad_y, "indices": indices})
    plane = P.prod(x_shape[2:])
    if indices.size and (int(indices.min()) < 0 or int(indices.max()) >= plane):
        raise ValueError(f"indices must lie in [0, {plane}) (flat offsets into each "
                         f"(n, c) plane of x_shape={x_shape}); got values in "
                         f"[{int(indices.min())}, {int(indices.max())}]")
    kernel = _select("max_pool_backward", kind, dtype, x_shape, backend)
    if grad_y.size == 0:
        return write(out, _empty(kind, x_shape, dtype))
    return write(out, kernel(_contiguous(grad_y, kind), _contiguous(indices, kind),
                              x_shape))


def _avg_pool(x, kernel_size, stride, padding, ceil_mode, count_include_pad,
              divisor_override, dilation, backend, rank=None, out=None):
    return bridged(_run_avg_pool, ("x",), (x,), out, kernel_size, stride, padding,
                    ceil_mode, count_include_pad, divisor_override, dilation, backend, rank)


def _run_avg_pool(x, kernel_size, stride, padding, ceil_mode, count_include_pad,
                  divisor_override, dilation, backend, rank, out):
    kind, dtype = _check_arrays(x=x)
    P.check_rank(x, "x", rank)
    p = P.pool_params(x.shape, kernel_size, stride, padding, dilation, ceil_mode,
                      count_include_pad, divisor_override)
    out_shape = x.shape[:2] + p.out_shape
    P.check_result_size(out_shape, "the output")
    if out is not None:
        check_out(out, "out", out_shape, dtype, kind, {"x": x})
    kernel = _select("avg_pool", kind, dtype, p, backend)
    if x.shape[0] == 0 or x.shape[1] == 0:
        return write(out, _empty(kind, out_shape, dtype))
    return write(out, kernel(_contiguous(x, kind), p))


def avg_pool(x, kernel_size, stride=None, padding=0, ceil_mode=False,
             count_include_pad=True, divisor_override=None, *, dilation=1, backend=None,
             out=None):
    """Average pooling (ONNX's ``dilation`` supported as well). DLPack arrays and
    ``out`` as in ``conv``.

    >>> import numpy as np, cnnfast
    >>> x = np.array([[[[2., 1, 1, 3], [4, 5, 2, 1], [1, 4, 5, 3], [5, 1, 7, 6]]]])
    >>> cnnfast.avg_pool(x, 2, backend="numpy")[0, 0]
    array([[3.  , 1.75],
           [2.75, 5.25]])
    """
    return _avg_pool(x, kernel_size, stride, padding, ceil_mode, count_include_pad,
                     divisor_override, dilation, backend, out=out)


def avg_pool1d(x, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, divisor_override=None, *, dilation=1, backend=None,
               out=None):
    """``avg_pool`` for ``x`` of shape (N, C, L)."""
    return _avg_pool(x, kernel_size, stride, padding, ceil_mode, count_include_pad,
                     divisor_override, dilation, backend, rank=1, out=out)


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, divisor_override=None, *, dilation=1, backend=None,
               out=None):
    """``avg_pool`` for ``x`` of shape (N, C, H, W)."""
    return _avg_pool(x, kernel_size, stride, padding, ceil_mode, count_include_pad,
                     divisor_override, dilation, backend, rank=2, out=out)


def avg_pool3d(x, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, divisor_override=None, *, dilation=1, backend=None,
               out=None):
    """``avg_pool`` for ``x`` of shape (N, C, D, H, W)."""
    return _avg_pool(x, kernel_size, stride, padding, ceil_mode, count_include_pad,
                     divisor_override, dilation, backend, rank=3, out=out)


def avg_pool_backward(grad_y, x_shape, kernel_size, stride=None, padding=0, ceil_mode=False,
                      count_include_pad=True, divisor_override=None, *, dilation=1,
                      backend=None, out=None):
    """Gradient of ``avg_pool`` with respect to x. DLPack arrays as in
    ``conv_backward``; ``out``: grad_x's array."""
    return bridged(_run_avg_pool_backward, ("grad_y",), (grad_y,), out, x_shape,
                    kernel_size, stride, padding, ceil_mode, count_include_pad,
                    divisor_override, dilation, backend)


def _run_avg_pool_backward(grad_y, x_shape, kernel_size, stride, padding, ceil_mode,
                           count_include_pad, divisor_override, dilation, backend, out):
    kind, dtype = _check_arrays(grad_y=grad_y)
    x_shape = _check_x_shape(x_shape)
    p = P.pool_params(x_shape, kernel_size, stride, padding, dilation, ceil_mode,
                      count_include_pad, divisor_override)
    _check_grad_y(grad_y, x_shape[:2] + p.out_shape)
    if out is not None:
        check_out(out, "out", x_shape, dtype, kind, {"grad_y": grad_y})
    kernel = _select("avg_pool_backward", kind, dtype, p, backend)
    if grad_y.size == 0:
        return write(out, _empty(kind, x_shape, dtype))
    return write(out, kernel(_contiguous(grad_y, kind), p))


_EXPLAINABLE = {fn.__name__: fn for fn in (
    conv, conv1d, conv2d, conv3d, conv_backward,
    conv_transpose, conv_transpose1d, conv_transpose2d, conv_transpose3d,
    conv_transpose_backward,
    max_pool, max_pool1d, max_pool2d, max_pool3d, max_pool_backward,
    avg_pool, avg_pool1d, avg_pool2d, avg_pool3d, avg_pool_backward)}
