"""A random differential fuzzer: every operation on a backend against the numpy reference.

A *case* is one call of one of the eight operations with a random but valid
configuration (``Case``: a plain record whose ``repr`` is Python that rebuilds it).
``gen_case(seed, index)`` makes case ``index`` of run ``seed`` (the same pair always
makes the same case, data included); ``check_case(case, backend)`` runs it on the
backend and on the numpy reference and returns what differs (an empty list when
nothing does).

What the generator draws: ranks 1-3, float32/float64 (and float16, run only on the
backends that compute in it: cuda-emu, cupy), batch 1-3, groups (1, 2, 3,
depthwise with multipliers), channel counts around the cpp GEMM's blocking (MR = 6
rows, NR = 16/8 columns, KC = 256 reduction rows) and the direct-kernel thresholds,
strides, dilations, symmetric / asymmetric / large padding, "same" and "valid",
output_padding, ceil_mode, count_include_pad, divisor_override, NaN, +-inf and ties in
max pooling, indices that collide in max_pool_backward, non-contiguous inputs, a
random thread count, and (per backend) the SIMD path or kernel-path overrides. Each
spatial dim is drawn with a *style*; the degenerate styles (size 1, kernel 1, output 1,
with and without padding) are frequent on purpose: the lower-rank fast paths of a
backend take exactly those dims for granted (the cpp bug of conv3d with depth 1,
padding (1, 0, 0), stride 3 lived there). About one case in six is "big": shapes that
reach the blocked / row-block / tiled paths of the cpp kernels (see
csrc/kernels.h: choose_path, d2_ok, s1_ok; csrc/gemm/: blocking) while staying a few
milliseconds.

Tolerances (``_tolerance``): the reference runs in float64 on the very inputs the
backend got. Every output element is a sum of at most K terms (products, or values
divided by a pooling divisor); with S the same sum over the terms' absolute values
(the reference applied to |inputs|), any summation order in precision eps gives an
error of at most about K * eps/2 * S, and the float64 reference adds its own, far
smaller one. The check is |got - expected| <= (K + 4) * eps * S (+ K subnormals), per
element -- rigorous, so it never fails on a legitimate order; a missing or doubled
term (about S / K) still stands out while K * K * eps < 1: K below ~2,900 in float32
(every forward output, input gradient and pooling; all but the largest weight
gradients, where a wrong path moves many terms anyway). K is per output array
(e.g. C_in/groups * prod(kernel) + 1 for a convolution, N * prod(out) for its weight
gradient). float16 is accumulated in float32 and rounded once more per partial sum:
float32's eps in that formula plus 2 * eps16 * S. Max pooling is exact: values and
indices equal, NaN where the reference has NaN. Results a backend made with its
Winograd path (``last_paths()``, forced or chosen: cpp, numba, and the CUDA backends'
F(2x2, 3x3)) have a bound of their own: its transforms mix the values of a whole
tile, so an element's error follows the largest S of the result, not its own; the tolerance is then at least 1e-5 * max S + 1e-4 *
|expected| in float32, 1e-12 * max S in float64 (the contract tests/test_winograd.py
checks on adversarial data).

About a third of the convolution cases fuse an activation (``activation=``, with a
random ``negative_slope`` for leaky_relu; the backward cases get ``y=``, an activated
output of the matching range, with exact zeros for relu), and forward ones often get
"wide" data (values x 30: sigmoid and tanh saturate). The bound of an activated result
is that of the sum it activates: forward, the activation's Lipschitz constant L (1,
max(1, slope), 1/4 for sigmoid) times the sum's tolerance plus 4 eps of the value (the
activation's own rounding); backward, the tolerance of the gradients of
g = grad_y * act'(y) with S taken over |g| and K + 4 more terms (g's own rounding).

Every case also checks that the inputs are unchanged (compared with copies made
before the call), the dtypes and shapes of the results, and that gradients not in
``needs`` come back as None.

Commands (from the repository root):

    # the CI budget: every available backend, a fresh seed each run
    .venv/bin/python -m pytest tests/test_fuzz.py -q
    # the long run, one backend (100,000 cases; prints progress and a summary)
    .venv/bin/python tests/fuzz.py --backend cpp --cases 100000
    # the same through pytest
    CNNFAST_FUZZ_CASES=100000 .venv/bin/python -m pytest tests/test_fuzz.py -q -k cpp
    # replay one case of a failure report
    .venv/bin/python tests/fuzz.py --backend cpp --seed SEED --index I --verbose

Environment: ``CNNFAST_FUZZ_SEED`` fixes the seed (default: a fresh one per run),
``CNNFAST_FUZZ_CASES`` the number of cases per backend.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import math
import os
import sys
import time
import traceback
from dataclasses import dataclass, field

import numpy as np

if __name__ == "__main__":  # run as a script: import the checkout's cnnfast
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cnnfast  # noqa: E402
from cnnfast import activation  # noqa: E402
from cnnfast import params as P  # noqa: E402
from cnnfast import registry  # noqa: E402
from helpers.simd import runnable_simd_paths  # noqa: E402

OPS = ("conv", "conv_backward", "conv_transpose", "conv_transpose_backward",
       "max_pool", "max_pool_backward", "avg_pool", "avg_pool_backward")
# Convolutions have the most paths (4 kernels x GEMM/direct/stride-1/fast 2-d).
OP_WEIGHTS = (0.16, 0.17, 0.13, 0.15, 0.12, 0.07, 0.10, 0.10)

GRAD_NAMES = ("grad_x", "grad_weight", "grad_bias")
ACTIVATIONS = ("relu", "leaky_relu", "sigmoid", "tanh")
# Work per case (multiply-adds, or pooling taps); past it a case is drawn again.
COST_LIMIT = 300_000
BIG_COST_LIMIT = 3_000_000


@dataclass
class Case:
    """One call: ``op`` on arrays of ``x_shape`` (and ``w_shape``) with ``kwargs``.

    ``data``: the value pattern ("normal"; for max pooling also "ties", "nan", "inf",
    "mixed"; for max_pool_backward "ref" indices -- those max_pool returns -- or
    "random" ones). ``layout``: "c", "strided" (a view of every other element of the
    last dim) or "fortran". ``threads``: set_num_threads for the call. ``knobs``:
    backend test switches ("simd" for cpp; "conv_path", "splits", "tile", "pool_fwd",
    "max_bwd" for cuda-emu/cupy), ignored by the other backends. ``pool`` (for
    max_pool_backward): the max_pool kwargs that made the indices.
    """
    op: str
    dtype: str
    x_shape: tuple
    w_shape: tuple = None
    bias: bool = False
    kwargs: dict = field(default_factory=dict)
    pool: dict = None
    data: str = "normal"
    layout: str = "c"
    threads: int = 1
    knobs: dict = field(default_factory=dict)
    seed: int = 0

    def call(self, backend="numpy") -> str:
        """The call as Python source (the array names are those of make_inputs)."""
        act_y = ", y=y" if "activation" in self.kwargs else ""
        args = {
            "conv": "x, w, b", "conv_transpose": "x, w, b",
            "conv_backward": f"gy, x, w{act_y}",
            "conv_transpose_backward": f"gy, x, w{act_y}",
            "max_pool": "x", "avg_pool": "x",
            "max_pool_backward": f"gy, indices, {self.x_shape!r}",
            "avg_pool_backward": f"gy, {self.x_shape!r}",
        }[self.op]
        kw = "".join(f", {k}={v!r}" for k, v in self.kwargs.items())
        return f"cnnfast.{self.op}({args}{kw}, backend={backend!r})"


# ----------------------------------------------------------------------------- generator


class Stats:
    """What the generator drew and threw away (invalid or too costly configurations)."""

    def __init__(self):
        self.cases = self.invalid = self.costly = self.declined = self.other_dtype = 0
        self.unfit = 0  # a forced algorithm that cannot run the case (NotImplementedError)
        self.tags = {}

    def tag(self, *names):
        for n in names:
            self.tags[n] = self.tags.get(n, 0) + 1

    def summary(self) -> str:
        tags = ", ".join(f"{k} {v}" for k, v in sorted(self.tags.items()))
        return (f"{self.cases} cases ({self.other_dtype} in a dtype the backend lacks, "
                f"{self.declined} declined by it, {self.unfit} where the forced "
                f"algorithm cannot run); redrawn: "
                f"{self.invalid} invalid, {self.costly} too costly; tags: {tags}")


def _pick(rng, values, weights=None):
    if weights is not None:
        w = np.asarray(weights, float)
        return values[int(rng.choice(len(values), p=w / w.sum()))]
    return values[int(rng.integers(len(values)))]


def _max_size(rank, big):
    # big 2-d planes reach several row blocks of cpp's buffered and stride-1 paths
    return {1: 160, 2: 40, 3: 10}[rank] if big else {1: 20, 2: 10, 3: 6}[rank]


def _dim_style(rng, rank, d):
    """collapsed: size 1, kernel 1; unit: kernel 1; full: kernel = padded input (output
    1); normal. The leading dim of a 3-d case is the one the 2-d fast paths collapse."""
    collapsed = 0.35 if (rank == 3 and d == 0) else 0.12
    return _pick(rng, ("collapsed", "unit", "full", "normal"),
                 (collapsed, 0.1, 0.08, 0.92 - collapsed - 0.1))


def _conv_dim(rng, style, transposed, big, rank):
    """(in, kernel, stride, dilation, (lo, hi), output_padding) of one dim."""
    if style == "collapsed":
        # size 1, kernel 1; output 1 when the padding stays within one stride --
        # often with leading padding (the tap then reads outside the input).
        s = int(_pick(rng, (1, 1, 2, 3, 5)))
        d = int(_pick(rng, (1, 1, 2)))
        if transposed:
            op = int(rng.integers(max(s, d))) if rng.random() < 0.6 else 0
            lo = int(rng.integers(op + 1))
            hi = op - lo if rng.random() < 0.7 else int(rng.integers(op - lo + 1))
            return 1, 1, s, d, (lo, hi), op  # output 1 + op - lo - hi
        lo = int(rng.integers(s)) if rng.random() < 0.7 else int(rng.integers(3))
        hi = int(rng.integers(s - lo)) if lo < s and rng.random() < 0.7 else int(rng.integers(2))
        return 1, 1, s, d, (lo, hi), 0
    k = 1 if style == "unit" else int(_pick(rng, (1, 2, 3, 3, 3, 4, 5, 5, 7)))
    if rank == 3 and k > 3:
        k = 3
    s = int(_pick(rng, (1, 1, 1, 2, 2, 3, 4)))
    if style == "full":  # one output whose window spans the (padded) input
        k = int(_pick(rng, (2, 3, 5)))
        lo, hi = int(rng.integers(2)), int(rng.integers(2))
        if transposed:  # input 1; the crop leaves one output
            op = int(rng.integers(s)) if rng.random() < 0.3 else 0
            lo = int(rng.integers(k + op))
            return 1, k, s, 1, (lo, k - 1 + op - lo), op
        return max(1, k - lo - hi), k, s, 1, (lo, hi), 0
    d = int(_pick(rng, (1, 1, 1, 1, 2, 3))) if k > 1 else int(_pick(rng, (1, 1, 2)))
    span = d * (k - 1)
    if rng.random() < 0.15:  # large: past the kernel's extent
        lo, hi = int(rng.integers(span + 4)), int(rng.integers(span + 4))
    elif rng.random() < 0.5:
        lo, hi = int(rng.integers(span + 1)), int(rng.integers(span + 1))
    else:
        lo = hi = int(rng.integers(span // 2 + 1))
    op = 0
    if transposed and max(s, d) > 1 and rng.random() < 0.4:
        op = int(rng.integers(max(s, d)))
    size_max = _max_size(rank, big)
    if transposed:
        n = int(rng.integers(1, max(2, size_max // max(1, s // 2)) + 1))
    else:
        least = max(1, span + 1 - lo - hi)
        n = int(rng.integers(least, max(least, size_max) + 1))
    return n, k, s, d, (lo, hi), op


def _padding_arg(rng, pairs):
    """The padding pairs written as the API takes them, in one of its forms."""
    if all(lo == hi for lo, hi in pairs) and len({lo for lo, _ in pairs}) == 1 \
            and rng.random() < 0.5:
        return pairs[0][0]
    return tuple(lo if lo == hi and rng.random() < 0.5 else (lo, hi) for lo, hi in pairs)


def _per_dim_arg(rng, values):
    if len(set(values)) == 1 and rng.random() < 0.5:
        return values[0]
    return tuple(values)


def _channels(rng, big):
    """(groups, input channels per group, output channels per group)."""
    kind = _pick(rng, ("dense", "grouped", "depthwise"), (0.5, 0.2, 0.3))
    if kind == "depthwise":
        g = int(_pick(rng, (1, 2, 3, 4, 5, 8, 16) if big else (1, 2, 3, 4, 5)))
        og = int(_pick(rng, (1, 1, 1, 2, 3, 7, 8, 9)))
        return g, 1, og
    # counts around MR = 6 (rows), the direct threshold og < 8 (cpp) / m < 16 (cuda),
    # cg >= 8 (cpp gather input gradient), K = cg * taps > 256 (cpp KC blocks)
    cg_pool = (1, 2, 3, 4, 5, 8, 9, 16, 17, 29, 33, 40) if big else (1, 2, 3, 4, 5, 6, 8, 9)
    og_pool = (1, 2, 4, 5, 6, 7, 8, 12, 13, 16, 17, 33) if big else (1, 2, 3, 4, 5, 6, 7, 8, 9)
    g = 1 if kind == "dense" else int(_pick(rng, (2, 3, 4)))
    return g, int(_pick(rng, cg_pool)), int(_pick(rng, og_pool))


def _gen_winograd(rng, op, stats):
    """A 2-d 3x3 convolution of stride 1, dilation 1 and one group: the shapes of the
    cpp backend's Winograd path (forced, or chosen with >= 16 channels in the reduction
    and >= 16 tiles of 4x4 outputs), with any padding; a third of them 3-d with a KD x 3
    x 3 kernel (its 3-d Winograd path: forward and input gradient)."""
    transposed = op.startswith("conv_transpose")
    spatial = tuple(int(rng.integers(1, 21)) for _ in range(2))
    kernel = (3, 3)
    if rng.random() < 1 / 3:
        spatial = (int(rng.integers(1, 9)),) + tuple(s // 2 + 1 for s in spatial)
        kernel = (int(_pick(rng, (1, 2, 3, 3))), 3, 3)
    pairs = [(int(rng.integers(0, 4)), int(rng.integers(0, 4))) for _ in spatial]
    c_in, c_out = (int(_pick(rng, (1, 3, 8, 12, 16, 33))) for _ in range(2))
    n = int(_pick(rng, (1, 2, 3, 4)))
    kw = {"stride": 1, "padding": _padding_arg(rng, pairs), "dilation": 1, "groups": 1}
    x_shape = (n, c_in) + spatial
    try:
        if transposed:
            kw["output_padding"] = 0
            w_shape = (c_in, c_out) + kernel
            p = P.conv_transpose_params(x_shape, w_shape, 1, kw["padding"], 0, 1, 1)
        else:
            w_shape = (c_out, c_in) + kernel
            p = P.conv_params(x_shape, w_shape, 1, kw["padding"], 1, 1)
    except ValueError:
        stats.invalid += 1
        return None
    cost = n * c_out * c_in * math.prod(kernel) * max(math.prod(p.out_shape),
                                                      math.prod(spatial))
    if cost > BIG_COST_LIMIT:
        stats.costly += 1
        return None
    if op.endswith("backward"):
        kw["needs"] = _pick(rng, (("x", "weight", "bias"), ("x",), ("weight",)),
                            (0.6, 0.2, 0.2))
    stats.tag("winograd-shaped" if len(kernel) == 2 else "winograd-shaped-3d")
    return dict(x_shape=x_shape, w_shape=w_shape, kwargs=kw,
                bias=not op.endswith("backward") and rng.random() < 0.6)


def _gen_conv(rng, op, stats):
    if rng.random() < 0.08:
        return _gen_winograd(rng, op, stats)
    transposed = op.startswith("conv_transpose")
    backward = op.endswith("backward")
    big = rng.random() < 0.17
    rank = int(_pick(rng, (1, 2, 3), (0.3, 0.45, 0.25)))
    if big and rank == 3 and rng.random() < 0.5:
        rank = 2
    dims = [_conv_dim(rng, _dim_style(rng, rank, d), transposed, big, rank)
            for d in range(rank)]
    spatial = tuple(d[0] for d in dims)
    kernel = tuple(d[1] for d in dims)
    stride = [d[2] for d in dims]
    dilation = [d[3] for d in dims]
    pairs = [d[4] for d in dims]
    opad = [d[5] for d in dims]
    g, cg, og = _channels(rng, big)
    n = int(_pick(rng, (1, 1, 2, 2, 3)))
    c_in, c_out = g * cg, g * og
    kw = {}
    padding = _padding_arg(rng, pairs)
    r = rng.random()
    if r < 0.06:
        padding = "valid"
    elif r < 0.14:
        padding = "same"
        if not transposed:
            stride = [1] * rank
    kw["stride"] = _per_dim_arg(rng, stride)
    kw["padding"] = padding
    if transposed:
        kw["output_padding"] = _per_dim_arg(rng, opad)
        kw["groups"] = g
        kw["dilation"] = _per_dim_arg(rng, dilation)
        w_shape = (c_in, og) + kernel  # (C_in, C_out / groups, *kernel)
    else:
        kw["dilation"] = _per_dim_arg(rng, dilation)
        kw["groups"] = g
        w_shape = (c_out, cg) + kernel
    x_shape = (n, c_in) + spatial
    try:
        if transposed:
            p = P.conv_transpose_params(x_shape, w_shape, kw["stride"], padding,
                                        kw["output_padding"], g, kw["dilation"])
        else:
            p = P.conv_params(x_shape, w_shape, kw["stride"], padding, kw["dilation"], g)
    except ValueError:
        stats.invalid += 1
        return None
    cost = n * c_out * cg * math.prod(kernel) * max(math.prod(p.out_shape), math.prod(spatial))
    if cost > (BIG_COST_LIMIT if big else COST_LIMIT):
        stats.costly += 1
        return None
    if backward:
        kw["needs"] = _pick(rng, (("x", "weight", "bias"), ("x",), ("weight",), ("bias",),
                                  ("x", "weight"), ("weight", "bias"), ()),
                            (0.6, 0.1, 0.1, 0.05, 0.06, 0.05, 0.04))
    stats.tag(*_conv_tags(p, g, cg, og, transposed, big))
    return dict(x_shape=x_shape, w_shape=w_shape, kwargs=kw,
                bias=(not backward) and rng.random() < 0.6)


def _conv_tags(p, g, cg, og, transposed, big):
    """Labels of the cpp paths a convolution reaches (a mirror of the dispatch in
    csrc/kernels.h, for the run summary only)."""
    tags = ["big"] if big else []
    if cg == 1:
        tags.append("one-channel-per-group")
    if cg * math.prod(p.kernel) > 256:
        tags.append("K>256")
    if p.rank == 3 and p.kernel[0] == 1 and (p.in_shape[0] == 1 or p.out_shape[0] == 1):
        tags.append("z-collapsed" + ("-padded" if p.padding[0][0] else ""))
    if any(lo != hi for lo, hi in p.padding):
        tags.append("asymmetric-pad")
    if transposed and any(p.output_padding):
        tags.append("output_padding")
    return tags


def _pool_dim(rng, style, big, rank):
    """(in, kernel, stride or None, dilation, (lo, hi)) of one dim."""
    if style == "collapsed":
        s = int(_pick(rng, (1, 2, 3)))
        return 1, 1, s, 1, (0, int(rng.integers(s)))
    if style in ("global", "full"):
        n = int(rng.integers(1, _max_size(rank, big) + 1))
        return n, n, None, 1, (0, 0)
    size_max = _max_size(rank, big)
    k = 1 if style == "unit" else int(_pick(rng, (1, 2, 2, 3, 3, 4, 5, 7)))
    s = _pick(rng, (None, None, 1, 2, 3, 4))
    d = int(_pick(rng, (1, 1, 1, 2, 3))) if k > 1 else 1
    lo = int(rng.integers(k + 1)) if rng.random() < 0.4 else 0
    hi = int(rng.integers(k + 1)) if rng.random() < 0.4 else lo
    least = max(1, d * (k - 1) + 1 - lo - hi)
    n = int(rng.integers(least, max(least, size_max) + 1))
    return n, k, s, d, (lo, hi)


def _gen_pool(rng, op, stats):
    avg = op.startswith("avg")
    big = rng.random() < 0.15
    rank = int(_pick(rng, (1, 2, 3), (0.3, 0.45, 0.25)))
    glob = rng.random() < 0.08
    styles = ["global" if glob else _dim_style(rng, rank, d) for d in range(rank)]
    dims = [_pool_dim(rng, st, big, rank) for st in styles]
    spatial = tuple(d[0] for d in dims)
    kernel = [d[1] for d in dims]
    strides = [d[2] for d in dims]
    if all(s is None for s in strides):
        stride = None
    else:
        stride = _per_dim_arg(rng, [k if s is None else s for s, k in zip(strides, kernel)])
    kw = {"kernel_size": _per_dim_arg(rng, kernel), "stride": stride,
          "padding": _padding_arg(rng, [d[4] for d in dims])}
    dilation = _per_dim_arg(rng, [d[3] for d in dims])
    kw["ceil_mode"] = bool(rng.random() < 0.4)
    if avg:
        kw["count_include_pad"] = bool(rng.random() < 0.5)
        kw["divisor_override"] = None if rng.random() < 0.7 else int(rng.integers(1, 13))
    kw["dilation"] = dilation
    c = int(_pick(rng, (1, 2, 3, 4, 8, 16) if big else (1, 2, 3, 4)))
    n = int(_pick(rng, (1, 1, 2, 3)))
    x_shape = (n, c) + spatial
    try:
        p = P.pool_params(x_shape, kw["kernel_size"], kw["stride"], kw["padding"],
                          kw["dilation"], kw["ceil_mode"], kw.get("count_include_pad", True),
                          kw.get("divisor_override"))
    except ValueError:
        stats.invalid += 1
        return None
    cost = n * c * math.prod(p.out_shape) * math.prod(p.kernel) + n * c * math.prod(spatial)
    if cost > (BIG_COST_LIMIT if big else COST_LIMIT):
        stats.costly += 1
        return None
    stats.tag(*(["big"] if big else []), *(["global-pool"] if glob else []))
    if math.prod(p.kernel) >= 32:
        stats.tag("pool-taps>=32")
    return dict(x_shape=x_shape, kwargs=kw)


def _knobs(rng):
    """Backend test switches; each backend reads only its own."""
    knobs = {}
    if rng.random() < 0.4:
        # cpp: another ISA's kernels (vector widths, tile shapes), where this process
        # runs them (helpers/simd.py); the same draw on every machine.
        knobs["simd"] = _pick(rng, ("portable", "avx2", "avx512"))
    if rng.random() < 0.3:
        # (winograd and depthwise-tiled decline most cases: 2-d 3x3 stride 1, 2-d
        # depthwise 3x3/5x5)
        knobs["conv_path"] = _pick(rng, ("gemm", "direct", "winograd", "depthwise-tiled"))
    if rng.random() < 0.2:
        knobs["splits"] = int(_pick(rng, (1, 2, 3, 5)))
    if rng.random() < 0.15:
        knobs["tile"] = _pick(rng, ("small", "small16", "small16_occ", "thin", "sliver"))
    if rng.random() < 0.3:
        knobs["pool_fwd"] = _pick(rng, ("thread", "warp"))
    if rng.random() < 0.3:
        knobs["max_bwd"] = _pick(rng, ("gather", "segments", "scatter"))
    # A forced convolution algorithm (cnnfast.explain's names): every path on random
    # cases, not only where the automatic choice sends them; a case the path cannot
    # run is declined (NotImplementedError).
    for backend in ("cpp", "numba"):
        if rng.random() < 0.3:
            knobs[f"{backend}_algorithm"] = _pick(rng, _ALGORITHMS[backend])
    return knobs


# The algorithm names of the backends whose convolution paths the fuzzer forces (fixed
# here, not read from the backends, so that a seed makes the same cases everywhere).
_ALGORITHMS = {"cpp": ("direct-2d", "direct-rows", "gemm-s1", "gemm", "winograd",
                       "wgrad-short", "gemm-phase"),
               "numba": ("direct", "gemm", "gemm-wide", "phases", "winograd")}


def gen_case(seed: int, index: int, stats: Stats = None) -> Case:
    """Case ``index`` of run ``seed``: a valid configuration of a random operation."""
    stats = stats if stats is not None else Stats()
    rng = np.random.default_rng([seed, index])
    op = _pick(rng, OPS, OP_WEIGHTS)
    while True:
        if op.startswith("conv"):
            drawn = _gen_conv(rng, op, stats)
        else:
            drawn = _gen_pool(rng, "max_pool" if op == "max_pool_backward" else op, stats)
        if drawn is not None:
            break
    stats.cases += 1
    # float16: the CUDA backends only (the others skip those cases)
    case = Case(op=op, dtype=_pick(rng, ("float32", "float64", "float16"), (0.45, 0.45, 0.1)),
                **drawn)
    if op == "max_pool":
        case.kwargs["return_indices"] = bool(rng.random() < 0.75)
    if op.startswith("max_pool"):
        case.data = _pick(rng, ("normal", "ties", "nan", "inf", "mixed"))
    if op == "max_pool_backward":
        case.pool = case.kwargs
        case.kwargs = {}
        case.data = "random" if rng.random() < 0.3 else "ref"
    case.layout = _pick(rng, ("c", "strided", "fortran"), (0.8, 0.1, 0.1))
    case.threads = int(_pick(rng, (1, 2, 3, 4, 7), (0.45, 0.2, 0.2, 0.1, 0.05)))
    case.knobs = _knobs(rng)
    case.seed = int(rng.integers(2 ** 31))
    if op.startswith("conv") and rng.random() < 0.33:
        _draw_activation(rng, case)
    return case


def _draw_activation(rng, case):
    """A fused activation for a convolution case (see the module docstring)."""
    act = _pick(rng, ACTIVATIONS)
    case.kwargs["activation"] = act
    if act == "leaky_relu":
        case.kwargs["negative_slope"] = float(_pick(rng, (0.01, 0.2, 0.0, 3.0)))
    if not case.op.endswith("backward") and rng.random() < 0.3:
        case.data = "wide"


# ----------------------------------------------------------------------------- inputs


def _out_shape(case) -> tuple:
    """The output shape of the forward op the case's grad_y belongs to."""
    kw = case.kwargs
    if case.op.startswith("conv_transpose"):
        p = P.conv_transpose_params(case.x_shape, case.w_shape, kw["stride"], kw["padding"],
                                    kw["output_padding"], kw["groups"], kw["dilation"])
        return case.x_shape[:1] + (case.w_shape[1] * kw["groups"],) + p.out_shape
    if case.op.startswith("conv"):
        p = P.conv_params(case.x_shape, case.w_shape, kw["stride"], kw["padding"],
                          kw["dilation"], kw["groups"])
        return case.x_shape[:1] + case.w_shape[:1] + p.out_shape
    kw = case.pool or kw
    p = P.pool_params(case.x_shape, kw["kernel_size"], kw["stride"], kw["padding"],
                      kw["dilation"], kw["ceil_mode"], kw.get("count_include_pad", True),
                      kw.get("divisor_override"))
    return case.x_shape[:2] + p.out_shape


