"""The numpy reference's gradients against central finite differences (float64).

Chainer's ``check_backward`` trick: compare the directional derivative of
``L = <grad_y, f(inputs)>`` along a random direction ``v`` with ``<grad, v>``; two
extra forward evaluations per input keep the whole grid fast.
"""

from __future__ import annotations

import numpy as np
import pytest

from cnnfast import params as P
from cnnfast.backends.numpy import backend as ref

from cases import conv_cases, conv_transpose_cases, pool_cases

EPS = 1e-6


def directional(f, inputs, i, v):
    plus = list(inputs)
    minus = list(inputs)
    plus[i] = inputs[i] + EPS * v
    minus[i] = inputs[i] - EPS * v
    return (f(*plus) - f(*minus)) / (2 * EPS)


def check(f, inputs, grads, rng):
    for i, (a, g) in enumerate(zip(inputs, grads)):
        if a is None:
            continue
        v = rng.standard_normal(a.shape)
        numeric = directional(f, inputs, i, v)
        analytic = float(np.sum(g * v))
        assert numeric == pytest.approx(analytic, rel=1e-6, abs=1e-6), f"input {i}"


def _conv_setup(case, transposed, rng):
    x = rng.standard_normal((case.n, case.c_in) + case.spatial)
    w = rng.standard_normal(case.weight_shape(transposed))
    b = rng.standard_normal(case.c_out) if case.bias else None
    return x, w, b


@pytest.mark.parametrize("case", conv_cases(), ids=lambda c: c.id())
def test_conv_gradients(case):
    rng = np.random.default_rng(0)
    x, w, b = _conv_setup(case, False, rng)
    p = P.conv_params(x.shape, w.shape, case.stride, case.padding, case.dilation,
                      case.groups)
    gy = rng.standard_normal((case.n, case.c_out) + p.out_shape)
    gx, gw, gb = ref.conv_backward(gy, x, w, p, frozenset(("x", "weight", "bias")))

    def loss(x_, w_, b_):
        return float(np.sum(gy * ref.conv(x_, w_, b_, p)))

    check(loss, [x, w, b], [gx, gw, gb], rng)


@pytest.mark.parametrize("case", conv_transpose_cases(), ids=lambda c: c.id())
def test_conv_transpose_gradients(case):
    rng = np.random.default_rng(0)
    x, w, b = _conv_setup(case, True, rng)
    p = P.conv_transpose_params(x.shape, w.shape, case.stride, case.padding,
                                case.output_padding, case.groups, case.dilation)
    gy = rng.standard_normal((case.n, case.c_out) + p.out_shape)
    gx, gw, gb = ref.conv_transpose_backward(gy, x, w, p,
                                             frozenset(("x", "weight", "bias")))

    def loss(x_, w_, b_):
        return float(np.sum(gy * ref.conv_transpose(x_, w_, b_, p)))

    check(loss, [x, w, b], [gx, gw, gb], rng)


@pytest.mark.parametrize("case", pool_cases(), ids=lambda c: c.id())
def test_pool_gradients(case):
    rng = np.random.default_rng(0)
    # Distinct values spaced far apart relative to EPS: the max never switches.
    x = rng.permutation(np.prod((case.n, case.c) + case.spatial)).astype(np.float64)
    x = x.reshape((case.n, case.c) + case.spatial) * 0.01
    p = P.pool_params(x.shape, case.kernel, case.stride, case.padding, case.dilation,
                      case.ceil_mode, case.count_include_pad, case.divisor_override)
    gy = rng.standard_normal((case.n, case.c) + p.out_shape)

    y, idx = ref.max_pool(x, p, True)
    gx = ref.max_pool_backward(gy, idx, x.shape)
    check(lambda x_: float(np.sum(gy * ref.max_pool(x_, p, False)[0])), [x], [gx], rng)

    gx = ref.avg_pool_backward(gy, p)
    check(lambda x_: float(np.sum(gy * ref.avg_pool(x_, p))), [x], [gx], rng)
