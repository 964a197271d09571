"""The JAX functions of ``cnnfast.jax``: ``jax.pure_callback`` into cnnfast's kernels,
with a ``jax.custom_vjp`` through cnnfast's backward functions (see ``__init__``)."""

from __future__ import annotations

import functools
from typing import Any, List, Optional

import jax
import jax.numpy as jnp
import numpy as np

from .. import api
from .. import params as P
from ..api import IntOrTuple, Padding

#: A JAX array (or anything ``jax.numpy.asarray`` takes).
Array = Any

# What the kernels compute in (cnnfast's CPU backends).
DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

# The callbacks take the vmapped (leading) dims themselves: see _fold_or_loop.
VMAP_METHOD = "expand_dims"


# ----------------------------------------------------------------------------- helpers


def _freeze(value, name):
    """A static parameter as a hashable value (lists become tuples)."""
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v, name) for v in value)
    if isinstance(value, np.ndarray):
        return _freeze(value.tolist(), name)
    if isinstance(value, (jax.Array, jax.core.Tracer)):
        raise TypeError(f"{name} must be a static Python value (an int, a tuple of ints, "
                        f"a string, ...), not a JAX array")
    try:
        hash(value)
    except TypeError:
        raise TypeError(f"{name}={value!r} must be hashable (a static Python value)") \
            from None
    return value


def _array(a, name):
    a = jnp.asarray(a)
    if a.dtype not in DTYPES:
        raise TypeError(f"{name} has dtype {a.dtype}; cnnfast.jax computes in float32 or "
                        f"float64 (float64 needs jax.config.update('jax_enable_x64', "
                        f"True)); cast it explicitly")
    return a


def _same_dtype(x, **others):
    for name, a in others.items():
        if a is not None and a.dtype != x.dtype:
            raise TypeError(f"{name} has dtype {a.dtype} but x has dtype {x.dtype}; "
                            f"mixed dtypes are not allowed (cast one of them explicitly)")


def _np(a):
    return None if a is None else np.asarray(a)


def _fold_or_loop(fn, arrays, core_ndims, fold, out_shapes=None):
    """Run ``fn`` (numpy arrays in, a tuple of numpy arrays out) on ``arrays`` that may
    carry extra leading (vmapped) dims, as ``vmap_method="expand_dims"`` passes them
    (an unbatched argument has size 1 there).

    ``fold``: the indices of the arrays whose first core dim is the batch dim N, where
    every output's first dim is N as well and ``fn`` treats the N items independently
    (pooling, its gradients, a convolution's forward). When every other array is
    unbatched, the leading dims are folded into N: one call of ``fn``. Otherwise (or
    ``fold=None``) ``fn`` runs once per vmapped item, inside this one callback.
    ``out_shapes``: the outputs' unbatched shapes (for a vmapped axis of size 0)."""
    nlead = next(a.ndim - k for a, k in zip(arrays, core_ndims) if a is not None)
    if nlead == 0:
        return tuple(fn(*arrays))
    lead = np.broadcast_shapes(*(a.shape[:nlead] for a in arrays if a is not None))
    count = P.prod(lead)
    if count == 0:
        return tuple(np.zeros(lead + tuple(s)) for s in out_shapes)
    if fold is not None and all(a is None or i in fold or P.prod(a.shape[:nlead]) == 1
                                for i, a in enumerate(arrays)):
        args: List[Optional[np.ndarray]] = []
        for i, a in enumerate(arrays):
            if a is None:
                args.append(None)
            elif i in fold:
                a = np.broadcast_to(a, lead + a.shape[nlead:])
                args.append(np.ascontiguousarray(a).reshape((-1,) + a.shape[nlead + 1:]))
            else:
                args.append(a.reshape(a.shape[nlead:]))
        n = arrays[fold[0]].shape[nlead]
        return tuple(o.reshape(lead + (n,) + o.shape[1:]) for o in fn(*args))
    flat = [None if a is None else
            np.broadcast_to(a, lead + a.shape[nlead:]).reshape((count,) + a.shape[nlead:])
            for a in arrays]
    results = [tuple(fn(*[None if a is None else a[b] for a in flat]))
               for b in range(count)]
    return tuple(np.stack([r[j] for r in results]).reshape(lead + results[0][j].shape)
                 for j in range(len(results[0])))