def _values(rng, shape, pattern):
    if pattern == "ties":  # few distinct values: many tied maxima
        return rng.integers(-2, 3, shape).astype(np.float64)
    v = rng.standard_normal(shape)
    if pattern in ("nan", "inf", "mixed"):
        if pattern == "mixed":
            v = rng.integers(-2, 3, shape).astype(np.float64)
        u = rng.random(shape)
        if pattern != "inf":
            v[u < 0.12] = np.nan
        if pattern != "nan":
            v[(u >= 0.12) & (u < 0.4)] = -np.inf  # windows of -inf only happen
            v[(u >= 0.4) & (u < 0.45)] = np.inf
    return v


def _lay_out(a, layout):
    if layout == "strided":
        big = np.empty(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        big[..., ::2] = a
        big[..., 1::2] = 7.0  # never read: a kernel that reads them is wrong
        return big[..., ::2]
    if layout == "fortran":
        return np.asfortranarray(a)
    return a


def make_inputs(case: Case) -> dict:
    """The case's input arrays by name (x, w, b, gy, y, indices), in its dtype and
    layout."""
    rng = np.random.default_rng(case.seed)
    dt = np.dtype(case.dtype)
    a = {}
    if case.op in ("conv", "conv_transpose", "conv_backward", "conv_transpose_backward"):
        a["x"] = rng.standard_normal(case.x_shape) * (30 if case.data == "wide" else 1)
        a["w"] = rng.standard_normal(case.w_shape)
        if case.op.endswith("backward"):
            a["gy"] = rng.standard_normal(_out_shape(case))
            if "activation" in case.kwargs:  # an activated output: relu has exact zeros
                a["y"] = activation.apply(rng.standard_normal(_out_shape(case)) * 2,
                                          case.kwargs["activation"],
                                          case.kwargs.get("negative_slope", 0.01))
        elif case.bias:
            a["b"] = rng.standard_normal(_out_shape(case)[1])
    elif case.op in ("max_pool", "avg_pool"):
        a["x"] = _values(rng, case.x_shape, case.data)
    elif case.op == "avg_pool_backward":
        a["gy"] = rng.standard_normal(_out_shape(case))
    else:  # max_pool_backward: grad_y and the indices of a max_pool
        out = _out_shape(case)
        a["gy"] = rng.standard_normal(out)
        if case.data == "random":  # any valid indices: many collide
            a["indices"] = rng.integers(0, math.prod(case.x_shape[2:]), out)
        else:
            x = _values(rng, case.x_shape, "mixed")
            a["indices"] = cnnfast.max_pool(x, **case.pool, return_indices=True,
                                            backend="numpy")[1]
    out = {}
    for k, v in a.items():
        v = v if k == "indices" else v.astype(dt)
        out[k] = _lay_out(v, case.layout)
    out.setdefault("b", None)
    return out


# ----------------------------------------------------------------------------- running


def forced_algorithm(case: Case, backend: str):
    """The convolution algorithm the case forces on ``backend`` (None: automatic)."""
    if case.op.startswith("conv"):
        return case.knobs.get(f"{backend}_algorithm")
    return None


def forces_a_partial_path(case: Case, backend: str) -> bool:
    """Whether the case forces a convolution path that runs only some cases: an
    algorithm of cpp or numba, or the CUDA backends' ``conv_path`` knob naming one
    of their partial paths; such a path's NotImplementedError is not the backend
    declining the case."""
    if backend in ("cuda-emu", "cupy"):
        from cnnfast.backends.cuda import conv_launch

        return (case.op.startswith("conv") and
                case.knobs.get("conv_path") not in (None,) + conv_launch.GENERAL_PATHS)
    return bool(forced_algorithm(case, backend))


def run_op(case: Case, arrays: dict, backend: str):
    """Call the case's operation; a tuple of named results (None for those absent)."""
    f = getattr(cnnfast, case.op)
    kw = dict(case.kwargs, backend=backend)
    if forced_algorithm(case, backend):
        kw["algorithm"] = forced_algorithm(case, backend)
    x, w, b, gy = arrays.get("x"), arrays.get("w"), arrays.get("b"), arrays.get("gy")
    if case.op in ("conv", "conv_transpose"):
        return {"y": f(x, w, b, **kw)}
    if case.op in ("conv_backward", "conv_transpose_backward"):
        if "activation" in case.kwargs:
            kw["y"] = arrays["y"]
        return dict(zip(GRAD_NAMES, f(gy, x, w, **kw)))
    if case.op == "max_pool":
        r = f(x, **kw)
        return {"y": r[0], "indices": r[1]} if case.kwargs["return_indices"] else {"y": r}
    if case.op == "avg_pool":
        return {"y": f(x, **kw)}
    if case.op == "max_pool_backward":
        return {"grad_x": f(gy, arrays["indices"], case.x_shape, **kw)}
    return {"grad_x": f(gy, case.x_shape, **kw)}


def reduction_lengths(case: Case) -> dict:
    """Per result: the most terms one of its elements sums (see the module docstring)."""
    n = case.x_shape[0]
    if case.op.startswith("conv"):
        taps = math.prod(case.w_shape[2:])
        g = case.kwargs["groups"]
        pin = math.prod(case.x_shape[2:])
        pout = math.prod(_out_shape(case)[2:])
        if case.op.startswith("conv_transpose"):
            cin_g, cout_g = case.x_shape[1] // g, case.w_shape[1]
            return {"y": cin_g * taps + 1, "grad_x": cout_g * taps,
                    "grad_weight": n * pin, "grad_bias": n * pout}
        cg, og = case.w_shape[1], case.w_shape[0] // g
        return {"y": cg * taps + 1, "grad_x": og * taps, "grad_weight": n * pout,
                "grad_bias": n * pout}
    if case.op == "max_pool_backward":
        return {"grad_x": math.prod(_out_shape(case)[2:])}  # colliding indices
    k = case.kwargs["kernel_size"]
    taps = math.prod(k) if isinstance(k, tuple) else k ** (len(case.x_shape) - 2)
    return {"y": taps + 1, "grad_x": taps + 1}  # + the division


def _tolerance(dtype, k, bound):
    if dtype == np.float16:
        # float16 is accumulated in float32 (conv_launch); the partial sums of split
        # reductions and the result are rounded to float16: at most eps16 * S more.
        f32 = np.finfo(np.float32)
        return ((k + 4) * f32.eps + 2 * np.finfo(np.float16).eps) * bound \
            + k * np.finfo(np.float16).smallest_subnormal
    f = np.finfo(dtype)
    return (k + 4) * f.eps * bound + k * f.smallest_subnormal


@contextlib.contextmanager
def _settings(case: Case, backend: str):
    """The case's thread count and the backend's test switches, restored after."""
    threads = cnnfast.get_num_threads()
    cnnfast.set_num_threads(case.threads)
    undo = []
    try:
        k = case.knobs
        if backend == "cpp" and k.get("simd") in runnable_simd_paths():
            from cnnfast.backends.cpp import _cpp
            _cpp.set_simd_path(k["simd"])
            undo.append(lambda: _cpp.set_simd_path("auto"))
        if backend in ("cuda-emu", "cupy"):
            from cnnfast.backends.cuda import conv_launch
            from cnnfast.backends.cuda import pool_launch
            stack = contextlib.ExitStack()
            stack.enter_context(conv_launch.override(
                path=k.get("conv_path"), splits=k.get("splits"), tile=k.get("tile")))
            stack.enter_context(pool_launch.override(fwd=k.get("pool_fwd"),
                                                       max_bwd=k.get("max_bwd")))
            undo.append(stack.close)
        yield
    finally:
        for u in reversed(undo):
            u()
        cnnfast.set_num_threads(threads)


def _to_backend(arrays, kind):
    if kind == "numpy":
        return arrays
    import cupy
    return {k: None if v is None else cupy.asarray(v) for k, v in arrays.items()}


def _to_numpy(a):
    return a if a is None or isinstance(a, np.ndarray) else a.get()


def _winograd_tolerance(dtype, exp, bound):
    """The Winograd path's contract (see the module docstring)."""
    smax = float(np.max(bound[np.isfinite(bound)], initial=0.0))
    if dtype == np.float32:
        return 1e-5 * smax + 1e-4 * np.abs(np.nan_to_num(exp))
    return np.full_like(exp, 1e-12 * smax)


def _bounds(case: Case, f64: dict) -> dict:
    """Per result, S of every element: the reference on |inputs|; with an activation,
    that of the activated sum (forward: the sum before the activation; backward: the
    gradients of |g|, g = grad_y * act'(y))."""
    plain = Case(**{**case.__dict__, "kwargs": _without_activation(case.kwargs)})
    arrays = dict(f64)
    if case.op.endswith("backward") and "activation" in case.kwargs:
        arrays["gy"] = activation.grad(f64["gy"], f64["y"], case.kwargs["activation"],
                                       case.kwargs.get("negative_slope", 0.01))
    arrays = {k: v if v is None or k == "indices" else np.abs(v) for k, v in arrays.items()}
    return run_op(plain, arrays, "numpy")


def _activation_tolerance(case: Case, f64: dict):
    """How an activated result's tolerance differs (see the module docstring): a dict
    of the Lipschitz constant, extra eps * S, the relative part (eps * |value|) and,
    forward, the sum before the activation; None without an activation."""
    act = case.kwargs.get("activation")
    if act is None:
        return None
    if case.op.endswith("backward"):  # g = grad_y * act'(y) rounded once or twice
        return {"lipschitz": 1.0, "extra_eps": 4.0, "rel": 0.0, "pre": None}
    plain = Case(**{**case.__dict__, "kwargs": _without_activation(case.kwargs)})
    lipschitz = {"relu": 1.0, "tanh": 1.0, "sigmoid": 0.25,
                 "leaky_relu": max(1.0, case.kwargs.get("negative_slope", 0.01))}[act]
    return {"lipschitz": lipschitz, "extra_eps": 0.0, "rel": 4.0,
            "pre": run_op(plain, f64, "numpy")["y"]}


def _without_activation(kwargs):
    return {k: v for k, v in kwargs.items() if k not in ("activation", "negative_slope")}


def _compare(name, got, exp, bound, k, dtype, exact, winograd=False, act=None):
    """What is wrong with result ``name`` (None when it matches); ``winograd``: the
    backend made it with a Winograd path; ``act``: ``_activation_tolerance``."""
    if got is None or exp is None:
        return None if got is None and exp is None else \
            f"{name}: got {type(got).__name__}, expected {type(exp).__name__}"
    want_dtype = np.int64 if name == "indices" else dtype
    if got.dtype != want_dtype or got.shape != exp.shape:
        return (f"{name}: got {got.dtype} {got.shape}, expected {np.dtype(want_dtype)} "
                f"{exp.shape}")
    g, e = got.astype(np.float64), exp.astype(np.float64)
    if not np.array_equal(np.isnan(g), np.isnan(e)):
        where = tuple(np.argwhere(np.isnan(g) != np.isnan(e))[0].tolist())
        return f"{name}: NaN positions differ (first at {where}: got {g[where]!r}, expected {e[where]!r})"
    finite = np.isfinite(e)
    if not np.array_equal(g[~finite], e[~finite], equal_nan=True) \
            or not np.isfinite(g[finite]).all():
        return f"{name}: infinities differ"
    with np.errstate(invalid="ignore"):  # inf - inf where both are inf
        err = np.abs(g - e)
    err[~finite] = 0
    tol = np.zeros_like(e) if exact else _tolerance(dtype, k, bound)
    pre = e if act is None or act["pre"] is None else act["pre"]
    if winograd:
        tol = np.maximum(tol, _winograd_tolerance(dtype, pre, bound.astype(np.float64)))
    if act is not None:
        eps = float(np.finfo(dtype).eps)
        tol = act["lipschitz"] * (tol + act["extra_eps"] * eps * bound) \
            + act["rel"] * eps * np.abs(e)
    bad = err > tol
    if not bad.any():
        return None
    i = tuple(int(v) for v in np.argwhere(bad)[0])
    return (f"{name}: {int(bad.sum())} of {bad.size} elements differ; first at {i}: got "
            f"{g[i]:.9g}, expected {e[i]:.9g} (tolerance {tol[i]:.3g}; max error "
            f"{err.max():.3g})")


# The modules whose last_paths() name the paths of a backend's last call.
_PATH_MODULES = {"cpp": "cnnfast.backends.cpp.backend", "numba": "cnnfast.backends.numba.backend",
                 "cuda-emu": "cnnfast.backends.cuda.emu_backend",
                 "cupy": "cnnfast.backends.cuda.cupy_backend"}


def _winograd_results(backend: str) -> set:
    """The results of the last call the backend made with a Winograd path."""
    if backend not in _PATH_MODULES:
        return set()
    module = importlib.import_module(_PATH_MODULES[backend])
    return {name for name, path in module.last_paths().items() if path == "winograd"}


def check_case(case: Case, backend: str) -> list:
    """Run ``case`` on ``backend`` and on the numpy reference; the problems found
    (None when the backend declines the case with NotImplementedError)."""
    arrays = make_inputs(case)
    copies = {k: None if v is None else v.copy() for k, v in arrays.items()}
    kind = registry.get_backend(backend).array
    problems = []
    try:
        with _settings(case, backend):
            dev = _to_backend(arrays, kind)
            got = {k: _to_numpy(v) for k, v in run_op(case, dev, backend).items()}
            winograd = _winograd_results(backend)
            if kind != "numpy":
                arrays = {k: _to_numpy(v) for k, v in dev.items()}
    except NotImplementedError:  # the backend declines the case (allowed by the API)
        return None
    except Exception:
        return [f"{backend} raised:\n{traceback.format_exc(limit=-3)}"]
    for name, before in copies.items():
        if before is not None and not np.array_equal(arrays[name], before, equal_nan=True):
            problems.append(f"input {name} was modified")
    f64 = {k: None if v is None or k == "indices" else v.astype(np.float64)
           for k, v in copies.items()}
    f64["indices"] = copies.get("indices")
    exact = case.op == "max_pool"
    try:
        expected = run_op(case, f64, "numpy")
        bounds = expected if exact else _bounds(case, f64)
    except Exception:
        return problems + [f"the numpy reference raised:\n{traceback.format_exc(limit=-3)}"]
    lengths = reduction_lengths(case)
    act = _activation_tolerance(case, f64)
    for name, exp in expected.items():
        if exp is not None and name != "indices":
            exp = exp.astype(np.float64)
        msg = _compare(name, got.get(name), exp, bounds[name], lengths.get(name, 1),
                       np.dtype(case.dtype), exact, name in winograd, act)
        if msg:
            problems.append(msg)
    return problems


def describe(case: Case, backend: str, seed=None, index=None) -> str:
    """A failure report: how to replay the case and the call itself."""
    arrays = make_inputs(case)
    shapes = ", ".join(f"{k}: {v.dtype} {v.shape}" for k, v in arrays.items() if v is not None)
    lines = []
    if seed is not None:
        lines.append(f"seed {seed}, case {index}; replay: .venv/bin/python tests/fuzz.py "
                     f"--backend {backend} --seed {seed} --index {index} --verbose")
    lines += [f"  call: {case.call(backend)}",
              f"  arrays ({case.layout} layout, {case.data} data): {shapes}",
              f"  threads {case.threads}, knobs {case.knobs}",
              f"  python (with tests/ on sys.path): from fuzz import *; "
              f"print(check_case({case!r}, {backend!r}))"]
    return "\n".join(lines)


def run(backend: str, seed: int, cases: int, start: int = 0, max_failures: int = 10,
        progress=None, verbose=False):
    """Check ``cases`` cases from ``start``; (failure reports, Stats)."""
    stats = Stats()
    failures = []
    for i in range(start, start + cases):
        case = gen_case(seed, i, stats)
        if verbose:
            print(f"case {i}: {case!r}", flush=True)
        if case.dtype not in registry.get_backend(backend).dtypes:
            stats.other_dtype += 1
            continue
        problems = check_case(case, backend)
        if problems is None and forces_a_partial_path(case, backend):
            stats.unfit += 1
        elif problems is None:
            stats.declined += 1
        elif problems:
            failures.append(describe(case, backend, seed, i) + "\n  " +
                            "\n  ".join(problems))
            if len(failures) >= max_failures:
                break
        if progress and (i + 1 - start) % progress == 0:
            print(f"{backend}: {i + 1 - start} cases, {len(failures)} failures",
                  file=sys.stderr, flush=True)
    return failures, stats


def default_seed() -> int:
    env = os.environ.get("CNNFAST_FUZZ_SEED", "").strip()
    return int(env) if env else int.from_bytes(os.urandom(4), "little")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", required=True, choices=registry.backend_names())
    ap.add_argument("--cases", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--start", type=int, default=0, help="the first case index")
    ap.add_argument("--index", type=int, default=None, help="run this one case")
    ap.add_argument("--max-failures", type=int, default=20)
    ap.add_argument("--verbose", action="store_true", help="print every case first")
    args = ap.parse_args(argv)
    b = registry.get_backend(args.backend)
    if not b.available:
        ap.error(f"backend {args.backend!r} unavailable: {b.reason}")
    seed = default_seed() if args.seed is None else args.seed
    start, cases = (args.index, 1) if args.index is not None else (args.start, args.cases)
    print(f"fuzz: backend {args.backend}, seed {seed}, cases {start}..{start + cases - 1}",
          flush=True)
    t = time.perf_counter()
    failures, stats = run(args.backend, seed, cases, start, args.max_failures,
                          progress=max(1, min(10000, cases // 10)), verbose=args.verbose)
    print(f"{stats.summary()}\n{time.perf_counter() - t:.1f} s, {len(failures)} failures")
    for f in failures:
        print("\n" + f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
