"""The numpy reference against ``torch.nn.functional`` and autograd, over the grid
cases torch can express (skipped with a reason when torch is not installed).

Asymmetric convolution padding is expressed in torch as ``F.pad`` then a valid
convolution; for transposed convolution, asymmetric cropping as a crop of torch's
unpadded output. Pooling cases torch rejects (padding above kernel // 2, dilation or
asymmetric padding in average pooling, divisor_override in 1-D) are skipped.
"""

from __future__ import annotations

import numpy as np
import pytest

import cnnfast
from cnnfast import params as P

from cases import conv_cases, conv_transpose_cases, pool_cases

torch = pytest.importorskip("torch", reason="torch not installed (the bench/dev extra)")
F = torch.nn.functional

CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
CONVT = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
MAXP = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
AVGP = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def T(a):
    return torch.tensor(a, requires_grad=True)


def close(a, t):
    np.testing.assert_allclose(a, t.detach().numpy(), rtol=1e-10, atol=1e-10)


def _torch_pad(pads):
    """F.pad's argument (last dim first) for (before, after) pairs."""
    flat = []
    for lo, hi in reversed(pads):
        flat += [lo, hi]
    return flat


@pytest.mark.parametrize("case", conv_cases(), ids=lambda c: c.id())
def test_conv_matches_torch(case):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((case.n, case.c_in) + case.spatial)
    w = rng.standard_normal(case.weight_shape())
    b = rng.standard_normal(case.c_out) if case.bias else None
    kw = dict(stride=case.stride, padding=case.padding, dilation=case.dilation,
              groups=case.groups)
    p = P.conv_params(x.shape, w.shape, **kw)
    y = cnnfast.conv(x, w, b, backend="numpy", **kw)
    xt, wt = T(x), T(w)
    bt = T(b) if b is not None else None
    yt = CONV[case.rank](F.pad(xt, _torch_pad(p.padding)), wt, bt, p.stride, 0,
                         p.dilation, p.groups)
    close(y, yt)
    gy = rng.standard_normal(y.shape)
    yt.backward(torch.tensor(gy))
    gx, gw, gb = cnnfast.conv_backward(gy, x, w, backend="numpy", **kw)
    close(gx, xt.grad)
    close(gw, wt.grad)
    if b is not None:
        close(gb, bt.grad)


@pytest.mark.parametrize("case", conv_transpose_cases(), ids=lambda c: c.id())
def test_conv_transpose_matches_torch(case):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((case.n, case.c_in) + case.spatial)
    w = rng.standard_normal(case.weight_shape(True))
    b = rng.standard_normal(case.c_out) if case.bias else None
    kw = dict(stride=case.stride, padding=case.padding, output_padding=case.output_padding,
              groups=case.groups, dilation=case.dilation)
    p = P.conv_transpose_params(x.shape, w.shape, **kw)
    y = cnnfast.conv_transpose(x, w, b, backend="numpy", **kw)
    xt, wt = T(x), T(w)
    bt = T(b) if b is not None else None
    # torch with no padding, then crop (before, after) per dim.
    full = CONVT[case.rank](xt, wt, bt, p.stride, 0, p.output_padding, p.groups, p.dilation)
    crop = tuple(slice(lo, full.shape[2 + i] - hi) for i, (lo, hi) in enumerate(p.padding))
    yt = full[(slice(None), slice(None)) + crop]
    close(y, yt)
    gy = rng.standard_normal(y.shape)
    yt.backward(torch.tensor(gy))
    gx, gw, gb = cnnfast.conv_transpose_backward(gy, x, w, backend="numpy", **kw)
    close(gx, xt.grad)
    close(gw, wt.grad)
    if b is not None:
        close(gb, bt.grad)


def _symmetric(padding, rank):
    pads = P.padding_pairs(padding, rank)
    if any(lo != hi for lo, hi in pads):
        return None
    return tuple(lo for lo, _ in pads)


@pytest.mark.parametrize("case", pool_cases(), ids=lambda c: c.id())
def test_max_pool_matches_torch(case):
    pad = _symmetric(case.padding, case.rank)
    kernel = P.per_dim(case.kernel, case.rank, "k", minimum=1)
    if pad is None or any(p_ > k // 2 for p_, k in zip(pad, kernel)):
        pytest.skip("torch pooling needs symmetric padding <= kernel // 2")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((case.n, case.c) + case.spatial)
    stride = case.stride if case.stride is not None else case.kernel
    y, idx = cnnfast.max_pool(x, case.kernel, case.stride, case.padding, case.dilation,
                              case.ceil_mode, return_indices=True, backend="numpy")
    xt = T(x)
    yt, it = MAXP[case.rank](xt, case.kernel, stride, pad, case.dilation, case.ceil_mode,
                             return_indices=True)
    close(y, yt)
    np.testing.assert_array_equal(idx, it.numpy())
    gy = rng.standard_normal(y.shape)
    yt.backward(torch.tensor(gy))
    close(cnnfast.max_pool_backward(gy, idx, x.shape, backend="numpy"), xt.grad)



@pytest.mark.parametrize("case", pool_cases(), ids=lambda c: c.id())
def test_avg_pool_matches_torch(case):
    pad = _symmetric(case.padding, case.rank)
    kernel = P.per_dim(case.kernel, case.rank, "k", minimum=1)
    if (pad is None or any(p_ > k // 2 for p_, k in zip(pad, kernel)) or case.dilation != 1
            or (case.rank == 1 and case.divisor_override is not None)):
        pytest.skip("not expressible with torch's avg_pool")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((case.n, case.c) + case.spatial)
    kw = dict(ceil_mode=case.ceil_mode, count_include_pad=case.count_include_pad,
              divisor_override=case.divisor_override)
    y = cnnfast.avg_pool(x, case.kernel, case.stride, case.padding, backend="numpy", **kw)
    xt = T(x)
    extra = {} if case.rank == 1 else {"divisor_override": case.divisor_override}
    stride = case.stride if case.stride is not None else case.kernel
    yt = AVGP[case.rank](xt, case.kernel, stride, pad, case.ceil_mode,
                         case.count_include_pad, **extra)
    close(y, yt)
    gy = rng.standard_normal(y.shape)
    yt.backward(torch.tensor(gy))
    gx = cnnfast.avg_pool_backward(gy, x.shape, case.kernel, case.stride, case.padding,
                                   backend="numpy", **kw)
    close(gx, xt.grad)
