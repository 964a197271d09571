"""The public kernel API (``docs/API.md``): validate once, pick a backend, run.

Every function checks its arrays and parameters before any kernel runs, then hands
contiguous arrays of one dtype and the normalised parameters of ``cnnfast.params``
to the backend chosen by ``cnnfast.registry``. Inputs are never modified.

Any DLPack array (torch tensors, JAX arrays, ...) is read in place as the numpy or
cupy array that views its memory, and the results go back as the caller's array type
(``cnnfast.bridge``); ``out=`` is checked before any work and handed to the backend's
kernel, which writes the result there (``_with_out``).

``explain`` runs the same validation and backend choice and stops there: every
function chooses its kernel through ``_select``, which under ``explain`` describes
the choice instead of returning the kernel. The convolution ops go through
``_select_conv``, which also applies the algorithm pin and autotuning
(``cnnfast.autotune``) to calls left to ``algorithm="auto"``.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any, Iterable, Optional, Sequence, Tuple, Union

import numpy as np

from . import activation as _activation
from . import autotune as _autotune
from . import params as P
from . import plans
from .arrays import FLOAT_DTYPES, array_kind, dtype_name
from .bridge import (bridged, check_grad_outs, check_out, check_pool_outs, write,
                     write_grads)
from .registry import backend_for, get_backend, select

# The types of the public signatures. An array is a numpy or cupy ndarray or any DLPack
# array (a torch tensor, a JAX array, ...): the type checker cannot name them all.
ArrayLike = Any
#: One int for every spatial dim, or one int per spatial dim.
IntOrTuple = Union[int, Sequence[int]]
#: An int, one entry per spatial dim (an int or a ``(before, after)`` pair), or for
#: ``conv`` the strings ``"valid"`` and ``"same"``.
Padding = Union[int, str, Sequence[Union[int, Sequence[int]]]]
#: The three gradients of a convolution, ``None`` where not asked for.
Grads = Tuple[Optional[ArrayLike], Optional[ArrayLike], Optional[ArrayLike]]
_Needs = Union[str, Iterable[str]]


# ----------------------------------------------------------------------------- explain

class _ExplainState(threading.local):
    active = False  # set by explain() around the validated call (a class default: a
    # missing attribute would cost a caught AttributeError, 1 us, on every call)


_explaining = _ExplainState()


class _Explained(Exception):
    """Carries explain()'s answer out of the call, before any kernel runs."""


def _select(op, kind, dtype, params, backend, **shapes):
    """``registry.select``; under ``explain``, raises the description of the choice
    (backend, and the backend's own ``explain``: algorithm and why) instead."""
    kernel = select(op, kind, dtype, params, backend)
    if _explaining.active:
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


def _plan_key(op, arrays, args, out):
    """The key of this call's plan (``cnnfast.plans``), or None when it is not planned:
    with ``out=``, under ``explain``, with an algorithm pinned by ``set_algorithm`` or
    with autotuning on."""
    if (out is not None or _explaining.active or _autotune._enabled
            or _autotune.pinned() is not None):
        return None
    return plans.key(op, arrays, args)


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
    if _explaining.active:
        if plan is None:
            raise _Explained(_describe(op, kind, dtype, params, backend, shapes, name))
        chosen = plan.params(plan.winner) if plan.winner is not None else params
        raise _Explained(_describe(op, kind, dtype, chosen, backend, shapes, name,
                                   plan.describe()))
    if plan is None:
        return kernel, params  # not called: the dispatcher computes an empty conv
    return plan.apply(kernel)


