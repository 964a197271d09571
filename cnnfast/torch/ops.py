"""cnnfast's kernels as PyTorch custom operators, with autograd, and the functional
wrappers over them (``conv2d``, ``max_pool2d``, ... as in ``torch.nn.functional``).

Operators (namespace ``cnnfast``, one per operation, generic over the rank 1-3)::

    cnnfast::conv(Tensor x, Tensor weight, Tensor? bias, SymInt[] stride,
                  SymInt[] padding, SymInt[] dilation, SymInt groups) -> Tensor
    cnnfast::conv_backward(Tensor grad_y, Tensor x, Tensor weight, SymInt[] stride,
                  SymInt[] padding, SymInt[] dilation, SymInt groups, bool[] needs)
                  -> Tensor[]
    cnnfast::conv_transpose(Tensor x, Tensor weight, Tensor? bias, SymInt[] stride,
                  SymInt[] padding, SymInt[] output_padding, SymInt groups,
                  SymInt[] dilation) -> Tensor
    cnnfast::conv_transpose_backward(Tensor grad_y, Tensor x, Tensor weight, ...,
                  bool[] needs) -> Tensor[]
    cnnfast::max_pool(Tensor x, SymInt[] kernel_size, SymInt[] stride, SymInt[] padding,
                  SymInt[] dilation, bool ceil_mode) -> Tensor
    cnnfast::max_pool_with_indices(... the same ...) -> (Tensor, Tensor)
    cnnfast::max_pool_backward(Tensor grad_y, Tensor indices, SymInt[] x_shape) -> Tensor
    cnnfast::avg_pool(Tensor x, SymInt[] kernel_size, SymInt[] stride, SymInt[] padding,
                  bool ceil_mode, bool count_include_pad, SymInt? divisor_override,
                  SymInt[] dilation) -> Tensor
    cnnfast::avg_pool_backward(Tensor grad_y, SymInt[] x_shape, SymInt[] kernel_size,
                  ... as avg_pool ...) -> Tensor

The operators take normalised arguments only: one int per spatial dim for stride,
dilation, kernel_size and output_padding, and ``padding`` as ``(before, after)`` per
spatial dim, flattened (``[b0, a0, b1, a1, ...]``, so asymmetric padding is
expressible). ``"same"``/``"valid"`` and the int-or-tuple forms are resolved by the
functional wrappers below, which accept everything ``cnnfast``'s API accepts (a
superset of torch's: asymmetric padding, pooling padding past ``kernel // 2``,
``dilation`` in average pooling). A ``needs`` entry is ``True`` for each gradient
(x, weight, bias) to compute; ``Tensor[]`` holds the requested ones in that order.

Each operator has a fake (meta) implementation that infers the output shape with
``cnnfast.params``'s rules without running a kernel (the same validation and errors
as the kernel call when the shapes are concrete), and the forward operators have an
autograd formula through the backward operators, which compute only the gradients
that autograd needs (``ctx.needs_input_grad``). The backward operators themselves have
no autograd formula: double backward is not supported.

Tensors reach the kernels without a copy when contiguous: CPU tensors as numpy arrays
(``Tensor.numpy``/``torch.from_numpy``), CUDA tensors as cupy arrays through DLPack, on
torch's current stream. The backend is cnnfast's choice (``cnnfast.use_backend``).
"""

from __future__ import annotations

import contextlib
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from .. import api
from .. import params as P
from ..api import IntOrTuple, Padding

# ----------------------------------------------------------------------------- tensors

# What the kernels compute in, per device type (cnnfast's backends: docs/API.md).
KERNEL_DTYPES = {
    "cpu": (torch.float32, torch.float64),
    "cuda": (torch.float16, torch.float32, torch.float64),
}


def supports(t: Tensor) -> bool:
    """Whether cnnfast has kernels for tensors like ``t`` (its device and dtype);
    ``meta`` tensors (shape inference only) count as supported."""
    if t.device.type == "meta":
        return t.dtype in KERNEL_DTYPES["cuda"]
    return t.dtype in KERNEL_DTYPES.get(t.device.type, ())