def _callback(fn, out_structs, arrays, core_ndims, fold):
    """``jax.pure_callback`` of ``fn`` over ``arrays`` (``None`` entries stay ``None``),
    the results cast to ``out_structs``' dtypes."""
    present = [i for i, a in enumerate(arrays) if a is not None]
    dtypes = [s.dtype for s in out_structs]

    def host(*given):
        full = [None] * len(arrays)
        for i, a in zip(present, given):
            full[i] = _np(a)
        outs = _fold_or_loop(fn, full, core_ndims, fold, [st.shape for st in out_structs])
        return tuple(np.asarray(o, dtype=d) for o, d in zip(outs, dtypes))

    return jax.pure_callback(host, tuple(out_structs), *[arrays[i] for i in present],
                             vmap_method=VMAP_METHOD)


# ----------------------------------------------------------------------------- conv


@functools.lru_cache(maxsize=None)
def _conv_op(transposed, has_bias, geometry, backend, algorithm):
    """The custom_vjp function of (x, weight[, bias]) for one static configuration;
    ``geometry``: (stride, padding, dilation, groups) for a convolution,
    (stride, padding, output_padding, groups, dilation) for a transposed one."""
    forward_fn = api.conv_transpose if transposed else api.conv
    backward_fn = api.conv_transpose_backward if transposed else api.conv_backward
    kw = {"backend": backend, "algorithm": algorithm}
    needs = ("x", "weight", "bias") if has_bias else ("x", "weight")

    def out_shape(x_shape, w_shape):
        if transposed:
            p = P.conv_transpose_params(x_shape, w_shape, *geometry)
            return (x_shape[0], w_shape[1] * p.groups) + p.out_shape
        p = P.conv_params(x_shape, w_shape, *geometry)
        return (x_shape[0], w_shape[0]) + p.out_shape

    def forward(x, w, b):
        nd = x.ndim
        struct = jax.ShapeDtypeStruct(out_shape(x.shape, w.shape), x.dtype)

        def run(x, w, b):
            return (forward_fn(x, w, b, *geometry, **kw),)

        return _callback(run, [struct], (x, w, b), (nd, nd, 1), fold=(0,))[0]

    def backward(g, x, w):
        nd = x.ndim
        c_out = w.shape[1] * geometry[3] if transposed else w.shape[0]
        structs = [jax.ShapeDtypeStruct(x.shape, x.dtype),
                   jax.ShapeDtypeStruct(w.shape, w.dtype)]
        if has_bias:
            structs.append(jax.ShapeDtypeStruct((c_out,), x.dtype))

        def run(g, x, w):
            return backward_fn(g, x, w, *geometry, needs=needs, **kw)[:len(needs)]

        # grad_weight sums over N: no folding of vmapped dims into N.
        return _callback(run, structs, (g, x, w), (nd, nd, nd), fold=None)

    if has_bias:
        @jax.custom_vjp
        def op(x, w, b):
            return forward(x, w, b)

        def op_fwd(x, w, b):
            return forward(x, w, b), (x, w)
    else:
        @jax.custom_vjp
        def op(x, w):
            return forward(x, w, None)

        def op_fwd(x, w):  # type: ignore[misc]  # the bias-free variant: two arrays
            return forward(x, w, None), (x, w)

    def op_bwd(res, g):
        x, w = res
        return tuple(backward(g, x, w))

    op.defvjp(op_fwd, op_bwd)
    return op


def _conv(transposed, x, weight, bias, geometry, backend, algorithm, rank):
    x = _array(x, "x")
    weight = _array(weight, "weight")
    bias = None if bias is None else _array(bias, "bias")
    _same_dtype(x, weight=weight, bias=bias)
    P.check_rank(x, "x", rank)
    geometry = tuple(_freeze(v, name) for v, name in zip(geometry, (
        ("stride", "padding", "output_padding", "groups", "dilation") if transposed
        else ("stride", "padding", "dilation", "groups"))))
    op = _conv_op(transposed, bias is not None, geometry, _freeze(backend, "backend"),
                  _freeze(algorithm, "algorithm"))
    # Validate the parameters (and bias's shape) at trace time, with cnnfast's errors.
    if transposed:
        p = P.conv_transpose_params(x.shape, weight.shape, *geometry)
        channels = weight.shape[1] * p.groups
    else:
        P.conv_params(x.shape, weight.shape, *geometry)
        channels = weight.shape[0]
    if bias is not None and tuple(bias.shape) != (channels,):
        raise ValueError(f"bias has shape {tuple(bias.shape)}; expected ({channels},) "
                         f"(one value per output channel) or None")
    return op(x, weight) if bias is None else op(x, weight, bias)


