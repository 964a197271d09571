"""Parameter normalisation, validation and output-shape arithmetic.

This is the one place that knows the rules of ``docs/API.md``. The dispatcher
(``cnnfast.api``) calls these functions once per public call; backends receive the
frozen dataclasses below and trust every field:

* ``stride``, ``dilation``, ``kernel``, ``output_padding``: one int per spatial dim;
* ``padding``: one ``(before, after)`` pair per spatial dim, already resolved from
  ``"same"``/``"valid"``;
* ``in_shape``/``out_shape``: the spatial extents of the input and the output.
"""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, TypeVar, cast

import numpy as np

from .activation import ACTIVATIONS

Ints = Tuple[int, ...]
Pairs = Tuple[Tuple[int, int], ...]

GRAD_NAMES = ("x", "weight", "bias")


@dataclass(frozen=True)
class ConvParams:
    """Normalised parameters of a convolution or a transposed convolution."""

    rank: int
    stride: Ints
    padding: Pairs
    dilation: Ints
    groups: int
    kernel: Ints
    in_shape: Ints  # spatial shape of x
    out_shape: Ints  # spatial shape of y
    output_padding: Ints  # all zeros for a plain convolution
    transposed: bool = False
    # "auto" or a name from the backend's vocabulary (its ``ALGORITHMS``; see
    # ``cnnfast.explain``): the backend runs that algorithm or raises NotImplementedError.
    algorithm: str = "auto"
    # The fused activation (``cnnfast.activation``): None or one of ACTIVATIONS, applied
    # after the bias by the forward kernels; the backward kernels multiply grad_y by its
    # derivative (read from the activated output y) before the three gradients.
    activation: Optional[str] = None
    negative_slope: float = 0.0  # leaky_relu's slope; 0.0 for every other activation


@dataclass(frozen=True)
class PoolParams:
    """Normalised parameters of max or average pooling."""

    rank: int
    kernel: Ints
    stride: Ints
    padding: Pairs
    dilation: Ints
    ceil_mode: bool
    in_shape: Ints
    out_shape: Ints
    count_include_pad: bool = True
    divisor_override: Optional[int] = None


def with_algorithm(p: ConvParams, algorithm) -> ConvParams:
    """``p`` pinned to ``algorithm`` (``"auto"``: ``p`` itself). Only the type is checked
    here; ``cnnfast.registry.select`` checks the name against the backend's vocabulary."""
    if not isinstance(algorithm, str):
        raise TypeError(f"algorithm={algorithm!r} must be a str ('auto' or a name from "
                        f"cnnfast.explain's vocabulary)")
    return p if algorithm == "auto" else replace(p, algorithm=algorithm)


def with_activation(p: ConvParams, activation, negative_slope) -> ConvParams:
    """``p`` with the fused ``activation`` (None: ``p`` itself), after checking it and
    ``negative_slope`` (a finite real >= 0: the derivative is read from y, see
    ``cnnfast.activation``)."""
    if activation is None:
        return p
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise ValueError(f"activation={activation!r} is not supported; expected None or "
                         f"one of {', '.join(map(repr, ACTIVATIONS))}")
    if isinstance(negative_slope, (bool, np.bool_)) or not isinstance(
            negative_slope, (int, float, np.integer, np.floating)):
        raise TypeError(f"negative_slope={negative_slope!r} must be a real number")
    slope = float(negative_slope)
    if not (math.isfinite(slope) and slope >= 0):
        raise ValueError(f"negative_slope={negative_slope!r} must be finite and >= 0 (the "
                         f"backward reads the derivative from the activated output y, "
                         f"which a negative slope makes ambiguous)")
    return replace(p, activation=activation,
                   negative_slope=slope if activation == "leaky_relu" else 0.0)


# ----------------------------------------------------------------------------- memo


_F = TypeVar("_F", bound=Callable[..., Any])


def _memoized(fn: _F) -> _F:
    """Cache the params of repeated calls (a training loop repeats the same few).

    Validation costs tens of microseconds, as much as a whole small GPU kernel. The
    key is the ``repr`` of the arguments, which tells ``True`` from ``1`` and ``1.0``,
    so a cached answer is exactly what validation would return; only successful
    results are stored (errors are raised afresh every time)."""
    cache: Dict[str, Any] = {}

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        values = args + tuple(kwargs.values())
        if any(hasattr(v, "__array__") for v in values):  # arrays: repr may elide
            return fn(*args, **kwargs)
        key = repr((args, sorted(kwargs.items())))
        hit = cache.get(key)
        if hit is None:
            hit = fn(*args, **kwargs)
            if len(cache) >= 4096:
                cache.clear()
            cache[key] = hit
        return hit

    setattr(wrapper, "cache_clear", cache.clear)  # as functools.lru_cache's
    return cast(_F, wrapper)