def _array(t: Optional[Tensor]):
    """A numpy (CPU) or cupy (CUDA) array over ``t``'s memory: no copy when ``t`` is
    contiguous (else one contiguous copy)."""
    if t is None:
        return None
    t = t.detach()
    if not t.is_contiguous():
        t = t.contiguous()
    device = t.device.type
    if device == "cpu":
        return t.numpy()
    if device == "cuda":
        import cupy

        return cupy.from_dlpack(t)
    raise TypeError(f"cnnfast.torch: a tensor on device {t.device} has no cnnfast "
                    f"kernels (CPU and CUDA tensors only)")


def _tensor(a) -> Tensor:
    """The result array ``a`` as a tensor, without a copy."""
    if isinstance(a, np.ndarray):
        return torch.from_numpy(a)
    return torch.from_dlpack(a)


@contextlib.contextmanager
def _on_device(t: Tensor):
    """For a CUDA tensor: cupy's current device and stream are torch's (so the kernels
    are ordered with torch's work, and DLPack exchanges need no synchronisation)."""
    if t.device.type != "cuda":
        yield
        return
    import cupy

    index = t.device.index if t.device.index is not None else torch.cuda.current_device()
    ptr = torch.cuda.current_stream(index).cuda_stream
    with cupy.cuda.Device(index):
        stream = cupy.cuda.Stream.null if ptr == 0 else cupy.cuda.ExternalStream(ptr, index)
        with stream:
            yield


def _pairs(padding: Sequence[int], rank: int):
    """The operators' flat ``[b0, a0, b1, a1, ...]`` as cnnfast's per-dim pairs."""
    if len(padding) != 2 * rank:
        raise ValueError(f"padding={list(padding)!r}: the cnnfast operators take "
                         f"(before, after) per spatial dim, flattened ({2 * rank} ints "
                         f"for {rank} spatial dims)")
    return tuple((int(padding[2 * i]), int(padding[2 * i + 1])) for i in range(rank))


def _ints(values) -> tuple:
    return tuple(int(v) for v in values)


def _static(*values) -> bool:
    """Whether every value (ints, or sequences of ints) is a plain int: then the
    shapes can go through cnnfast.params (memoised by value, so never SymInts)."""
    for v in values:
        if isinstance(v, (list, tuple, torch.Size)):
            if not all(type(e) is int for e in v):
                return False
        elif v is not None and type(v) is not int and type(v) is not bool:
            return False
    return True


def _needs_names(needs: Sequence[bool]) -> tuple:
    if len(needs) != 3:
        raise ValueError(f"needs={list(needs)!r} must be 3 bools (x, weight, bias)")
    return tuple(n for n, wanted in zip(P.GRAD_NAMES, needs) if wanted)


# ----------------------------------------------------------------------------- shapes


def _check_tensors(x, weight, bias, channels):
    """What cnnfast's dispatcher checks besides the shapes of cnnfast.params (the fake
    implementations raise the same errors as the kernel call would)."""
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.dtype != x.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but x has dtype {x.dtype}; mixed "
                            f"dtypes are not allowed (cast one of them explicitly)")
    if bias is not None and _static(bias.shape, channels) and \
            tuple(bias.shape) != (channels,):
        raise ValueError(f"bias has shape {tuple(bias.shape)}; expected ({channels},) "
                         f"(one value per output channel) or None")


def _conv_shape(x_shape, w_shape, stride, padding, dilation, groups):
    rank = len(x_shape) - 2
    pads = _pairs(padding, rank)
    if _static(x_shape, w_shape, stride, padding, dilation, groups):
        if len(x_shape) not in (3, 4, 5):
            raise ValueError(f"x has shape {tuple(x_shape)}; expected (N, C, *spatial) "
                             f"with 1, 2 or 3 spatial dims")
        p = P.conv_params(tuple(x_shape), tuple(w_shape), _ints(stride), pads,
                          _ints(dilation), groups)
        return (x_shape[0], w_shape[0]) + p.out_shape
    out = [(n + lo + hi - d * (k - 1) - 1) // s + 1
           for n, k, s, (lo, hi), d in zip(x_shape[2:], w_shape[2:], stride, pads,
                                           dilation)]
    return (x_shape[0], w_shape[0], *out)


