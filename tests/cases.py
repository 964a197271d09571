"""The parametrised grid shared by every test: data, not code.

Each case is a small frozen record; ``conv_cases()``, ``conv_transpose_cases()`` and
``pool_cases()`` enumerate the full product of ranks, strides, paddings (symmetric,
asymmetric, "same"/"valid"), dilations, groups (1, 2, depthwise) and -- for pooling --
ceil_mode, count_include_pad and divisor_override, dropping only the combinations that
API.md rejects (checked with ``cnnfast.params``, so the grid follows the rules). Named
special cases (1x1 kernels, kernel == input, batch 1, odd channel counts that hit
blocked-kernel tails, depthwise multipliers) are appended.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Optional

import numpy as np

from cnnfast import params as P

SPATIAL = {1: (9,), 2: (7, 6), 3: (5, 4, 6)}
KERNEL = {1: (3,), 2: (3, 2), 3: (2, 3, 2)}
# Asymmetric padding per dim: a (before, after) pair, an int, another pair.
ASYM = ((1, 0), 2, (0, 2))


@dataclass(frozen=True)
class ConvCase:
    rank: int
    n: int
    c_in: int
    c_out: int
    spatial: tuple
    kernel: tuple
    stride: object
    padding: object
    dilation: object
    groups: int
    bias: bool
    output_padding: object = 0  # transposed only
    noncontiguous: bool = False
    name: str = ""

    def id(self):
        if self.name:
            return self.name
        return (f"r{self.rank}-s{self.stride}-p{self.padding}-d{self.dilation}"
                f"-g{self.groups}-{'b' if self.bias else 'nob'}"
                f"-op{self.output_padding}").replace(" ", "")

    def weight_shape(self, transposed=False):
        if transposed:
            return (self.c_in, self.c_out // self.groups) + self.kernel
        return (self.c_out, self.c_in // self.groups) + self.kernel


@dataclass(frozen=True)
class PoolCase:
    rank: int
    n: int
    c: int
    spatial: tuple
    kernel: object
    stride: object
    padding: object
    dilation: object
    ceil_mode: bool
    count_include_pad: bool = True
    divisor_override: Optional[int] = None
    noncontiguous: bool = False
    name: str = ""

    def id(self):
        if self.name:
            return self.name
        return (f"r{self.rank}-k{self.kernel}-s{self.stride}-p{self.padding}"
                f"-d{self.dilation}-{'ceil' if self.ceil_mode else 'floor'}"
                f"-cip{int(self.count_include_pad)}-div{self.divisor_override}"
                ).replace(" ", "")


def _paddings(rank):
    return [0, 1, ASYM[:rank], "same", "valid"]


def _valid_conv(c: ConvCase, transposed: bool) -> bool:
    x_shape = (c.n, c.c_in) + c.spatial
    try:
        if transposed:
            P.conv_transpose_params(x_shape, c.weight_shape(True), c.stride, c.padding,
                                    c.output_padding, c.groups, c.dilation)
        else:
            P.conv_params(x_shape, c.weight_shape(), c.stride, c.padding, c.dilation,
                          c.groups)
    except ValueError:
        return False
    return True


def _conv_grid(transposed: bool):
    cases = []
    i = 0
    for rank, stride, padding, dilation, groups in itertools.product(
            (1, 2, 3), (1, 2, 3), range(5), (1, 2), (1, 2, 4)):
        pad = _paddings(rank)[padding]
        c_in, c_out = 4, 8
        opads = [0]
        if transposed and stride > 1:
            opads.append(stride - 1)
        for op in opads:
            case = ConvCase(rank, 2, c_in, c_out, SPATIAL[rank], KERNEL[rank], stride, pad,
                            dilation, groups, bias=(i % 2 == 0), output_padding=op,
                            noncontiguous=(i % 7 == 3))
            i += 1
            if _valid_conv(case, transposed):
                cases.append(case)
    return cases


def _special_conv(transposed: bool):
    r2 = dict(rank=2, n=2)
    cases = [
        ConvCase(c_in=3, c_out=5, spatial=(6, 5), kernel=(1, 1), stride=1, padding=0,
                 dilation=1, groups=1, bias=True, name="1x1", **r2),
        ConvCase(c_in=3, c_out=4, spatial=(5, 5), kernel=(5, 5), stride=1, padding=0,
                 dilation=1, groups=1, bias=True, name="kernel-equals-input", **r2),
        ConvCase(rank=2, n=1, c_in=2, c_out=3, spatial=(6, 7), kernel=(3, 3), stride=2,
                 padding=1, dilation=1, groups=1, bias=False, name="batch1"),
        ConvCase(c_in=17, c_out=33, spatial=(9, 11), kernel=(3, 3), stride=1, padding=1,
                 dilation=1, groups=1, bias=True, name="odd-channels-tails", **r2),
        ConvCase(c_in=32, c_out=64, spatial=(10, 10), kernel=(3, 3), stride=1, padding=1,
                 dilation=1, groups=1, bias=True, name="dense-64", **r2),
        ConvCase(c_in=24, c_out=40, spatial=(8, 9), kernel=(1, 1), stride=1, padding=0,
                 dilation=1, groups=1, bias=False, name="1x1-wide", **r2),
        ConvCase(c_in=6, c_out=12, spatial=(8, 7), kernel=(3, 3), stride=1, padding=1,
                 dilation=1, groups=6, bias=True, name="depthwise-multiplier-2", **r2),
        ConvCase(c_in=16, c_out=16, spatial=(9, 10), kernel=(3, 3), stride=2, padding=1,
                 dilation=1, groups=16, bias=True, name="depthwise-16-stride2", **r2),
        ConvCase(rank=2, n=3, c_in=1, c_out=16, spatial=(12, 12), kernel=(3, 3), stride=1,
                 padding=0, dilation=1, groups=1, bias=True, name="one-input-channel"),
        ConvCase(c_in=4, c_out=6, spatial=(9, 8), kernel=(3, 3), stride=(2, 1),
                 padding=((2, 0), (0, 1)), dilation=(1, 2), groups=2, bias=True,
                 noncontiguous=True, name="mixed-per-dim-noncontiguous", **r2),
        ConvCase(rank=1, n=2, c_in=8, c_out=8, spatial=(40,), kernel=(9,), stride=1,
                 padding=4, dilation=1, groups=1, bias=True, name="conv1d-k9"),
        ConvCase(rank=3, n=1, c_in=4, c_out=8, spatial=(6, 7, 5), kernel=(3, 3, 3),
                 stride=1, padding=1, dilation=1, groups=1, bias=True, name="conv3d-k3"),
    ]
    if transposed:
        cases.append(ConvCase(c_in=8, c_out=4, spatial=(5, 6), kernel=(4, 4), stride=2,
                              padding=1, dilation=1, groups=1, bias=True,
                              name="transposed-k4-s2", **r2))
        cases.append(ConvCase(c_in=4, c_out=4, spatial=(4, 5), kernel=(3, 3), stride=2,
                              padding="same", dilation=1, groups=1, bias=True,
                              output_padding=1, name="transposed-same", **r2))
    return [c for c in cases if _valid_conv(c, transposed)]


def conv_cases():
    return _conv_grid(False) + _special_conv(False)


def conv_transpose_cases():
    return _conv_grid(True) + _special_conv(True)


def _valid_pool(c: PoolCase) -> bool:
    try:
        P.pool_params((c.n, c.c) + c.spatial, c.kernel, c.stride, c.padding, c.dilation,
                      c.ceil_mode, c.count_include_pad, c.divisor_override)
    except ValueError:
        return False
    return True


def pool_cases():
    cases = []
    i = 0
    spatial = {1: (11,), 2: (9, 8), 3: (6, 7, 5)}
    for rank, kernel, stride, padding, dilation, ceil_mode in itertools.product(
            (1, 2, 3), (2, 3), (None, 1, 2), (0, 1, "asym"), (1, 2), (False, True)):
        pad = ((1, 0), (0, 1), (1, 1))[:rank] if padding == "asym" else padding
        case = PoolCase(rank, 2, 3, spatial[rank], kernel, stride, pad, dilation,
                        ceil_mode, count_include_pad=(i % 2 == 0),
                        divisor_override=(5 if i % 5 == 4 else None),
                        noncontiguous=(i % 7 == 3))
        i += 1
        if _valid_pool(case):
            cases.append(case)
    specials = [
        PoolCase(2, 2, 3, (9, 9), (3, 2), (2, 1), ((2, 1), (0, 1)), 1, True,
                 count_include_pad=True, name="wide-asymmetric-padding-ceil"),
        PoolCase(2, 1, 2, (5, 5), 5, None, 0, 1, False, name="kernel-equals-input"),
        PoolCase(2, 2, 4, (7, 7), 7, None, 0, 1, False, name="global"),
        PoolCase(2, 2, 3, (8, 8), 1, 1, 0, 1, False, name="1x1"),
        PoolCase(2, 2, 64, (12, 12), 2, 2, 0, 1, False, name="fashion-mnist-2x2"),
        PoolCase(2, 2, 5, (13, 11), 3, 2, 1, 1, True, count_include_pad=False,
                 name="3x3-s2-ceil-exclude-pad"),
        PoolCase(3, 1, 2, (4, 5, 6), (2, 3, 2), (1, 2, 2), ((0, 1), 1, (1, 0)), (2, 1, 1),
                 True, divisor_override=7, noncontiguous=True, name="3d-everything"),
    ]
    cases += [c for c in specials if _valid_pool(c)]
    return cases


# ----------------------------------------------------------------------------- data


def make_array(rng, shape, dtype, noncontiguous=False):
    """Standard normal data; non-contiguous ones are a strided view of a bigger array."""
    if noncontiguous:
        big = rng.standard_normal(tuple(shape[:-1]) + (2 * shape[-1],))
        return big[..., ::2].astype(dtype, copy=False) if dtype == np.float64 else \
            big.astype(dtype)[..., ::2]
    return rng.standard_normal(shape).astype(dtype)