def conv(x: Array, weight: Array, bias: Optional[Array] = None, stride: IntOrTuple = 1,
         padding: Padding = 0, dilation: IntOrTuple = 1, groups: int = 1, *,
         backend: Optional[str] = None, algorithm: str = "auto") -> Array:
    """``cnnfast.conv`` on JAX arrays (the rank from ``x``), differentiable in x,
    weight and bias; the other parameters are static Python values."""
    return _conv(False, x, weight, bias, (stride, padding, dilation, groups), backend,
                 algorithm, None)


def conv1d(x: Array, weight: Array, bias: Optional[Array] = None, stride: IntOrTuple = 1,
           padding: Padding = 0, dilation: IntOrTuple = 1, groups: int = 1, *,
           backend: Optional[str] = None, algorithm: str = "auto") -> Array:
    """``conv`` for ``x`` of shape (N, C, L)."""
    return _conv(False, x, weight, bias, (stride, padding, dilation, groups), backend,
                 algorithm, 1)


def conv2d(x: Array, weight: Array, bias: Optional[Array] = None, stride: IntOrTuple = 1,
           padding: Padding = 0, dilation: IntOrTuple = 1, groups: int = 1, *,
           backend: Optional[str] = None, algorithm: str = "auto") -> Array:
    """``conv`` for ``x`` of shape (N, C, H, W)."""
    return _conv(False, x, weight, bias, (stride, padding, dilation, groups), backend,
                 algorithm, 2)


def conv3d(x: Array, weight: Array, bias: Optional[Array] = None, stride: IntOrTuple = 1,
           padding: Padding = 0, dilation: IntOrTuple = 1, groups: int = 1, *,
           backend: Optional[str] = None, algorithm: str = "auto") -> Array:
    """``conv`` for ``x`` of shape (N, C, D, H, W)."""
    return _conv(False, x, weight, bias, (stride, padding, dilation, groups), backend,
                 algorithm, 3)


def conv_transpose(x: Array, weight: Array, bias: Optional[Array] = None,
                   stride: IntOrTuple = 1, padding: Padding = 0,
                   output_padding: IntOrTuple = 0, groups: int = 1,
                   dilation: IntOrTuple = 1, *, backend: Optional[str] = None,
                   algorithm: str = "auto") -> Array:
    """``cnnfast.conv_transpose`` on JAX arrays (the rank from ``x``), differentiable
    in x, weight and bias."""
    return _conv(True, x, weight, bias, (stride, padding, output_padding, groups, dilation),
                 backend, algorithm, None)


def conv_transpose1d(x: Array, weight: Array, bias: Optional[Array] = None,
                     stride: IntOrTuple = 1, padding: Padding = 0,
                     output_padding: IntOrTuple = 0, groups: int = 1,
                     dilation: IntOrTuple = 1, *, backend: Optional[str] = None,
                     algorithm: str = "auto") -> Array:
    """``conv_transpose`` for ``x`` of shape (N, C, L)."""
    return _conv(True, x, weight, bias, (stride, padding, output_padding, groups, dilation),
                 backend, algorithm, 1)


def conv_transpose2d(x: Array, weight: Array, bias: Optional[Array] = None,
                     stride: IntOrTuple = 1, padding: Padding = 0,
                     output_padding: IntOrTuple = 0, groups: int = 1,
                     dilation: IntOrTuple = 1, *, backend: Optional[str] = None,
                     algorithm: str = "auto") -> Array:
    """``conv_transpose`` for ``x`` of shape (N, C, H, W)."""
    return _conv(True, x, weight, bias, (stride, padding, output_padding, groups, dilation),
                 backend, algorithm, 2)


def conv_transpose3d(x: Array, weight: Array, bias: Optional[Array] = None,
                     stride: IntOrTuple = 1, padding: Padding = 0,
                     output_padding: IntOrTuple = 0, groups: int = 1,
                     dilation: IntOrTuple = 1, *, backend: Optional[str] = None,
                     algorithm: str = "auto") -> Array:
    """``conv_transpose`` for ``x`` of shape (N, C, D, H, W)."""
    return _conv(True, x, weight, bias, (stride, padding, output_padding, groups, dilation),
                 backend, algorithm, 3)