def _conv_transpose_shape(x_shape, w_shape, stride, padding, output_padding, groups,
                          dilation):
    rank = len(x_shape) - 2
    pads = _pairs(padding, rank)
    c_out = w_shape[1] * groups
    if _static(x_shape, w_shape, stride, padding, output_padding, groups, dilation):
        if len(x_shape) not in (3, 4, 5):
            raise ValueError(f"x has shape {tuple(x_shape)}; expected (N, C, *spatial) "
                             f"with 1, 2 or 3 spatial dims")
        p = P.conv_transpose_params(tuple(x_shape), tuple(w_shape), _ints(stride), pads,
                                    _ints(output_padding), groups, _ints(dilation))
        return (x_shape[0], c_out) + p.out_shape
    out = [(n - 1) * s - lo - hi + d * (k - 1) + op + 1
           for n, k, s, (lo, hi), op, d in zip(x_shape[2:], w_shape[2:], stride, pads,
                                               output_padding, dilation)]
    return (x_shape[0], c_out, *out)


def _pool_shape(x_shape, kernel_size, stride, padding, dilation, ceil_mode,
                count_include_pad=True, divisor_override=None):
    rank = len(x_shape) - 2
    pads = _pairs(padding, rank)
    if _static(x_shape, kernel_size, stride, padding, dilation, divisor_override):
        if len(x_shape) not in (3, 4, 5):
            raise ValueError(f"x has shape {tuple(x_shape)}; expected (N, C, *spatial) "
                             f"with 1, 2 or 3 spatial dims")
        p = P.pool_params(tuple(x_shape), _ints(kernel_size), _ints(stride), pads,
                          _ints(dilation), bool(ceil_mode), bool(count_include_pad),
                          divisor_override)
        return tuple(x_shape[:2]) + p.out_shape
    out = [P.pool_out_size(n, k, s, lo, hi, d, ceil_mode)
           for n, k, s, (lo, hi), d in zip(x_shape[2:], kernel_size, stride, pads,
                                           dilation)]
    return (*x_shape[:2], *out)


# ----------------------------------------------------------------------------- conv


@torch.library.custom_op("cnnfast::conv", mutates_args=())
def conv_op(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: Sequence[int],
            padding: Sequence[int], dilation: Sequence[int], groups: int) -> Tensor:
    with _on_device(x):
        return _tensor(api.conv(_array(x), _array(weight), _array(bias), _ints(stride),
                                _pairs(padding, x.dim() - 2), _ints(dilation), groups))


@conv_op.register_fake
def _(x, weight, bias, stride, padding, dilation, groups):
    _check_tensors(x, weight, bias, weight.shape[0])
    return x.new_empty(_conv_shape(x.shape, weight.shape, stride, padding, dilation,
                                   groups))


@torch.library.custom_op("cnnfast::conv_backward", mutates_args=())
def conv_backward_op(grad_y: Tensor, x: Tensor, weight: Tensor, stride: Sequence[int],
                     padding: Sequence[int], dilation: Sequence[int], groups: int,
                     needs: Sequence[bool]) -> list[Tensor]:
    names = _needs_names(needs)
    with _on_device(x):
        grads = api.conv_backward(_array(grad_y), _array(x), _array(weight), _ints(stride),
                                  _pairs(padding, x.dim() - 2), _ints(dilation), groups,
                                  needs=names)
        return [_tensor(g) for g, wanted in zip(grads, needs) if wanted]


@conv_backward_op.register_fake
def _(grad_y, x, weight, stride, padding, dilation, groups, needs):
    _needs_names(needs)
    shapes = (x.shape, weight.shape, (weight.shape[0],))
    return [grad_y.new_empty(s) for s, wanted in zip(shapes, needs) if wanted]


def _conv_setup(ctx, inputs, output):
    x, weight, bias, stride, padding, dilation, groups = inputs
    ctx.save_for_backward(x, weight)
    ctx.args = (stride, padding, dilation, groups)
    ctx.has_bias = bias is not None


def _grads_of(op, ctx, grad_y, x, weight, *args):
    """(grad_x, grad_weight, grad_bias) through the backward operator, computing only
    those that autograd needs (None for the others)."""
    needed = ctx.needs_input_grad
    needs = [bool(needed[0]), bool(needed[1]), bool(needed[2]) and ctx.has_bias]
    if not any(needs):
        return None, None, None
    grads = iter(op(grad_y, x, weight, *args, needs))
    return tuple(next(grads) if wanted else None for wanted in needs)


def _conv_grad(ctx, grad_y):
    x, weight = ctx.saved_tensors
    grads = _grads_of(conv_backward_op, ctx, grad_y, x, weight, *ctx.args)
    return grads + (None,) * 4


conv_op.register_autograd(_conv_grad, setup_context=_conv_setup)