# ----------------------------------------------------------------------------- scalars


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


# The largest index the kernels take along one spatial dim, plus one. The CUDA kernels
# (cupy, cuda-emu) index a spatial dim with 32-bit ints and compute tap positions such as
# o*stride - pad + t*dilation in them; cpp and numba use 64 bits. One rule for every
# backend, so that a call valid on one is valid on all: every integer parameter, and every
# extent derived from them (the padded input, the span the windows cover, a transposed
# convolution's uncropped output), stays below 2**31. Each term of those sums is then
# below 2**31 too, so no index computed by a kernel overflows.
INDEX_LIMIT = 2 ** 31
# The largest result, in elements: 2**60 elements of at most 8 bytes is numpy's own
# limit (2**63 bytes); checked before anything is allocated.
MAX_ELEMENTS = 2 ** 60


def _check_index(v: int, name: str, value) -> None:
    if v >= INDEX_LIMIT:
        raise ValueError(f"{name}={value!r}: every entry must be below 2**31 = "
                         f"{INDEX_LIMIT} (the kernels index with 32-bit ints); use a "
                         f"smaller {name}")


def _check_extent(extent: int, dim: int, what: str, fix: str) -> None:
    """A derived spatial extent (see ``INDEX_LIMIT``)."""
    if extent >= INDEX_LIMIT:
        raise ValueError(f"{what} is {extent} in spatial dim {dim}, past the kernels' "
                         f"32-bit index range (every extent must be below 2**31); {fix}")


def check_x_shape_extents(x_shape) -> None:
    """The spatial sizes a pooling backward is given (``x_shape``): below 2**31."""
    if any(size >= INDEX_LIMIT for size in x_shape[2:]):
        raise ValueError(f"x_shape={tuple(x_shape)!r}: every spatial size must be below "
                         f"2**31 (the kernels index with 32-bit ints); pass the shape of "
                         f"the x given to the forward call")


def check_result_size(shape, name: str) -> None:
    """The result of shape ``shape`` must fit in one array (``MAX_ELEMENTS``)."""
    count = prod(shape)
    if count >= MAX_ELEMENTS:
        raise ValueError(f"{name} would have shape {tuple(shape)}, {count} elements: "
                         f"more than any array can hold (2**60); check the padding, "
                         f"stride and dilation")


def per_dim(value, rank: int, name: str, *, minimum: int) -> Ints:
    """An int, or one int per spatial dim, each ``>= minimum``."""
    if _is_int(value):
        values = (int(value),) * rank
    elif isinstance(value, (tuple, list)):
        if len(value) != rank:
            raise ValueError(
                f"{name}={value!r} has {len(value)} entries; expected an int or "
                f"{rank} ints, one per spatial dim")
        if not all(_is_int(v) for v in value):
            raise TypeError(f"{name}={value!r} must contain ints only")
        values = tuple(int(v) for v in value)
    else:
        raise TypeError(f"{name}={value!r} must be an int or a tuple of {rank} ints")
    for v in values:
        if v < minimum:
            what = "positive" if minimum == 1 else f">= {minimum}"
            raise ValueError(f"{name}={value!r}: every entry must be {what}")
        _check_index(v, name, value)
    return values


def padding_pairs(value, rank: int, name: str = "padding") -> Pairs:
    """An int, or per dim an int or a ``(before, after)`` pair; all ``>= 0``."""
    if _is_int(value):
        entries = [int(value)] * rank
    elif isinstance(value, (tuple, list)):
        if len(value) != rank:
            raise ValueError(
                f"{name}={value!r} has {len(value)} entries; expected an int, "
                f"'same', 'valid', or {rank} entries (an int or a (before, after) "
                f"pair per spatial dim)")
        entries = list(value)
    else:
        raise TypeError(f"{name}={value!r} must be an int, a string or a tuple")
    pairs = []
    for entry in entries:
        if _is_int(entry):
            pair = (int(entry), int(entry))
        elif (isinstance(entry, (tuple, list)) and len(entry) == 2
              and all(_is_int(v) for v in entry)):
            pair = (int(entry[0]), int(entry[1]))
        else:
            raise TypeError(
                f"{name}={value!r}: each entry must be an int or a (before, after) "
                f"pair of ints, got {entry!r}")
        if pair[0] < 0 or pair[1] < 0:
            raise ValueError(f"{name}={value!r}: padding must not be negative")
        _check_index(max(pair), name, value)
        pairs.append(pair)
    return tuple(pairs)