# ----------------------------------------------------------------------------- max_pool


def _index_dtype():
    # int64 as cnnfast returns it, or int32 where JAX runs without x64.
    return jnp.dtype(jax.dtypes.canonicalize_dtype(np.int64))


@functools.lru_cache(maxsize=None)
def _max_pool_op(return_indices, geometry, backend):
    kernel_size, stride, padding, dilation, ceil_mode = geometry

    def forward(x, with_indices):
        nd = x.ndim
        p = P.pool_params(x.shape, *geometry)
        shape = x.shape[:2] + p.out_shape
        structs = [jax.ShapeDtypeStruct(shape, x.dtype)]
        if with_indices:
            structs.append(jax.ShapeDtypeStruct(shape, _index_dtype()))

        def run(x):
            return api.max_pool(x, *geometry, return_indices=with_indices,
                                backend=backend) if with_indices else \
                (api.max_pool(x, *geometry, backend=backend),)

        return _callback(run, structs, (x,), (nd,), fold=(0,))

    def backward(g, indices, x):
        nd = x.ndim
        x_shape = tuple(x.shape)

        def run(g, i):
            shape = (g.shape[0],) + x_shape[1:]
            return (api.max_pool_backward(g, i.astype(np.int64, copy=False), shape,
                                          backend=backend),)

        return _callback(run, [jax.ShapeDtypeStruct(x.shape, x.dtype)], (g, indices),
                         (nd, nd), fold=(0, 1))[0]

    if return_indices:
        @jax.custom_vjp
        def op(x):
            return tuple(forward(x, True))

        def op_fwd(x):
            y, indices = forward(x, True)
            return (y, indices), (indices, x)

        def op_bwd(res, gs):
            indices, x = res
            return (backward(gs[0], indices, x),)
    else:
        @jax.custom_vjp
        def op(x):
            return forward(x, False)[0]

        def op_fwd(x):
            y, indices = forward(x, True)
            return y, (indices, x)

        def op_bwd(res, g):
            indices, x = res
            return (backward(g, indices, x),)

    op.defvjp(op_fwd, op_bwd)
    return op


def _max_pool(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices, backend,
              rank):
    x = _array(x, "x")
    P.check_rank(x, "x", rank)
    if not isinstance(return_indices, (bool, np.bool_)):
        raise TypeError(f"return_indices={return_indices!r} must be a bool")
    geometry = (_freeze(kernel_size, "kernel_size"), _freeze(stride, "stride"),
                _freeze(padding, "padding"), _freeze(dilation, "dilation"),
                _freeze(ceil_mode, "ceil_mode"))
    P.pool_params(x.shape, *geometry)  # trace-time validation, cnnfast's errors
    return _max_pool_op(bool(return_indices), geometry, _freeze(backend, "backend"))(x)


def max_pool(x: Array, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None,
             padding: Padding = 0, dilation: IntOrTuple = 1, ceil_mode: bool = False, *,
             return_indices: bool = False, backend: Optional[str] = None) -> Any:
    """``cnnfast.max_pool`` on JAX arrays, differentiable in x. With
    ``return_indices=True`` also the winners' flat offsets in each (n, c) plane (int64,
    or int32 where JAX runs without x64; not differentiable)."""
    return _max_pool(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices,
                     backend, None)


def max_pool1d(x: Array, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None,
               padding: Padding = 0, dilation: IntOrTuple = 1, ceil_mode: bool = False, *,
               return_indices: bool = False, backend: Optional[str] = None) -> Any:
    """``max_pool`` for ``x`` of shape (N, C, L)."""
    return _max_pool(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices,
                     backend, 1)


def max_pool2d(x: Array, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None,
               padding: Padding = 0, dilation: IntOrTuple = 1, ceil_mode: bool = False, *,
               return_indices: bool = False, backend: Optional[str] = None) -> Any:
    """``max_pool`` for ``x`` of shape (N, C, H, W)."""
    return _max_pool(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices,
                     backend, 2)


def max_pool3d(x: Array, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None,
               padding: Padding = 0, dilation: IntOrTuple = 1, ceil_mode: bool = False, *,
               return_indices: bool = False, backend: Optional[str] = None) -> Any:
    """``max_pool`` for ``x`` of shape (N, C, D, H, W)."""
    return _max_pool(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices,
                     backend, 3)