# ----------------------------------------------------------------------------- conv_transpose


@torch.library.custom_op("cnnfast::conv_transpose", mutates_args=())
def conv_transpose_op(x: Tensor, weight: Tensor, bias: Optional[Tensor],
                      stride: Sequence[int], padding: Sequence[int],
                      output_padding: Sequence[int], groups: int,
                      dilation: Sequence[int]) -> Tensor:
    with _on_device(x):
        return _tensor(api.conv_transpose(_array(x), _array(weight), _array(bias),
                                          _ints(stride), _pairs(padding, x.dim() - 2),
                                          _ints(output_padding), groups, _ints(dilation)))


@conv_transpose_op.register_fake
def _(x, weight, bias, stride, padding, output_padding, groups, dilation):
    _check_tensors(x, weight, bias, weight.shape[1] * groups)
    return x.new_empty(_conv_transpose_shape(x.shape, weight.shape, stride, padding,
                                             output_padding, groups, dilation))


@torch.library.custom_op("cnnfast::conv_transpose_backward", mutates_args=())
def conv_transpose_backward_op(grad_y: Tensor, x: Tensor, weight: Tensor,
                               stride: Sequence[int], padding: Sequence[int],
                               output_padding: Sequence[int], groups: int,
                               dilation: Sequence[int], needs: Sequence[bool]
                               ) -> list[Tensor]:
    names = _needs_names(needs)
    with _on_device(x):
        grads = api.conv_transpose_backward(
            _array(grad_y), _array(x), _array(weight), _ints(stride),
            _pairs(padding, x.dim() - 2), _ints(output_padding), groups, _ints(dilation),
            needs=names)
        return [_tensor(g) for g, wanted in zip(grads, needs) if wanted]


@conv_transpose_backward_op.register_fake
def _(grad_y, x, weight, stride, padding, output_padding, groups, dilation, needs):
    _needs_names(needs)
    shapes = (x.shape, weight.shape, (weight.shape[1] * groups,))
    return [grad_y.new_empty(s) for s, wanted in zip(shapes, needs) if wanted]


def _conv_transpose_setup(ctx, inputs, output):
    x, weight, bias, stride, padding, output_padding, groups, dilation = inputs
    ctx.save_for_backward(x, weight)
    ctx.args = (stride, padding, output_padding, groups, dilation)
    ctx.has_bias = bias is not None


def _conv_transpose_grad(ctx, grad_y):
    x, weight = ctx.saved_tensors
    grads = _grads_of(conv_transpose_backward_op, ctx, grad_y, x, weight, *ctx.args)
    return grads + (None,) * 5


conv_transpose_op.register_autograd(_conv_transpose_grad,
                                    setup_context=_conv_transpose_setup)


# ----------------------------------------------------------------------------- max_pool


@torch.library.custom_op("cnnfast::max_pool", mutates_args=())
def max_pool_op(x: Tensor, kernel_size: Sequence[int], stride: Sequence[int],
                padding: Sequence[int], dilation: Sequence[int], ceil_mode: bool) -> Tensor:
    with _on_device(x):
        return _tensor(api.max_pool(_array(x), _ints(kernel_size), _ints(stride),
                                    _pairs(padding, x.dim() - 2), _ints(dilation),
                                    bool(ceil_mode)))


@max_pool_op.register_fake
def _(x, kernel_size, stride, padding, dilation, ceil_mode):
    return x.new_empty(_pool_shape(x.shape, kernel_size, stride, padding, dilation,
                                   ceil_mode))


@torch.library.custom_op("cnnfast::max_pool_with_indices", mutates_args=())
def max_pool_with_indices_op(x: Tensor, kernel_size: Sequence[int], stride: Sequence[int],
                             padding: Sequence[int], dilation: Sequence[int],
                             ceil_mode: bool) -> tuple[Tensor, Tensor]:
    with _on_device(x):
        y, indices = api.max_pool(_array(x), _ints(kernel_size), _ints(stride),
                                  _pairs(padding, x.dim() - 2), _ints(dilation),
                                  bool(ceil_mode), return_indices=True)
        return _tensor(y), _tensor(indices)