def grad_needs(needs) -> frozenset:
    """``needs`` as a set of names from ``GRAD_NAMES``."""
    if isinstance(needs, str):
        needs = (needs,)
    try:
        names = tuple(needs)
    except TypeError:
        raise TypeError(f"needs={needs!r} must be a tuple of names from {GRAD_NAMES}") from None
    for n in names:
        if n not in GRAD_NAMES:
            raise ValueError(f"needs={needs!r}: unknown gradient name {n!r}; "
                             f"expected names from {GRAD_NAMES}")
    return frozenset(names)


# ----------------------------------------------------------------------------- arrays


def check_rank(x, name: str, expected_rank: Optional[int] = None) -> int:
    """Spatial rank of ``x`` (``x.ndim - 2``), checked against 1..3 or an alias."""
    ndim = getattr(x, "ndim", None)
    if ndim is None:
        raise TypeError(f"{name} must be a numpy or cupy array, got {type(x).__name__}")
    rank = ndim - 2
    if expected_rank is not None and rank != expected_rank:
        raise ValueError(
            f"{name} has shape {tuple(x.shape)} ({ndim} dims); a {expected_rank}d op "
            f"expects (N, C, *spatial) with {expected_rank} spatial dims "
            f"({expected_rank + 2} dims in all)")
    if rank not in (1, 2, 3):
        raise ValueError(
            f"{name} has shape {tuple(x.shape)}; expected (N, C, *spatial) with 1, 2 "
            f"or 3 spatial dims (3 to 5 dims in all)")
    return rank


# ----------------------------------------------------------------------------- groups


def _groups(groups) -> int:
    if not _is_int(groups) or groups < 1:
        raise ValueError(f"groups={groups!r} must be a positive int")
    _check_index(int(groups), "groups", groups)
    return int(groups)


# ----------------------------------------------------------------------------- "same"
#
# "same" has three meanings in this package, one function each. All three split an
# odd total with the extra element after (ONNX SAME_UPPER, as TensorFlow does).