def explain(op_name: str, *arrays: ArrayLike, **params: Any) -> str:
    """Which backend and which algorithm ``cnnfast.<op_name>(*arrays, **params)``
    would run, and why, without running it. The arguments are validated as the call
    would validate them (the same errors). The algorithm names are those that
    ``algorithm=`` accepts (each backend's ``ALGORITHMS``).

    Parameters
    ----------
    op_name : str
        The name of a public kernel function: ``"conv2d"``, ``"conv_backward"``,
        ``"max_pool"``, ...
    *arrays, **params
        The arguments the call would get.

    Returns
    -------
    str
        ``"<backend>: <algorithm> (<what it is>); why: <reason>"``, plus the autotuning
        line when autotuning applies.

    Raises
    ------
    ValueError
        ``op_name`` is not a public kernel function; or any error the call itself would
        raise before running a kernel (``TypeError``, ``ValueError``,
        ``NotImplementedError``, ``cnnfast.BackendUnavailable``).

    Examples
    --------
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


def _with_out(kernel, args, out):
    """``kernel(*args)``, with the call's destination appended when it has one (``out``,
    or the tuple of outs, checked already): the cpp and numba kernels write their
    results there directly and return it, the others return arrays of their own that
    ``write`` copies (``cnnfast.registry.KERNEL_ARITY``; the registry wraps the kernels of
    a backend without ``WRITES_OUT`` in ``copied_out``)."""
    if out is None or (isinstance(out, tuple) and all(o is None for o in out)):
        return kernel(*args)
    return kernel(*args, out)


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


_NO_GRAD_OUTS = (None, None, None)  # what check_grad_outs gives a call without out=


def _conv(x, weight, bias, stride, padding, dilation, groups, backend, algorithm,
          activation, negative_slope, rank=None, out=None):
    return bridged(_run_conv, _CONV_ARRAYS, (x, weight, bias), out, stride, padding,
                    dilation, groups, backend, algorithm, activation, negative_slope, rank)


def _run_conv(x, weight, bias, stride, padding, dilation, groups, backend, algorithm,
              activation, negative_slope, rank, out):
    plan_key = _plan_key("conv", (x, weight, bias), (stride, padding, dilation, groups,
                         backend, algorithm, activation, negative_slope, rank), out)
    plan = plans.find(plan_key)
    if plan is None:
        kind, dtype = _check_arrays(x=x, weight=weight, bias=bias)
        P.check_rank(x, "x", rank)
        p = P.with_algorithm(P.conv_params(x.shape, weight.shape, stride, padding,
                                           dilation, groups), algorithm)
        p = P.with_activation(p, activation, negative_slope)
        _check_bias(bias, weight.shape[0])
        out_shape = (x.shape[0], weight.shape[0]) + p.out_shape
        plan, empty = _forward_plan("conv", plan_key, kind, dtype, p, backend, x, weight,
                                    bias, out_shape, out)
        if plan is None:
            return empty
    return _run_forward(plan, x, weight, bias, out)


def _forward_plan(op, plan_key, kind, dtype, p, backend, x, weight, bias, out_shape, out):
    """The rest of a forward call's checks and its kernel choice: (its plan, None), or
    (None, the result) for an empty convolution (computed here)."""
    P.check_result_size(out_shape, "the output")
    if out is not None:
        check_out(out, "out", out_shape, dtype, kind, {"x": x, "weight": weight,
                                                        "bias": bias})
    kernel, p = _select_conv(op, kind, dtype, p, backend, x_shape=x.shape,
                             w_shape=weight.shape)
    if _is_empty_conv(x.shape, weight.shape):
        return None, write(out, _empty_conv(kind, dtype, out_shape, bias, p))
    return plans.make(plan_key, op, kind, dtype, p, backend, kernel), None


def _run_forward(plan, x, weight, bias, out):
    kind = plan.kind
    return write(out, _with_out(plan.kernel(), (_contiguous(x, kind),
                                                _contiguous(weight, kind),
                                                _contiguous(bias, kind), plan.params), out))


def conv(x: ArrayLike, weight: ArrayLike, bias: Optional[ArrayLike] = None,
         stride: IntOrTuple = 1, padding: Padding = 0, dilation: IntOrTuple = 1,
         groups: int = 1, *, backend: Optional[str] = None, algorithm: str = "auto",
         activation: Optional[str] = None, negative_slope: float = _SLOPE,
         out: Optional[ArrayLike] = None) -> ArrayLike:
    """Convolution (cross-correlation, as torch) of ``x`` (N, C_in, *spatial) with
    ``weight`` (C_out, C_in // groups, *kernel), spatial rank 1 to 3.

    Parameters
    ----------
    x : array
        (N, C_in, *spatial), float32 or float64 (float16 on the CUDA backends): a numpy
        or cupy array, or any DLPack array (a torch tensor, a JAX array, ...), read in
        place.
    weight : array
        (C_out, C_in // groups, *kernel), the same dtype and device as ``x``.
    bias : array, optional
        (C_out,), added to every output position.
    stride, dilation : int or tuple of int
        One int for every spatial dim or one per dim.
    padding : int, tuple or str
        An int; one entry per dim, each an int (symmetric) or a ``(before, after)``
        pair; or ``"valid"`` / ``"same"`` (stride 1; an odd total pad puts the extra
        element after, as ONNX ``SAME_UPPER``).
    groups : int
        Input and output channels split into ``groups`` independent convolutions.
    backend : str, optional
        ``"numpy"``, ``"numba"``, ``"cpp"``, ``"cupy"``, ``"cuda-emu"``; ``None``: the
        ``use_backend`` / ``set_backend`` / ``CNNFAST_BACKEND`` choice, else the first
        available that can run the case.
    algorithm : str
        ``"auto"`` (the backend's choice) or a name from the vocabulary of
        ``cnnfast.explain`` (the backend's ``ALGORITHMS``), which pins the backend that
        knows it and that algorithm. ``"auto"`` follows ``set_algorithm`` /
        ``use_algorithm`` when they pin a name, else the autotuned choice when
        ``set_autotune(True)`` (see ``cnnfast.autotune``).
    activation : str, optional
        ``None``, ``"relu"``, ``"leaky_relu"`` (with ``negative_slope`` >= 0),
        ``"sigmoid"`` or ``"tanh"``, applied after the bias in the kernel's epilogue
        (``conv_backward`` takes the same arguments and ``y=``, this call's result).
    negative_slope : float
        The slope of ``"leaky_relu"`` below zero (default 0.01).
    out : array, optional
        An array of the result's shape, dtype and device, C-contiguous, overlapping no
        input; the result is written there and ``out`` is returned (see
        docs/interop.md).

    Returns
    -------
    array
        y, (N, C_out, *out_spatial), of the type of ``x`` (or ``out``). Per dim:
        ``floor((in + pad_before + pad_after - dilation*(k-1) - 1) / stride) + 1``.

    Raises
    ------
    TypeError
        An argument of the wrong type; arrays of mixed dtypes or devices; a dtype other
        than float32 / float64 (float16 on the CUDA backends).
    ValueError
        Shapes that do not fit together; a bad stride, padding, dilation or groups (see
        docs/API.md); an unknown algorithm or activation; a bad ``out``.
    NotImplementedError
        The pinned ``algorithm`` cannot run the case.
    cnnfast.BackendUnavailable
        The named backend is unavailable on this machine (a ``ValueError``).

    Examples
    --------
    >>> import numpy as np, cnnfast
    >>> x = np.arange(16.0).reshape(1, 1, 4, 4)
    >>> cnnfast.conv(x, np.ones((1, 1, 2, 2)), stride=2, backend="numpy")[0, 0]
    array([[10., 18.],
           [42., 50.]])
    >>> cnnfast.conv(x, np.ones((1, 1, 3, 3)), padding="same").shape
    (1, 1, 4, 4)
    >>> cnnfast.conv(x, -np.ones((1, 1, 2, 2)), np.array([50.0]), stride=2,
    ...              activation="relu")[0, 0]
    array([[40., 32.],
           [ 8.,  0.]])
    """
    return _conv(x, weight, bias, stride, padding, dilation, groups, backend, algorithm,
                 activation, negative_slope, out=out)


def conv1d(x: ArrayLike, weight: ArrayLike, bias: Optional[ArrayLike] = None,
           stride: IntOrTuple = 1, padding: Padding = 0, dilation: IntOrTuple = 1,
           groups: int = 1, *, backend: Optional[str] = None, algorithm: str = "auto",
           activation: Optional[str] = None, negative_slope: float = _SLOPE,
           out: Optional[ArrayLike] = None) -> ArrayLike:
    """Convolution of ``x`` of shape (N, C, L): ``conv`` for 1-d inputs (an ``x``
    of another rank is a ``ValueError``). The arguments and the results are
    ``conv``'s, below."""
    return _conv(x, weight, bias, stride, padding, dilation, groups, backend, algorithm,
                 activation, negative_slope, rank=1, out=out)


def conv2d(x: ArrayLike, weight: ArrayLike, bias: Optional[ArrayLike] = None,
           stride: IntOrTuple = 1, padding: Padding = 0, dilation: IntOrTuple = 1,
           groups: int = 1, *, backend: Optional[str] = None, algorithm: str = "auto",
           activation: Optional[str] = None, negative_slope: float = _SLOPE,
           out: Optional[ArrayLike] = None) -> ArrayLike:
    """Convolution of ``x`` of shape (N, C, H, W): ``conv`` for 2-d inputs (an ``x``
    of another rank is a ``ValueError``). The arguments and the results are
    ``conv``'s, below."""
    return _conv(x, weight, bias, stride, padding, dilation, groups, backend, algorithm,
                 activation, negative_slope, rank=2, out=out)


def conv3d(x: ArrayLike, weight: ArrayLike, bias: Optional[ArrayLike] = None,
           stride: IntOrTuple = 1, padding: Padding = 0, dilation: IntOrTuple = 1,
           groups: int = 1, *, backend: Optional[str] = None, algorithm: str = "auto",
           activation: Optional[str] = None, negative_slope: float = _SLOPE,
           out: Optional[ArrayLike] = None) -> ArrayLike:
    """Convolution of ``x`` of shape (N, C, D, H, W): ``conv`` for 3-d inputs (an ``x``
    of another rank is a ``ValueError``). The arguments and the results are
    ``conv``'s, below."""
    return _conv(x, weight, bias, stride, padding, dilation, groups, backend, algorithm,
                 activation, negative_slope, rank=3, out=out)


def conv_backward(grad_y: ArrayLike, x: ArrayLike, weight: ArrayLike,
                  stride: IntOrTuple = 1, padding: Padding = 0,
                  dilation: IntOrTuple = 1, groups: int = 1, *,
                  needs: _Needs = ("x", "weight", "bias"), backend: Optional[str] = None,
                  algorithm: str = "auto", activation: Optional[str] = None,
                  negative_slope: float = _SLOPE, y: Optional[ArrayLike] = None,
                  out: Optional[Sequence[Optional[ArrayLike]]] = None) -> Grads:
    """Gradients of ``conv`` with respect to x, weight and bias: ``(grad_x,
    grad_weight, grad_bias)``, with ``None`` for the names not in ``needs``.

    Parameters
    ----------
    grad_y : array
        d loss / d y, the shape of ``conv``'s result; the dtype and device of ``x``.
    x, weight : array
        The forward call's inputs.
    stride, padding, dilation, groups
        As given to ``conv``.
    needs : tuple of str
        The gradients to compute, from ``"x"``, ``"weight"``, ``"bias"``.
    backend : str, optional
        As in ``conv``.
    algorithm : str
        Pins the algorithm of every kernel of the call (see ``conv``).
    activation : str, optional
        As given to ``conv``: ``grad_y`` is then multiplied by the activation's
        derivative at ``y`` first (for all three gradients).
    negative_slope : float
        As given to ``conv``.
    y : array, optional
        ``conv``'s result; required with ``activation``, refused without it.
    out : tuple of arrays, optional
        ``(grad_x, grad_weight, grad_bias)`` arrays to write the gradients into,
        ``None`` for any not given (each checked as ``conv``'s ``out``, and only for a
        name in ``needs``).

    Returns
    -------
    tuple
        ``(grad_x, grad_weight, grad_bias)``, shaped like ``x``, ``weight`` and
        ``(C_out,)``, of the type of ``grad_y``; ``None`` for a name not in ``needs``.
        ``grad_bias`` is ``grad_y`` summed over every axis but the channel axis.

    Raises
    ------
    TypeError, ValueError, NotImplementedError, cnnfast.BackendUnavailable
        As ``conv``; also a ``grad_y`` or ``y`` not shaped like the forward result, an
        unknown name in ``needs``, ``y`` given without ``activation`` or missing with it.

    Examples
    --------
    >>> import numpy as np, cnnfast
    >>> x, w = np.array([[[1.0, 2.0, 3.0]]]), np.ones((1, 1, 2))
    >>> grad_x, grad_w, grad_b = cnnfast.conv_backward(np.ones((1, 1, 2)), x, w)
    >>> grad_x, grad_w, grad_b
    (array([[[1., 2., 1.]]]), array([[[3., 5.]]]), array([2.]))
    >>> cnnfast.conv_backward(np.ones((1, 1, 2)), x, w, needs=("weight",))
    (None, array([[[3., 5.]]]), None)
    """
    return bridged(_run_conv_backward, _GRAD_ARRAYS, (grad_y, x, weight, y), out, stride,
                    padding, dilation, groups, needs, backend, algorithm, activation,
                    negative_slope)


def _run_conv_backward(grad_y, x, weight, y, stride, padding, dilation, groups, needs,
                       backend, algorithm, activation, negative_slope, out):
    plan_key = _plan_key("conv_backward", (grad_y, x, weight, y), (
        stride, padding, dilation, groups, needs, backend, algorithm, activation,
        negative_slope), out)
    plan = plans.find(plan_key)
    outs = _NO_GRAD_OUTS
    if plan is None:
        wanted = P.grad_needs(needs)
        kind, dtype = _check_arrays(grad_y=grad_y, x=x, weight=weight, y=y)
        P.check_rank(x, "x")
        p = P.with_algorithm(P.conv_params(x.shape, weight.shape, stride, padding,
                                           dilation, groups), algorithm)
        p = P.with_activation(p, activation, negative_slope)
        plan, outs, early = _backward_plan("conv_backward", plan_key, kind, dtype, p,
                                           backend, grad_y, x, weight, y, wanted,
                                           weight.shape[0], out)
        if plan is None:
            return early
    return _run_backward(plan, grad_y, x, weight, y, outs)


def _backward_plan(op, plan_key, kind, dtype, p, backend, grad_y, x, weight, y, wanted,
                   c_out, out):
    """The rest of a backward call's checks (``c_out``: the channels of ``grad_y``) and
    its kernel choice: (its plan, the checked outs, None), or (None, None, the result)
    when nothing is asked for or the convolution is empty (computed here)."""
    _check_grad_y(grad_y, (x.shape[0], c_out) + p.out_shape)
    _check_activated_y(y, p, grad_y.shape)
    outs = check_grad_outs(out, (x.shape, weight.shape, (c_out,)), dtype, kind, wanted,
                           {"grad_y": grad_y, "x": x, "weight": weight, "y": y})
    kernel, p = _select_conv(op, kind, dtype, p, backend, x_shape=x.shape,
                             w_shape=weight.shape, needs=wanted)
    if not wanted:
        return None, None, (None, None, None)
    if _is_empty_conv(x.shape, weight.shape):
        return None, None, write_grads(outs, _empty_conv_grads(kind, dtype, wanted, grad_y,
                                                                x.shape, weight.shape, y, p))
    return plans.make(plan_key, op, kind, dtype, p, backend, kernel, wanted), outs, None


def _run_backward(plan, grad_y, x, weight, y, outs):
    kind = plan.kind
    args = (_contiguous(grad_y, kind), _contiguous(x, kind), _contiguous(weight, kind),
            plan.params, plan.extra, _contiguous(y, kind))
    return write_grads(outs, _with_out(plan.kernel(), args, tuple(outs)))


# ----------------------------------------------------------------------------- conv_transpose


def _conv_transpose(x, weight, bias, stride, padding, output_padding, groups, dilation,
                    backend, algorithm, activation, negative_slope, rank=None, out=None):
    return bridged(_run_conv_transpose, _CONV_ARRAYS, (x, weight, bias), out, stride,
                    padding, output_padding, groups, dilation, backend, algorithm,
                    activation, negative_slope, rank)


def _run_conv_transpose(x, weight, bias, stride, padding, output_padding, groups, dilation,
                        backend, algorithm, activation, negative_slope, rank, out):
    plan_key = _plan_key("conv_transpose", (x, weight, bias), (
        stride, padding, output_padding, groups, dilation, backend, algorithm, activation,
        negative_slope, rank), out)
    plan = plans.find(plan_key)
    if plan is None:
        kind, dtype = _check_arrays(x=x, weight=weight, bias=bias)
        P.check_rank(x, "x", rank)
        p = P.with_algorithm(P.conv_transpose_params(x.shape, weight.shape, stride, padding,
                                                     output_padding, groups, dilation),
                             algorithm)
        p = P.with_activation(p, activation, negative_slope)
        c_out = weight.shape[1] * p.groups
        _check_bias(bias, c_out)
        out_shape = (x.shape[0], c_out) + p.out_shape
        plan, empty = _forward_plan("conv_transpose", plan_key, kind, dtype, p, backend, x,
                                    weight, bias, out_shape, out)
        if plan is None:
            return empty
    return _run_forward(plan, x, weight, bias, out)


def conv_transpose(x: ArrayLike, weight: ArrayLike, bias: Optional[ArrayLike] = None,
                   stride: IntOrTuple = 1, padding: Padding = 0,
                   output_padding: IntOrTuple = 0, groups: int = 1,
                   dilation: IntOrTuple = 1, *, backend: Optional[str] = None,
                   algorithm: str = "auto", activation: Optional[str] = None,
                   negative_slope: float = _SLOPE,
                   out: Optional[ArrayLike] = None) -> ArrayLike:
    """Transposed convolution (the adjoint of ``conv``, torch's ``conv_transpose``) of
    ``x`` (N, C_in, *spatial) with ``weight`` (C_in, C_out // groups, *kernel), spatial
    rank 1 to 3.

    Parameters
    ----------
    x : array
        (N, C_in, *spatial); numpy, cupy or any DLPack array, as in ``conv``.
    weight : array
        (C_in, C_out // groups, *kernel).
    bias : array, optional
        (C_out,).
    stride, dilation : int or tuple of int
        As in ``conv``.
    padding : int or tuple
        Crops the output: an int, or one entry per dim (an int or a
        ``(before, after)`` pair).
    output_padding : int or tuple of int
        Extra size on the far end of each dim, smaller than the stride or the
        dilation.
    groups : int
        As in ``conv``.
    backend, algorithm, activation, negative_slope, out
        As in ``conv``.

    Returns
    -------
    array
        y, (N, C_out, *out_spatial), of the type of ``x`` (or ``out``). Per dim:
        ``(in-1)*stride - pad_before - pad_after + dilation*(k-1) + output_padding + 1``.

    Raises
    ------
    TypeError, ValueError, NotImplementedError, cnnfast.BackendUnavailable
        As ``conv``.

    Examples
    --------
    >>> import numpy as np, cnnfast
    >>> cnnfast.conv_transpose(np.ones((1, 1, 2)), np.ones((1, 1, 2)), stride=2,
    ...                        backend="numpy")[0, 0]
    array([1., 1., 1., 1.])
    >>> cnnfast.conv_transpose(np.array([[[1.0, 2.0]]]), np.array([[[1.0, 10.0]]]))
    array([[[ 1., 12., 20.]]])
    """
    return _conv_transpose(x, weight, bias, stride, padding, output_padding, groups,
                           dilation, backend, algorithm, activation, negative_slope,
                           out=out)


def conv_transpose1d(x: ArrayLike, weight: ArrayLike, bias: Optional[ArrayLike] = None,
                     stride: IntOrTuple = 1, padding: Padding = 0,
                     output_padding: IntOrTuple = 0, groups: int = 1,
                     dilation: IntOrTuple = 1, *, backend: Optional[str] = None,
                     algorithm: str = "auto", activation: Optional[str] = None,
                     negative_slope: float = _SLOPE,
                     out: Optional[ArrayLike] = None) -> ArrayLike:
    """Transposed convolution of ``x`` of shape (N, C, L): ``conv_transpose`` for 1-d inputs (an ``x``
    of another rank is a ``ValueError``). The arguments and the results are
    ``conv_transpose``'s, below."""
    return _conv_transpose(x, weight, bias, stride, padding, output_padding, groups,
                           dilation, backend, algorithm, activation, negative_slope,
                           rank=1, out=out)


def conv_transpose2d(x: ArrayLike, weight: ArrayLike, bias: Optional[ArrayLike] = None,
                     stride: IntOrTuple = 1, padding: Padding = 0,
                     output_padding: IntOrTuple = 0, groups: int = 1,
                     dilation: IntOrTuple = 1, *, backend: Optional[str] = None,
                     algorithm: str = "auto", activation: Optional[str] = None,
                     negative_slope: float = _SLOPE,
                     out: Optional[ArrayLike] = None) -> ArrayLike:
    """Transposed convolution of ``x`` of shape (N, C, H, W): ``conv_transpose`` for 2-d inputs (an ``x``
    of another rank is a ``ValueError``). The arguments and the results are
    ``conv_transpose``'s, below."""
    return _conv_transpose(x, weight, bias, stride, padding, output_padding, groups,
                           dilation, backend, algorithm, activation, negative_slope,
                           rank=2, out=out)


def conv_transpose3d(x: ArrayLike, weight: ArrayLike, bias: Optional[ArrayLike] = None,
                     stride: IntOrTuple = 1, padding: Padding = 0,
                     output_padding: IntOrTuple = 0, groups: int = 1,
                     dilation: IntOrTuple = 1, *, backend: Optional[str] = None,
                     algorithm: str = "auto", activation: Optional[str] = None,
                     negative_slope: float = _SLOPE,
                     out: Optional[ArrayLike] = None) -> ArrayLike:
    """Transposed convolution of ``x`` of shape (N, C, D, H, W): ``conv_transpose`` for 3-d inputs (an ``x``
    of another rank is a ``ValueError``). The arguments and the results are
    ``conv_transpose``'s, below."""
    return _conv_transpose(x, weight, bias, stride, padding, output_padding, groups,
                           dilation, backend, algorithm, activation, negative_slope,
                           rank=3, out=out)


def conv_transpose_backward(grad_y: ArrayLike, x: ArrayLike, weight: ArrayLike,
                            stride: IntOrTuple = 1, padding: Padding = 0,
                            output_padding: IntOrTuple = 0, groups: int = 1,
                            dilation: IntOrTuple = 1, *,
                            needs: _Needs = ("x", "weight", "bias"),
                            backend: Optional[str] = None, algorithm: str = "auto",
                            activation: Optional[str] = None,
                            negative_slope: float = _SLOPE, y: Optional[ArrayLike] = None,
                            out: Optional[Sequence[Optional[ArrayLike]]] = None) -> Grads:
    """Gradients of ``conv_transpose`` with respect to x, weight and bias:
    ``(grad_x, grad_weight, grad_bias)``, with ``None`` for the names not in ``needs``.

    Parameters
    ----------
    grad_y : array
        d loss / d y, the shape of ``conv_transpose``'s result.
    x, weight : array
        The forward call's inputs.
    stride, padding, output_padding, groups, dilation
        As given to ``conv_transpose``.
    needs, backend, algorithm, activation, negative_slope, y, out
        As in ``conv_backward``.

    Returns
    -------
    tuple
        ``(grad_x, grad_weight, grad_bias)``, shaped like ``x``, ``weight`` and
        ``(C_out,)``, of the type of ``grad_y``; ``None`` for a name not in ``needs``.

    Raises
    ------
    TypeError, ValueError, NotImplementedError, cnnfast.BackendUnavailable
        As ``conv_backward``.

    Examples
    --------
    >>> import numpy as np, cnnfast
    >>> cnnfast.conv_transpose_backward(np.ones((1, 1, 4)), np.ones((1, 1, 2)),
    ...                                 np.ones((1, 1, 2)), stride=2)
    (array([[[2., 2.]]]), array([[[2., 2.]]]), array([4.]))
    """
    return bridged(_run_conv_transpose_backward, _GRAD_ARRAYS, (grad_y, x, weight, y), out,
                    stride, padding, output_padding, groups, dilation, needs, backend,
                    algorithm, activation, negative_slope)


def _run_conv_transpose_backward(grad_y, x, weight, y, stride, padding, output_padding,
                                 groups, dilation, needs, backend, algorithm, activation,
                                 negative_slope, out):
    plan_key = _plan_key("conv_transpose_backward", (grad_y, x, weight, y), (
        stride, padding, output_padding, groups, dilation, needs, backend, algorithm,
        activation, negative_slope), out)
    plan = plans.find(plan_key)
    outs = _NO_GRAD_OUTS
    if plan is None:
        wanted = P.grad_needs(needs)
        kind, dtype = _check_arrays(grad_y=grad_y, x=x, weight=weight, y=y)
        P.check_rank(x, "x")
        p = P.with_algorithm(P.conv_transpose_params(x.shape, weight.shape, stride, padding,
                                                     output_padding, groups, dilation),
                             algorithm)
        p = P.with_activation(p, activation, negative_slope)
        plan, outs, early = _backward_plan("conv_transpose_backward", plan_key, kind, dtype,
                                           p, backend, grad_y, x, weight, y, wanted,
                                           weight.shape[1] * p.groups, out)
        if plan is None:
            return early
    return _run_backward(plan, grad_y, x, weight, y, outs)


# ----------------------------------------------------------------------------- pooling


def _max_pool(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices,
              backend, rank=None, out=None):
    return bridged(_run_max_pool, ("x",), (x,), out, kernel_size, stride, padding,
                    dilation, ceil_mode, return_indices, backend, rank)


def _run_max_pool(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices,
                  backend, rank, out):
    plan_key = _plan_key("max_pool", (x,), (kernel_size, stride, padding, dilation,
                                             ceil_mode, return_indices, backend, rank), out)
    plan = plans.find(plan_key)
    y_out = idx_out = None
    if plan is None:
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
            y = write(y_out, _empty(kind, out_shape, dtype))
            idx = _empty(kind, y.shape, "int64")
            return (y, write(idx_out, idx)) if return_indices else y
        plan = plans.make(plan_key, "max_pool", kind, dtype, p, backend, kernel)
    y, idx = _with_out(plan.kernel(), (_contiguous(x, plan.kind), plan.params,
                                       bool(return_indices)), (y_out, idx_out))
    y = write(y_out, y)
    return (y, write(idx_out, idx)) if return_indices else y


def max_pool(x: ArrayLike, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None,
             padding: Padding = 0, dilation: IntOrTuple = 1, ceil_mode: bool = False, *,
             return_indices: bool = False, backend: Optional[str] = None,
             out: Any = None) -> Any:
    """Max pooling of ``x`` (N, C, *spatial), spatial rank 1 to 3; NaN wins a window.

    Parameters
    ----------
    x : array
        (N, C, *spatial); numpy, cupy or any DLPack array, as in ``conv``.
    kernel_size : int or tuple of int
        The window, one int for every spatial dim or one per dim.
    stride : int or tuple of int, optional
        ``None``: the kernel size.
    padding : int or tuple
        An int, or one entry per dim (an int or a ``(before, after)`` pair); it may
        exceed ``kernel // 2`` as long as every window overlaps the input.
    dilation : int or tuple of int
        The spacing of the window's cells.
    ceil_mode : bool
        Round the output size up (a last window that would start past the input plus
        the leading padding is dropped).
    return_indices : bool
        Also return the winners' int64 flat offsets in each (n, c) plane of ``x`` (for
        ``max_pool_backward``; ties pick the first in scan order).
    backend : str, optional
        As in ``conv``.
    out : array or tuple, optional
        y's array; with ``return_indices=True`` a pair ``(y, indices)`` with ``None``
        for either.

    Returns
    -------
    array or tuple of arrays
        y, (N, C, *out_spatial), of the type of ``x``; with ``return_indices=True``
        ``(y, indices)``.

    Raises
    ------
    TypeError
        A non-float ``x``, a non-bool ``return_indices``, an argument of the wrong type.
    ValueError
        A bad kernel size, stride, padding or dilation (a window wholly in the padding,
        for one), a bad ``out``.
    cnnfast.BackendUnavailable
        The named backend is unavailable on this machine.

    Examples
    --------
    >>> import numpy as np, cnnfast
    >>> x = np.array([[[[2., 3, 1, 9], [4, 7, 3, 5], [8, 2, 2, 2], [1, 3, 4, 5]]]])
    >>> cnnfast.max_pool(x, 2, backend="numpy")[0, 0]
    array([[7., 9.],
           [8., 5.]])
    >>> y, indices = cnnfast.max_pool(x, 2, return_indices=True)
    >>> indices[0, 0]
    array([[ 5,  3],
           [ 8, 15]])
    >>> cnnfast.max_pool(np.array([[[1.0, np.nan, 3.0, 4.0]]]), 2)
    array([[[nan,  4.]]])
    """
    return _max_pool(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices,
                     backend, out=out)


def max_pool1d(x: ArrayLike, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None,
               padding: Padding = 0, dilation: IntOrTuple = 1, ceil_mode: bool = False, *,
               return_indices: bool = False, backend: Optional[str] = None,
               out: Any = None) -> Any:
    """Max pooling of ``x`` of shape (N, C, L): ``max_pool`` for 1-d inputs (an ``x``
    of another rank is a ``ValueError``). The arguments and the results are
    ``max_pool``'s, below."""
    return _max_pool(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices,
                     backend, rank=1, out=out)


def max_pool2d(x: ArrayLike, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None,
               padding: Padding = 0, dilation: IntOrTuple = 1, ceil_mode: bool = False, *,
               return_indices: bool = False, backend: Optional[str] = None,
               out: Any = None) -> Any:
    """Max pooling of ``x`` of shape (N, C, H, W): ``max_pool`` for 2-d inputs (an ``x``
    of another rank is a ``ValueError``). The arguments and the results are
    ``max_pool``'s, below."""
    return _max_pool(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices,
                     backend, rank=2, out=out)


def max_pool3d(x: ArrayLike, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None,
               padding: Padding = 0, dilation: IntOrTuple = 1, ceil_mode: bool = False, *,
               return_indices: bool = False, backend: Optional[str] = None,
               out: Any = None) -> Any:
    """Max pooling of ``x`` of shape (N, C, D, H, W): ``max_pool`` for 3-d inputs (an ``x``
    of another rank is a ``ValueError``). The arguments and the results are
    ``max_pool``'s, below."""
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


def max_pool_backward(grad_y: ArrayLike, indices: ArrayLike, x_shape: Sequence[int], *,
                      backend: Optional[str] = None,
                      out: Optional[ArrayLike] = None) -> ArrayLike:
    """Gradient of ``max_pool`` with respect to x, from the winners' ``indices``:
    each ``grad_y`` value is added to its window's winner.

    Parameters
    ----------
    grad_y : array
        d loss / d y, the shape of ``max_pool``'s result; numpy, cupy or any DLPack
        array.
    indices : array
        int64, as returned by ``max_pool(..., return_indices=True)``; the shape of
        ``grad_y``, the same device.
    x_shape : tuple of int
        The shape of the forward call's ``x``.
    backend : str, optional
        As in ``conv``.
    out : array, optional
        grad_x's array (checked as ``conv``'s ``out``).

    Returns
    -------
    array
        grad_x, of shape ``x_shape``, of the type of ``grad_y``.

    Raises
    ------
    TypeError
        ``indices`` not int64 or on another device; a bad ``x_shape`` type.
    ValueError
        Shapes that do not match; an index outside its plane; a bad ``out``.
    cnnfast.BackendUnavailable
        The named backend is unavailable on this machine.

    Examples
    --------
    >>> import numpy as np, cnnfast
    >>> x = np.array([[[[2., 3, 1, 9], [4, 7, 3, 5], [8, 2, 2, 2], [1, 3, 4, 5]]]])
    >>> y, indices = cnnfast.max_pool(x, 2, return_indices=True)
    >>> cnnfast.max_pool_backward(np.ones_like(y), indices, x.shape)[0, 0]
    array([[0., 0., 0., 1.],
           [0., 1., 0., 0.],
           [1., 0., 0., 0.],
           [0., 0., 0., 1.]])
    """
    return bridged(_run_max_pool_backward, ("grad_y", "indices"), (grad_y, indices), out,
                    x_shape, backend)


def _indices_outside(indices, plane) -> bool:
    """Whether an index lies outside ``[0, plane)``. numpy: one pass, as unsigned a
    negative index is above every plane size (min and max would read the indices
    twice, a fifth of a fast kernel's time)."""
    if isinstance(indices, np.ndarray):  # int64 (checked), either byte order
        return int(indices.view(indices.dtype.str.replace("i", "u")).max()) >= plane
    return int(indices.min()) < 0 or int(indices.max()) >= plane


def _run_max_pool_backward(grad_y, indices, x_shape, backend, out):
    plan_key = _plan_key("max_pool_backward", (grad_y, indices), (x_shape, backend), out)
    plan = plans.find(plan_key)
    if plan is None:
        plan = _plan_max_pool_backward(grad_y, indices, x_shape, backend, out, plan_key)
    else:
        _check_indices(indices, plan.params)  # their values: on every call
    if grad_y.size == 0:
        return write(out, _empty(plan.kind, plan.params, dtype_name(grad_y.dtype)))
    return write(out, _with_out(plan.kernel(), (_contiguous(grad_y, plan.kind),
                                                _contiguous(indices, plan.kind),
                                                plan.params), out))


def _check_indices(indices, x_shape):
    plane = P.prod(x_shape[2:])
    if indices.size and _indices_outside(indices, plane):
        raise ValueError(f"indices must lie in [0, {plane}) (flat offsets into each "
                         f"(n, c) plane of x_shape={x_shape}); got values in "
                         f"[{int(indices.min())}, {int(indices.max())}]")


def _plan_max_pool_backward(grad_y, indices, x_shape, backend, out, plan_key):
    """The plan of a max_pool_backward call, after every check (kept unless ``grad_y``
    is empty: the dispatcher computes that case)."""
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
    _check_indices(indices, x_shape)
    kernel = _select("max_pool_backward", kind, dtype, x_shape, backend)
    return plans.make(plan_key if grad_y.size else None, "max_pool_backward", kind, dtype,
                      x_shape, backend, kernel)


def _avg_pool(x, kernel_size, stride, padding, ceil_mode, count_include_pad,
              divisor_override, dilation, backend, rank=None, out=None):
    return bridged(_run_avg_pool, ("x",), (x,), out, kernel_size, stride, padding,
                    ceil_mode, count_include_pad, divisor_override, dilation, backend, rank)


def _run_avg_pool(x, kernel_size, stride, padding, ceil_mode, count_include_pad,
                  divisor_override, dilation, backend, rank, out):
    plan_key = _plan_key("avg_pool", (x,), (kernel_size, stride, padding, ceil_mode,
                                             count_include_pad, divisor_override, dilation,
                                             backend, rank), out)
    plan = plans.find(plan_key)
    if plan is None:
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
        plan = plans.make(plan_key, "avg_pool", kind, dtype, p, backend, kernel)
    return write(out, _with_out(plan.kernel(), (_contiguous(x, plan.kind), plan.params), out))


def avg_pool(x: ArrayLike, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None,
             padding: Padding = 0, ceil_mode: bool = False, count_include_pad: bool = True,
             divisor_override: Optional[int] = None, *, dilation: IntOrTuple = 1,
             backend: Optional[str] = None, out: Optional[ArrayLike] = None) -> ArrayLike:
    """Average pooling of ``x`` (N, C, *spatial), spatial rank 1 to 3 (ONNX's
    ``dilation`` supported as well).

    Parameters
    ----------
    x : array
        (N, C, *spatial); numpy, cupy or any DLPack array, as in ``conv``.
    kernel_size, stride, padding, ceil_mode
        As in ``max_pool``.
    count_include_pad : bool
        Divide by the window's cells inside input-plus-padding (``True``) or inside
        the input only (``False``).
    divisor_override : int, optional
        Divide every window by this instead.
    dilation : int or tuple of int
        The spacing of the window's cells (keyword-only; torch has none).
    backend, out
        As in ``conv``.

    Returns
    -------
    array
        y, (N, C, *out_spatial), of the type of ``x`` (or ``out``).

    Raises
    ------
    TypeError, ValueError, cnnfast.BackendUnavailable
        As ``max_pool``; also a ``divisor_override`` that is not a positive int.

    Examples
    --------
    >>> import numpy as np, cnnfast
    >>> x = np.array([[[[2., 1, 1, 3], [4, 5, 2, 1], [1, 4, 5, 3], [5, 1, 7, 6]]]])
    >>> cnnfast.avg_pool(x, 2, backend="numpy")[0, 0]
    array([[3.  , 1.75],
           [2.75, 5.25]])
    >>> cnnfast.avg_pool(np.array([[[1.0, 2, 3, 4, 5]]]), 2, padding=1,
    ...                  count_include_pad=False)
    array([[[1. , 2.5, 4.5]]])
    """
    return _avg_pool(x, kernel_size, stride, padding, ceil_mode, count_include_pad,
                     divisor_override, dilation, backend, out=out)


def avg_pool1d(x: ArrayLike, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None,
               padding: Padding = 0, ceil_mode: bool = False,
               count_include_pad: bool = True, divisor_override: Optional[int] = None, *,
               dilation: IntOrTuple = 1, backend: Optional[str] = None,
               out: Optional[ArrayLike] = None) -> ArrayLike:
    """Average pooling of ``x`` of shape (N, C, L): ``avg_pool`` for 1-d inputs (an ``x``
    of another rank is a ``ValueError``). The arguments and the results are
    ``avg_pool``'s, below."""
    return _avg_pool(x, kernel_size, stride, padding, ceil_mode, count_include_pad,
                     divisor_override, dilation, backend, rank=1, out=out)


def avg_pool2d(x: ArrayLike, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None,
               padding: Padding = 0, ceil_mode: bool = False,
               count_include_pad: bool = True, divisor_override: Optional[int] = None, *,
               dilation: IntOrTuple = 1, backend: Optional[str] = None,
               out: Optional[ArrayLike] = None) -> ArrayLike:
    """Average pooling of ``x`` of shape (N, C, H, W): ``avg_pool`` for 2-d inputs (an ``x``
    of another rank is a ``ValueError``). The arguments and the results are
    ``avg_pool``'s, below."""
    return _avg_pool(x, kernel_size, stride, padding, ceil_mode, count_include_pad,
                     divisor_override, dilation, backend, rank=2, out=out)


def avg_pool3d(x: ArrayLike, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None,
               padding: Padding = 0, ceil_mode: bool = False,
               count_include_pad: bool = True, divisor_override: Optional[int] = None, *,
               dilation: IntOrTuple = 1, backend: Optional[str] = None,
               out: Optional[ArrayLike] = None) -> ArrayLike:
    """Average pooling of ``x`` of shape (N, C, D, H, W): ``avg_pool`` for 3-d inputs (an ``x``
    of another rank is a ``ValueError``). The arguments and the results are
    ``avg_pool``'s, below."""
    return _avg_pool(x, kernel_size, stride, padding, ceil_mode, count_include_pad,
                     divisor_override, dilation, backend, rank=3, out=out)


def avg_pool_backward(grad_y: ArrayLike, x_shape: Sequence[int], kernel_size: IntOrTuple,
                      stride: Optional[IntOrTuple] = None, padding: Padding = 0,
                      ceil_mode: bool = False, count_include_pad: bool = True,
                      divisor_override: Optional[int] = None, *, dilation: IntOrTuple = 1,
                      backend: Optional[str] = None,
                      out: Optional[ArrayLike] = None) -> ArrayLike:
    """Gradient of ``avg_pool`` with respect to x.

    Parameters
    ----------
    grad_y : array
        d loss / d y, the shape of ``avg_pool``'s result; numpy, cupy or any DLPack
        array.
    x_shape : tuple of int
        The shape of the forward call's ``x``.
    kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, dilation
        As given to ``avg_pool``.
    backend : str, optional
        As in ``conv``.
    out : array, optional
        grad_x's array (checked as ``conv``'s ``out``).

    Returns
    -------
    array
        grad_x, of shape ``x_shape``, of the type of ``grad_y``.

    Raises
    ------
    TypeError, ValueError, cnnfast.BackendUnavailable
        As ``avg_pool``; also a ``grad_y`` not shaped like the forward result.

    Examples
    --------
    >>> import numpy as np, cnnfast
    >>> cnnfast.avg_pool_backward(np.ones((1, 1, 1, 2)), (1, 1, 2, 4), 2)
    array([[[[0.25, 0.25, 0.25, 0.25],
             [0.25, 0.25, 0.25, 0.25]]]])
    """
    return bridged(_run_avg_pool_backward, ("grad_y",), (grad_y,), out, x_shape,
                    kernel_size, stride, padding, ceil_mode, count_include_pad,
                    divisor_override, dilation, backend)


def _run_avg_pool_backward(grad_y, x_shape, kernel_size, stride, padding, ceil_mode,
                           count_include_pad, divisor_override, dilation, backend, out):
    plan_key = _plan_key("avg_pool_backward", (grad_y,), (
        x_shape, kernel_size, stride, padding, ceil_mode, count_include_pad,
        divisor_override, dilation, backend), out)
    plan = plans.find(plan_key)
    if plan is None:
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
        plan = plans.make(plan_key, "avg_pool_backward", kind, dtype, p, backend, kernel)
    return write(out, _with_out(plan.kernel(), (_contiguous(grad_y, plan.kind), plan.params),
                                out))


def _share_sections(general, *variants) -> None:
    """Append ``general``'s Parameters ... Examples sections to each rank variant's own
    docstring, so that ``help(cnnfast.max_pool2d)`` stands on its own (docstrings
    stripped by ``python -OO``: nothing to do)."""
    doc = general.__doc__
    if doc is None:
        return
    sections = doc[doc.index("\n    Parameters\n"):]
    for fn in variants:
        if fn.__doc__ is not None:
            fn.__doc__ = fn.__doc__.rstrip() + "\n" + sections


_share_sections(conv, conv1d, conv2d, conv3d)
_share_sections(conv_transpose, conv_transpose1d, conv_transpose2d, conv_transpose3d)
_share_sections(max_pool, max_pool1d, max_pool2d, max_pool3d)
_share_sections(avg_pool, avg_pool1d, avg_pool2d, avg_pool3d)


_EXPLAINABLE = {fn.__name__: fn for fn in (
    conv, conv1d, conv2d, conv3d, conv_backward,
    conv_transpose, conv_transpose1d, conv_transpose2d, conv_transpose3d,
    conv_transpose_backward,
    max_pool, max_pool1d, max_pool2d, max_pool3d, max_pool_backward,
    avg_pool, avg_pool1d, avg_pool2d, avg_pool3d, avg_pool_backward)}