@max_pool_with_indices_op.register_fake
def _(x, kernel_size, stride, padding, dilation, ceil_mode):
    shape = _pool_shape(x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    return x.new_empty(shape), x.new_empty(shape, dtype=torch.int64)


@torch.library.custom_op("cnnfast::max_pool_backward", mutates_args=())
def max_pool_backward_op(grad_y: Tensor, indices: Tensor, x_shape: Sequence[int]) -> Tensor:
    with _on_device(grad_y):
        return _tensor(api.max_pool_backward(_array(grad_y), _array(indices),
                                             _ints(x_shape)))


@max_pool_backward_op.register_fake
def _(grad_y, indices, x_shape):
    if _static(x_shape):
        P.check_x_shape_extents(_ints(x_shape))
    return grad_y.new_empty(tuple(x_shape))


def _max_pool_indices_setup(ctx, inputs, output):
    ctx.x_shape = tuple(inputs[0].shape)
    ctx.save_for_backward(output[1])


def _max_pool_indices_grad(ctx, grad_y, grad_indices):
    (indices,) = ctx.saved_tensors
    return (max_pool_backward_op(grad_y, indices, ctx.x_shape),) + (None,) * 5


max_pool_with_indices_op.register_autograd(_max_pool_indices_grad,
                                           setup_context=_max_pool_indices_setup)


# max_pool without indices (cheaper: no index writes) keeps x and finds the winners
# again in backward; the wrappers below take max_pool_with_indices whenever autograd
# will need the gradient, so this recomputation only serves direct callers of the op.
def _max_pool_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])
    ctx.args = inputs[1:]


def _max_pool_grad(ctx, grad_y):
    (x,) = ctx.saved_tensors
    _, indices = max_pool_with_indices_op(x.detach(), *ctx.args)
    return (max_pool_backward_op(grad_y, indices, tuple(x.shape)),) + (None,) * 5


max_pool_op.register_autograd(_max_pool_grad, setup_context=_max_pool_setup)


# ----------------------------------------------------------------------------- avg_pool


@torch.library.custom_op("cnnfast::avg_pool", mutates_args=())
def avg_pool_op(x: Tensor, kernel_size: Sequence[int], stride: Sequence[int],
                padding: Sequence[int], ceil_mode: bool, count_include_pad: bool,
                divisor_override: Optional[int], dilation: Sequence[int]) -> Tensor:
    with _on_device(x):
        return _tensor(api.avg_pool(_array(x), _ints(kernel_size), _ints(stride),
                                    _pairs(padding, x.dim() - 2), bool(ceil_mode),
                                    bool(count_include_pad), divisor_override,
                                    dilation=_ints(dilation)))


@avg_pool_op.register_fake
def _(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override,
      dilation):
    return x.new_empty(_pool_shape(x.shape, kernel_size, stride, padding, dilation,
                                   ceil_mode, count_include_pad, divisor_override))


@torch.library.custom_op("cnnfast::avg_pool_backward", mutates_args=())
def avg_pool_backward_op(grad_y: Tensor, x_shape: Sequence[int], kernel_size: Sequence[int],
                         stride: Sequence[int], padding: Sequence[int], ceil_mode: bool,
                         count_include_pad: bool, divisor_override: Optional[int],
                         dilation: Sequence[int]) -> Tensor:
    with _on_device(grad_y):
        return _tensor(api.avg_pool_backward(
            _array(grad_y), _ints(x_shape), _ints(kernel_size), _ints(stride),
            _pairs(padding, len(x_shape) - 2), bool(ceil_mode), bool(count_include_pad),
            divisor_override, dilation=_ints(dilation)))


@avg_pool_backward_op.register_fake
def _(grad_y, x_shape, kernel_size, stride, padding, ceil_mode, count_include_pad,
      divisor_override, dilation):
    if _static(x_shape):
        P.check_x_shape_extents(_ints(x_shape))
    return grad_y.new_empty(tuple(x_shape))


def _avg_pool_setup(ctx, inputs, output):
    ctx.x_shape = tuple(inputs[0].shape)
    ctx.args = inputs[1:]


def _avg_pool_grad(ctx, grad_y):
    return (avg_pool_backward_op(grad_y, ctx.x_shape, *ctx.args),) + (None,) * 7


avg_pool_op.register_autograd(_avg_pool_grad, setup_context=_avg_pool_setup)


OPERATORS = (conv_op, conv_backward_op, conv_transpose_op, conv_transpose_backward_op,
             max_pool_op, max_pool_with_indices_op, max_pool_backward_op, avg_pool_op,
             avg_pool_backward_op)