# ----------------------------------------------------------------------------- avg_pool


@functools.lru_cache(maxsize=None)
def _avg_pool_op(geometry, dilation, backend):
    # geometry: (kernel_size, stride, padding, ceil_mode, count_include_pad,
    # divisor_override), in cnnfast.avg_pool's order.
    kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override = geometry

    def forward(x):
        nd = x.ndim
        p = P.pool_params(x.shape, kernel_size, stride, padding, dilation, ceil_mode,
                          count_include_pad, divisor_override)
        struct = jax.ShapeDtypeStruct(x.shape[:2] + p.out_shape, x.dtype)

        def run(x):
            return (api.avg_pool(x, *geometry, dilation=dilation, backend=backend),)

        return _callback(run, [struct], (x,), (nd,), fold=(0,))[0]

    def backward(g, x):
        nd = x.ndim
        x_shape = tuple(x.shape)

        def run(g):
            shape = (g.shape[0],) + x_shape[1:]
            return (api.avg_pool_backward(g, shape, *geometry, dilation=dilation,
                                          backend=backend),)

        return _callback(run, [jax.ShapeDtypeStruct(x.shape, x.dtype)], (g,), (nd,),
                         fold=(0,))[0]

    @jax.custom_vjp
    def op(x):
        return forward(x)

    def op_fwd(x):
        # x is kept for its shape and dtype only (no copy: it is the caller's array).
        return forward(x), x

    def op_bwd(x, g):
        return (backward(g, x),)

    op.defvjp(op_fwd, op_bwd)
    return op


def _avg_pool(x, kernel_size, stride, padding, ceil_mode, count_include_pad,
              divisor_override, dilation, backend, rank):
    x = _array(x, "x")
    P.check_rank(x, "x", rank)
    geometry = (_freeze(kernel_size, "kernel_size"), _freeze(stride, "stride"),
                _freeze(padding, "padding"), _freeze(ceil_mode, "ceil_mode"),
                _freeze(count_include_pad, "count_include_pad"),
                _freeze(divisor_override, "divisor_override"))
    dilation = _freeze(dilation, "dilation")
    P.pool_params(x.shape, geometry[0], geometry[1], geometry[2], dilation, *geometry[3:])
    return _avg_pool_op(geometry, dilation, _freeze(backend, "backend"))(x)


def avg_pool(x: Array, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None,
             padding: Padding = 0, ceil_mode: bool = False,
             count_include_pad: bool = True, divisor_override: Optional[int] = None, *,
             dilation: IntOrTuple = 1, backend: Optional[str] = None) -> Array:
    """``cnnfast.avg_pool`` on JAX arrays, differentiable in x."""
    return _avg_pool(x, kernel_size, stride, padding, ceil_mode, count_include_pad,
                     divisor_override, dilation, backend, None)


def avg_pool1d(x: Array, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None,
               padding: Padding = 0, ceil_mode: bool = False,
               count_include_pad: bool = True, divisor_override: Optional[int] = None, *,
               dilation: IntOrTuple = 1, backend: Optional[str] = None) -> Array:
    """``avg_pool`` for ``x`` of shape (N, C, L)."""
    return _avg_pool(x, kernel_size, stride, padding, ceil_mode, count_include_pad,
                     divisor_override, dilation, backend, 1)


def avg_pool2d(x: Array, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None,
               padding: Padding = 0, ceil_mode: bool = False,
               count_include_pad: bool = True, divisor_override: Optional[int] = None, *,
               dilation: IntOrTuple = 1, backend: Optional[str] = None) -> Array:
    """``avg_pool`` for ``x`` of shape (N, C, H, W)."""
    return _avg_pool(x, kernel_size, stride, padding, ceil_mode, count_include_pad,
                     divisor_override, dilation, backend, 2)


def avg_pool3d(x: Array, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None,
               padding: Padding = 0, ceil_mode: bool = False,
               count_include_pad: bool = True, divisor_override: Optional[int] = None, *,
               dilation: IntOrTuple = 1, backend: Optional[str] = None) -> Array:
    """``avg_pool`` for ``x`` of shape (N, C, D, H, W)."""
    return _avg_pool(x, kernel_size, stride, padding, ceil_mode, count_include_pad,
                     divisor_override, dilation, backend, 3)