def _split_extra_after(total: int) -> Tuple[int, int]:
    return (total // 2, total - total // 2)


def same_pads_stride1(kernel, dilation, stride) -> Pairs:
    """``conv(..., padding='same')`` of the kernel API: output size == input size.

    Defined for stride 1 only (``docs/API.md``), as in PyTorch; the padding
    total of each dim is the dilated kernel extent minus one."""
    if any(s != 1 for s in stride):
        raise ValueError(f"padding='same' needs stride 1, got stride={stride}")
    return tuple(_split_extra_after(d * (k - 1)) for k, d in zip(kernel, dilation))


def same_crops_transposed(in_shape, kernel, stride, dilation, output_padding) -> Pairs:
    """``conv_transpose(..., padding='same')`` (an extension, ONNX ConvTranspose
    auto_pad=SAME_UPPER): output size == input size * stride; the pairs are what is
    cropped from the full transposed output."""
    pairs = []
    for i, (n, k, s, d, op) in enumerate(zip(in_shape, kernel, stride, dilation,
                                             output_padding)):
        total = s * (n - 1) + op + d * (k - 1) + 1 - n * s
        if total < 0:
            raise ValueError(
                f"padding='same' cannot give output size input*stride in dim "
                f"{i}: the kernel extent is smaller than the stride")
        pairs.append(_split_extra_after(total))
    return tuple(pairs)


def same_pads_tensorflow(in_shape: Sequence[int], kernel: Sequence[int],
                         stride: Sequence[int], dilation: Sequence[int]) -> Pairs:
    """The ``cnnfast.nn`` layers' ``padding='same'`` (TensorFlow's rule, any stride):
    output size == ceil(input size / stride). Public as ``cnnfast.nn.tf_same_pads``."""
    pairs = []
    for n, k, s, d in zip(in_shape, kernel, stride, dilation):
        total = max((math.ceil(n / s) - 1) * s + d * (k - 1) + 1 - n, 0)
        pairs.append(_split_extra_after(total))
    return tuple(pairs)


# ----------------------------------------------------------------------------- conv


@_memoized
def conv_params(x_shape, w_shape, stride, padding, dilation, groups) -> ConvParams:
    rank = len(x_shape) - 2
    if len(w_shape) != len(x_shape):
        raise ValueError(
            f"weight has shape {tuple(w_shape)}; for input shape {tuple(x_shape)} it "
            f"must be (C_out, C_in // groups, *kernel) with {len(x_shape)} dims")
    groups = _groups(groups)
    c_in, c_out = x_shape[1], w_shape[0]
    if c_in % groups:
        raise ValueError(f"groups={groups} does not divide the {c_in} input channels")
    if c_out % groups:
        raise ValueError(f"groups={groups} does not divide the {c_out} output channels "
                         f"(weight.shape[0])")
    if w_shape[1] * groups != c_in:
        raise ValueError(
            f"weight.shape[1]={w_shape[1]} times groups={groups} must equal the "
            f"{c_in} input channels of x (expected weight.shape[1]={c_in // groups})")
    kernel = tuple(int(k) for k in w_shape[2:])
    if min(kernel) < 1:
        raise ValueError(f"weight has an empty kernel {kernel}")
    stride = per_dim(stride, rank, "stride", minimum=1)
    dilation = per_dim(dilation, rank, "dilation", minimum=1)
    if isinstance(padding, str):
        if padding == "valid":
            pads = ((0, 0),) * rank
        elif padding == "same":
            pads = same_pads_stride1(kernel, dilation, stride)
        else:
            raise ValueError(f"padding={padding!r}: expected 'same', 'valid', an int "
                             f"or per-dim ints/(before, after) pairs")
    else:
        pads = padding_pairs(padding, rank)
    in_shape = tuple(int(v) for v in x_shape[2:])
    out = []
    for i in range(rank):
        # Every index a kernel computes lies within the padded input.
        _check_extent(in_shape[i] + pads[i][0] + pads[i][1], i,
                      f"padding={padding!r}: x's size {in_shape[i]} plus the padding "
                      f"{pads[i]}",
                      "reduce the padding (with padding='same', the dilation)")
        extent = in_shape[i] + pads[i][0] + pads[i][1] - dilation[i] * (kernel[i] - 1)
        if extent < 1:
            raise ValueError(
                f"kernel {kernel} with dilation {dilation} is larger than the padded "
                f"input {tuple(in_shape[j] + sum(pads[j]) for j in range(rank))} "
                f"(spatial dim {i}): the output would be empty")
        out.append((extent - 1) // stride[i] + 1)
    return ConvParams(rank, stride, pads, dilation, groups, kernel, in_shape, tuple(out),
                      (0,) * rank, False)


@_memoized
def conv_transpose_params(x_shape, w_shape, stride, padding, output_padding, groups,
                          dilation) -> ConvParams:
    rank = len(x_shape) - 2
    if len(w_shape) != len(x_shape):
        raise ValueError(
            f"weight has shape {tuple(w_shape)}; for input shape {tuple(x_shape)} it "
            f"must be (C_in, C_out // groups, *kernel) with {len(x_shape)} dims")
    groups = _groups(groups)
    c_in = x_shape[1]
    if c_in % groups:
        raise ValueError(f"groups={groups} does not divide the {c_in} input channels")
    if w_shape[0] != c_in:
        raise ValueError(
            f"weight.shape[0]={w_shape[0]} must equal the {c_in} input channels of x "
            f"(transposed-convolution weight is (C_in, C_out // groups, *kernel))")
    kernel = tuple(int(k) for k in w_shape[2:])
    if min(kernel) < 1:
        raise ValueError(f"weight has an empty kernel {kernel}")
    stride = per_dim(stride, rank, "stride", minimum=1)
    dilation = per_dim(dilation, rank, "dilation", minimum=1)
    opad = per_dim(output_padding, rank, "output_padding", minimum=0)
    for op, s, d in zip(opad, stride, dilation):
        if op >= s and op >= d:
            raise ValueError(
                f"output_padding={output_padding!r} must be smaller than either the "
                f"stride {stride} or the dilation {dilation} in every dim")
    in_shape = tuple(int(v) for v in x_shape[2:])
    if isinstance(padding, str):
        if padding == "valid":
            pads = ((0, 0),) * rank
        elif padding == "same":
            pads = same_crops_transposed(in_shape, kernel, stride, dilation, opad)
        else:
            raise ValueError(f"padding={padding!r}: expected 'same', 'valid', an int "
                             f"or per-dim ints/(before, after) pairs")
    else:
        pads = padding_pairs(padding, rank)
    out = []
    for i in range(rank):
        # Every index a kernel computes lies within the uncropped output (the padded
        # input of the adjoint convolution).
        full = ((in_shape[i] - 1) * stride[i] + dilation[i] * (kernel[i] - 1) + opad[i]
                + 1)
        _check_extent(full, i, f"the uncropped output (x's size {in_shape[i]}, stride "
                      f"{stride[i]}, dilation {dilation[i]}, kernel {kernel[i]}, "
                      f"output_padding {opad[i]})", "reduce the stride or the dilation")
        size = full - pads[i][0] - pads[i][1]
        if size < 1:
            raise ValueError(
                f"padding={padding!r} crops the whole output in spatial dim {i} "
                f"(output size would be {size})")
        out.append(size)
    return ConvParams(rank, stride, pads, dilation, groups, kernel, in_shape, tuple(out),
                      opad, True)


# ----------------------------------------------------------------------------- pooling


def pool_out_size(size, k, s, lo, hi, d, ceil_mode) -> int:
    """Output length of one pooled dim (API.md: torch's and ONNX's rule)."""
    extent = size + lo + hi - d * (k - 1) - 1
    if extent < 0:
        return 0
    if not ceil_mode:
        return extent // s + 1
    out = -(-extent // s) + 1
    # Drop the last window when it would start at or past the end of the input
    # plus the leading padding.
    if (out - 1) * s >= size + lo:
        out -= 1
    return out


@_memoized
def pool_params(x_shape, kernel_size, stride, padding, dilation, ceil_mode,
                count_include_pad=True, divisor_override=None) -> PoolParams:
    rank = len(x_shape) - 2
    kernel = per_dim(kernel_size, rank, "kernel_size", minimum=1)
    stride = kernel if stride is None else per_dim(stride, rank, "stride", minimum=1)
    dilation = per_dim(dilation, rank, "dilation", minimum=1)
    if isinstance(padding, str):
        raise ValueError(f"padding={padding!r}: pooling takes an int or per-dim "
                         f"ints/(before, after) pairs, not a string")
    pads = padding_pairs(padding, rank)
    if not isinstance(ceil_mode, (bool,)) and not _is_bool_like(ceil_mode):
        raise TypeError(f"ceil_mode={ceil_mode!r} must be a bool")
    if not isinstance(count_include_pad, bool) and not _is_bool_like(count_include_pad):
        raise TypeError(f"count_include_pad={count_include_pad!r} must be a bool")
    if divisor_override is not None:
        if not _is_int(divisor_override):
            raise TypeError(f"divisor_override={divisor_override!r} must be an int or None")
        if divisor_override < 1:
            raise ValueError(f"divisor_override={divisor_override!r} must be positive")
        _check_index(int(divisor_override), "divisor_override", divisor_override)
        divisor_override = int(divisor_override)
    in_shape = tuple(int(v) for v in x_shape[2:])
    out = []
    for i in range(rank):
        n = pool_out_size(in_shape[i], kernel[i], stride[i], pads[i][0], pads[i][1],
                          dilation[i], bool(ceil_mode))
        if n < 1:
            raise ValueError(
                f"kernel_size={kernel} with dilation {dilation} is larger than the "
                f"padded input in spatial dim {i} (size {in_shape[i]} + padding "
                f"{pads[i]}): the output would be empty")
        # Every index a kernel computes lies within the padded input or, with
        # ceil_mode, the last window's overhang past it.
        span = max(in_shape[i] + pads[i][0] + pads[i][1],
                   (n - 1) * stride[i] + dilation[i] * (kernel[i] - 1) + 1)
        _check_extent(span, i, f"the span the windows cover (x's size {in_shape[i]}, "
                      f"padding {pads[i]}, stride {stride[i]}, kernel {kernel[i]}, "
                      f"dilation {dilation[i]})", "reduce the padding, kernel_size or "
                      "dilation")
        # Every window must have at least one tap inside the input (a window lying
        # wholly in the padding has no defined max or average).
        bad = _window_outside_input(in_shape[i], kernel[i], stride[i], pads[i][0],
                                    dilation[i], n)
        if bad is not None:
            raise ValueError(
                f"padding={padding!r} is too large: window {bad} of spatial dim {i} "
                f"lies wholly in the padding; reduce the padding (or the dilation)")
        out.append(n)
    return PoolParams(rank, kernel, stride, pads, dilation, bool(ceil_mode), in_shape,
                      tuple(out), bool(count_include_pad), divisor_override)


def _is_bool_like(v) -> bool:
    return isinstance(v, np.bool_)


def _window_outside_input(size, k, s, lo, d, n) -> Optional[int]:
    """The first of the ``n`` windows of a pooled dim with no tap inside the input
    (None if none), in closed form: validation must not cost output x kernel steps (a
    kernel of 10**8 took 10-34 s when every tap was tried).

    Window ``o`` has taps ``a + t*d`` (``a = o*s - lo``, ``0 <= t < k``). The starts
    ``a`` increase with ``o``: past the windows starting inside the input come those
    starting past it; of those starting in the leading padding (``a < 0``) the first
    is the one most likely to end before the input, and the others reach 0 or beyond
    at ``a mod d`` (their first tap there), which misses the input only when
    ``d > size``: counted with floor sums."""
    if lo > (k - 1) * d:
        return 0
    if d > size:
        m = min(n, -(-lo // s))  # the windows starting in the leading padding

        def good(count):  # how many of the first `count` windows have a mod d < size
            # a mod d < size  <=>  floor(a/d) - floor((a - size)/d) == 1 (size <= d)
            return _floor_sum(count, d, s, -lo) - _floor_sum(count, d, s, -lo - size)

        if good(m) < m:  # bisect for the first bad window
            low, high = 1, m  # good(high) < high; good(low - 1) == low - 1
            while low < high:
                mid = (low + high) // 2
                if good(mid) < mid:
                    high = mid
                else:
                    low = mid + 1
            return low - 1
    if (n - 1) * s - lo >= size:
        return -(-(size + lo) // s)  # the first window starting past the input
    return None


def _floor_sum(n, m, a, b) -> int:
    """``sum(floor((a*i + b) / m) for i in range(n))`` for ``m >= 1``, ``a >= 0`` in
    O(log m) steps (the Euclid-like recursion of AtCoder's ``floor_sum``)."""
    total = 0
    if b < 0:  # shift b into [0, m): floor((a*i + b)/m) = floor((a*i + b + q*m)/m) - q
        q = -(b // m)
        total -= n * q
        b += q * m
    while n > 0:
        if a >= m:
            total += n * (n - 1) // 2 * (a // m)
            a %= m
        if b >= m:
            total += n * (b // m)
            b %= m
        y_max = a * n + b
        if y_max < m:
            break
        n, b = divmod(y_max, m)
        m, a = a, m
    return total


_WINDOW_COUNTS: Dict[Any, Any] = {}
_WINDOW_COUNTS_KEPT = 4096  # outputs along the dim; larger answers are not kept


def pool_window_counts(p: PoolParams, dim: int):
    """Per output position along ``dim``: (taps inside the input, taps inside
    input-plus-padding), as read-only int64 arrays. The ceil_mode overhang past the
    padding counts in neither. Counted per window in closed form (O(output), not
    O(output x kernel)), and kept per (params, dim): every average pooling call needs
    them, and computing them costs ~15 us a dim, a third of a small call."""
    key = (p, dim)
    hit = _WINDOW_COUNTS.get(key)
    if hit is None:
        hit = _window_counts(p, dim)
        for a in hit:
            a.flags.writeable = False  # shared by the calls that get them from here
        if p.out_shape[dim] <= _WINDOW_COUNTS_KEPT:
            if len(_WINDOW_COUNTS) >= 1024:
                _WINDOW_COUNTS.clear()
            _WINDOW_COUNTS[key] = hit
    return hit


def _window_counts(p: PoolParams, dim: int):
    size, k, s, d = p.in_shape[dim], p.kernel[dim], p.stride[dim], p.dilation[dim]
    lo, hi = p.padding[dim]
    start = np.arange(p.out_shape[dim], dtype=np.int64) * s - lo

    def taps_within(low, high):  # taps t in [0, k) with low <= start + t*d < high
        first = np.maximum(0, -((start - low) // d))  # ceil((low - start) / d)
        end = np.minimum(k, -((start - high) // d))  # ceil((high - start) / d)
        return np.maximum(end - first, 0)

    return taps_within(0, size), taps_within(-lo, size + hi)


def prod(values) -> int:
    return math.prod(values)