# ----------------------------------------------------------------------------- arguments
#
# The functional wrappers normalise torch's (and cnnfast's) argument forms into the
# operators' lists. Plain Python, which torch.compile traces through; the values are
# checked by cnnfast.params (in the fake implementation under torch.compile, in the
# kernel call in eager mode).


def _is_int(v) -> bool:
    return isinstance(v, (int, torch.SymInt)) and not isinstance(v, bool)


def _per_dim(value, rank: int, name: str) -> list:
    """An int, or one int per spatial dim (a 1-element list is repeated, as torch
    does)."""
    if _is_int(value):
        return [value] * rank
    if isinstance(value, (tuple, list, torch.Size)):
        if len(value) == 1 and rank > 1:
            return [value[0]] * rank
        if len(value) == rank and all(_is_int(v) for v in value):
            return list(value)
        raise ValueError(f"{name}={value!r}: expected an int or {rank} ints (one per "
                         f"spatial dim)")
    raise TypeError(f"{name}={value!r} must be an int or a tuple of {rank} ints")


def _flat_padding(value, rank: int) -> list:
    """An int, or per dim an int or a (before, after) pair, as the operators' flat
    ``[b0, a0, b1, a1, ...]``."""
    if _is_int(value):
        return [value, value] * rank
    if isinstance(value, (tuple, list)):
        if len(value) == 1 and rank > 1:
            value = list(value) * rank
        if len(value) == rank:
            flat = []
            for entry in value:
                if _is_int(entry):
                    flat += [entry, entry]
                elif (isinstance(entry, (tuple, list)) and len(entry) == 2
                      and all(_is_int(v) for v in entry)):
                    flat += [entry[0], entry[1]]
                else:
                    break
            else:
                return flat
    if isinstance(value, str):
        raise ValueError(f"padding={value!r}: expected 'same' or 'valid' (convolutions "
                         f"only), an int, or per spatial dim an int or a (before, "
                         f"after) pair")
    raise ValueError(f"padding={value!r}: expected an int, or {rank} entries (per "
                     f"spatial dim an int or a (before, after) pair)")


def _batched(x: Tensor, rank: int):
    """``(x with a batch dim, whether one was added)``: torch takes unbatched
    ``(C, *spatial)`` inputs too."""
    if not isinstance(x, Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == rank + 1:
        return x.unsqueeze(0), True
    if x.dim() != rank + 2:
        raise ValueError(f"input has shape {tuple(x.shape)}; a {rank}d op expects "
                         f"(N, C, *spatial) or (C, *spatial) with {rank} spatial dims")
    return x, False


def _unbatched(y, squeeze: bool):
    return y.squeeze(0) if squeeze else y


# ----------------------------------------------------------------------------- functional


def _conv(x, weight, bias, stride, padding, dilation, groups, rank):
    x, squeeze = _batched(x, rank)
    stride = _per_dim(stride, rank, "stride")
    dilation = _per_dim(dilation, rank, "dilation")
    if isinstance(padding, str) and padding in ("same", "valid"):
        pairs = ((0, 0),) * rank if padding == "valid" else \
            P.same_pads_stride1(tuple(weight.shape[2:]), tuple(dilation), tuple(stride))
        flat = [v for pair in pairs for v in pair]
    else:
        flat = _flat_padding(padding, rank)
    return _unbatched(conv_op(x, weight, bias, stride, flat, dilation, groups), squeeze)


def conv(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
         stride: IntOrTuple = 1, padding: Padding = 0, dilation: IntOrTuple = 1,
         groups: int = 1) -> Tensor:
    """``torch.nn.functional.conv{1,2,3}d`` through cnnfast, the rank from
    ``weight``; ``padding`` also takes per-dim ``(before, after)`` pairs."""
    return _conv(input, weight, bias, stride, padding, dilation, groups, weight.dim() - 2)


def conv1d(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
           stride: IntOrTuple = 1, padding: Padding = 0, dilation: IntOrTuple = 1,
           groups: int = 1) -> Tensor:
    """``torch.nn.functional.conv1d`` through cnnfast."""
    return _conv(input, weight, bias, stride, padding, dilation, groups, 1)


def conv2d(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
           stride: IntOrTuple = 1, padding: Padding = 0, dilation: IntOrTuple = 1,
           groups: int = 1) -> Tensor:
    """``torch.nn.functional.conv2d`` through cnnfast."""
    return _conv(input, weight, bias, stride, padding, dilation, groups, 2)


def conv3d(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
           stride: IntOrTuple = 1, padding: Padding = 0, dilation: IntOrTuple = 1,
           groups: int = 1) -> Tensor:
    """``torch.nn.functional.conv3d`` through cnnfast."""
    return _conv(input, weight, bias, stride, padding, dilation, groups, 3)


def _conv_transpose(x, weight, bias, stride, padding, output_padding, groups, dilation,
                    rank):
    x, squeeze = _batched(x, rank)
    stride = _per_dim(stride, rank, "stride")
    dilation = _per_dim(dilation, rank, "dilation")
    output_padding = _per_dim(output_padding, rank, "output_padding")
    if isinstance(padding, str) and padding in ("same", "valid"):
        # "same" is an extension (ONNX SAME_UPPER): output size = input size * stride
        pairs = ((0, 0),) * rank if padding == "valid" else \
            P.same_crops_transposed(tuple(x.shape[2:]), tuple(weight.shape[2:]),
                                    tuple(stride), tuple(dilation), tuple(output_padding))
        flat = [v for pair in pairs for v in pair]
    else:
        flat = _flat_padding(padding, rank)
    y = conv_transpose_op(x, weight, bias, stride, flat, output_padding, groups, dilation)
    return _unbatched(y, squeeze)


def conv_transpose(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                   stride: IntOrTuple = 1, padding: Padding = 0,
                   output_padding: IntOrTuple = 0, groups: int = 1,
                   dilation: IntOrTuple = 1) -> Tensor:
    """``torch.nn.functional.conv_transpose{1,2,3}d`` through cnnfast, the rank from
    ``weight``; ``padding`` (which crops the output) also takes ``(before, after)``
    pairs and ``"same"``."""
    return _conv_transpose(input, weight, bias, stride, padding, output_padding, groups,
                           dilation, weight.dim() - 2)


def conv_transpose1d(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                     stride: IntOrTuple = 1, padding: Padding = 0,
                     output_padding: IntOrTuple = 0, groups: int = 1,
                     dilation: IntOrTuple = 1) -> Tensor:
    """``torch.nn.functional.conv_transpose1d`` through cnnfast."""
    return _conv_transpose(input, weight, bias, stride, padding, output_padding, groups,
                           dilation, 1)


def conv_transpose2d(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                     stride: IntOrTuple = 1, padding: Padding = 0,
                     output_padding: IntOrTuple = 0, groups: int = 1,
                     dilation: IntOrTuple = 1) -> Tensor:
    """``torch.nn.functional.conv_transpose2d`` through cnnfast."""
    return _conv_transpose(input, weight, bias, stride, padding, output_padding, groups,
                           dilation, 2)


def conv_transpose3d(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                     stride: IntOrTuple = 1, padding: Padding = 0,
                     output_padding: IntOrTuple = 0, groups: int = 1,
                     dilation: IntOrTuple = 1) -> Tensor:
    """``torch.nn.functional.conv_transpose3d`` through cnnfast."""
    return _conv_transpose(input, weight, bias, stride, padding, output_padding, groups,
                           dilation, 3)


def _pool_args(kernel_size, stride, padding, dilation, rank):
    kernel = _per_dim(kernel_size, rank, "kernel_size")
    # torch: stride None or [] means stride = kernel_size.
    stride = kernel if stride is None or (isinstance(stride, (tuple, list))
                                          and len(stride) == 0) \
        else _per_dim(stride, rank, "stride")
    return kernel, stride, _flat_padding(padding, rank), _per_dim(dilation, rank,
                                                                  "dilation")


def _generic_rank(x) -> int:
    """The rank of the generic pooling wrappers: ``x`` is (N, C, *spatial)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() not in (3, 4, 5):
        raise ValueError(f"input has shape {tuple(x.shape)}; expected (N, C, *spatial) "
                         f"with 1, 2 or 3 spatial dims")
    return x.dim() - 2


def _max_pool(x, kernel_size, stride, padding, dilation, ceil_mode, return_indices, rank):
    batched, squeeze = _batched(x, rank) if rank else (x, False)
    rank = rank or _generic_rank(x)
    args = _pool_args(kernel_size, stride, padding, dilation, rank) + (bool(ceil_mode),)
    if return_indices or (torch.is_grad_enabled() and batched.requires_grad):
        y, indices = max_pool_with_indices_op(batched, *args)
        if return_indices:
            return _unbatched(y, squeeze), _unbatched(indices, squeeze)
        return _unbatched(y, squeeze)
    return _unbatched(max_pool_op(batched, *args), squeeze)


def max_pool(input: Tensor, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None,
             padding: Padding = 0, dilation: IntOrTuple = 1, ceil_mode: bool = False,
             return_indices: bool = False) -> Any:
    """``torch.nn.functional.max_pool{1,2,3}d`` through cnnfast, the rank from
    ``input.dim() - 2``; ``padding`` also takes ``(before, after)`` pairs and may
    exceed ``kernel_size // 2``. ``indices`` are torch's (flat offsets in each
    ``(n, c)`` plane)."""
    return _max_pool(input, kernel_size, stride, padding, dilation, ceil_mode,
                     return_indices, 0)


def max_pool1d(input: Tensor, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None,
               padding: Padding = 0, dilation: IntOrTuple = 1, ceil_mode: bool = False,
               return_indices: bool = False) -> Any:
    """``torch.nn.functional.max_pool1d`` through cnnfast."""
    return _max_pool(input, kernel_size, stride, padding, dilation, ceil_mode,
                     return_indices, 1)


def max_pool2d(input: Tensor, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None,
               padding: Padding = 0, dilation: IntOrTuple = 1, ceil_mode: bool = False,
               return_indices: bool = False) -> Any:
    """``torch.nn.functional.max_pool2d`` through cnnfast."""
    return _max_pool(input, kernel_size, stride, padding, dilation, ceil_mode,
                     return_indices, 2)


def max_pool3d(input: Tensor, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None,
               padding: Padding = 0, dilation: IntOrTuple = 1, ceil_mode: bool = False,
               return_indices: bool = False) -> Any:
    """``torch.nn.functional.max_pool3d`` through cnnfast."""
    return _max_pool(input, kernel_size, stride, padding, dilation, ceil_mode,
                     return_indices, 3)


def _avg_pool(x, kernel_size, stride, padding, ceil_mode, count_include_pad,
              divisor_override, dilation, rank):
    batched, squeeze = _batched(x, rank) if rank else (x, False)
    rank = rank or _generic_rank(x)
    kernel, stride, flat, dilation = _pool_args(kernel_size, stride, padding, dilation,
                                                rank)
    y = avg_pool_op(batched, kernel, stride, flat, bool(ceil_mode), bool(count_include_pad),
                    divisor_override, dilation)
    return _unbatched(y, squeeze)


def avg_pool(input: Tensor, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None,
             padding: Padding = 0, ceil_mode: bool = False,
             count_include_pad: bool = True, divisor_override: Optional[int] = None, *,
             dilation: IntOrTuple = 1) -> Tensor:
    """``torch.nn.functional.avg_pool{1,2,3}d`` through cnnfast, the rank from
    ``input.dim() - 2``; also ``dilation`` (ONNX) and ``(before, after)`` padding."""
    return _avg_pool(input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                     divisor_override, dilation, 0)


def avg_pool1d(input: Tensor, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None,
               padding: Padding = 0, ceil_mode: bool = False,
               count_include_pad: bool = True, *, divisor_override: Optional[int] = None,
               dilation: IntOrTuple = 1) -> Tensor:
    """``torch.nn.functional.avg_pool1d`` through cnnfast (which also takes
    ``divisor_override``, keyword-only here since torch's avg_pool1d has none)."""
    return _avg_pool(input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                     divisor_override, dilation, 1)


def avg_pool2d(input: Tensor, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None,
               padding: Padding = 0, ceil_mode: bool = False,
               count_include_pad: bool = True, divisor_override: Optional[int] = None, *,
               dilation: IntOrTuple = 1) -> Tensor:
    """``torch.nn.functional.avg_pool2d`` through cnnfast."""
    return _avg_pool(input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                     divisor_override, dilation, 2)


def avg_pool3d(input: Tensor, kernel_size: IntOrTuple, stride: Optional[IntOrTuple] = None,
               padding: Padding = 0, ceil_mode: bool = False,
               count_include_pad: bool = True, divisor_override: Optional[int] = None, *,
               dilation: IntOrTuple = 1) -> Tensor:
    """``torch.nn.functional.avg_pool3d`` through cnnfast."""
    return _avg_pool(input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                     divisor_override, dilation, 3)
