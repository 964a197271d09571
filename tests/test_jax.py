"""cnnfast.jax: forward equals cnnfast's numpy result; gradients equal JAX's own
(jax.lax.conv_general_dilated, jax.lax.reduce_window); jit, grad, jit(grad), vmap."""

import numpy as np
import pytest

jax = pytest.importorskip("jax")

import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402

import cnnfast  # noqa: E402
import cnnfast.jax as cj  # noqa: E402
from cnnfast import params as P  # noqa: E402

HI = lax.Precision.HIGHEST


@pytest.fixture
def x64():
    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", old)


def _rand(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def _tol(dtype):
    return {"rtol": 2e-4, "atol": 2e-4} if dtype == np.float32 else \
        {"rtol": 1e-10, "atol": 1e-10}


def _dims(rank):
    sp = "DHW"[3 - rank:]
    return ("NC" + sp, "OI" + sp, "NC" + sp)


# ----------------------------------------------------------------------------- references


def ref_conv(x, w, b, stride, padding, dilation, groups):
    p = P.conv_params(tuple(x.shape), tuple(w.shape), stride, padding, dilation, groups)
    y = lax.conv_general_dilated(x, w, p.stride, p.padding, rhs_dilation=p.dilation,
                                 feature_group_count=p.groups,
                                 dimension_numbers=_dims(p.rank), precision=HI)
    return y if b is None else y + b.reshape((1, -1) + (1,) * p.rank)


def ref_conv_transpose(x, w, b, stride, padding, output_padding, groups, dilation):
    """The adjoint of the convolution with the same weight, geometry and crops."""
    p = P.conv_transpose_params(tuple(x.shape), tuple(w.shape), stride, padding,
                                output_padding, groups, dilation)
    z = jnp.zeros((x.shape[0], w.shape[1] * p.groups) + p.out_shape, x.dtype)

    def fwd(z):
        return lax.conv_general_dilated(z, w, p.stride, p.padding, rhs_dilation=p.dilation,
                                        feature_group_count=p.groups,
                                        dimension_numbers=_dims(p.rank), precision=HI)

    y = jax.vjp(fwd, z)[1](x)[0]
    return y if b is None else y + b.reshape((1, -1) + (1,) * p.rank)


def _window(x, kernel_size, stride, padding, dilation, ceil_mode=False):
    p = P.pool_params(tuple(x.shape), kernel_size, stride, padding, dilation, ceil_mode)
    pads = []
    for n, k, s, (lo, hi), d, o in zip(p.in_shape, p.kernel, p.stride, p.padding,
                                       p.dilation, p.out_shape):
        need = (o - 1) * s + d * (k - 1) + 1  # ceil_mode's overhang, as extra padding
        pads.append((lo, max(hi, need - n - lo)))
    one = (1, 1)
    return p, dict(window_dimensions=one + p.kernel, window_strides=one + p.stride,
                   padding=((0, 0), (0, 0)) + tuple(pads),
                   window_dilation=one + p.dilation)


def ref_max_pool(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    p, kw = _window(x, kernel_size, stride, padding, dilation, ceil_mode)
    if all(d == 1 for d in p.dilation):
        return lax.reduce_window(x, -jnp.inf, lax.max, **kw)
    # JAX has no VJP for a dilated max reduce_window: the max over the stacked taps.
    xp = jnp.pad(x, kw["padding"], constant_values=-jnp.inf)
    taps = []
    for offset in np.ndindex(*p.kernel):
        index = (slice(None), slice(None)) + tuple(
            slice(o * d, o * d + (n - 1) * s + 1, s)
            for o, d, n, s in zip(offset, p.dilation, p.out_shape, p.stride))
        taps.append(xp[index])
    return jnp.max(jnp.stack(taps), axis=0)


def ref_avg_pool(x, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True, divisor_override=None, dilation=1):
    assert not ceil_mode
    p, kw = _window(x, kernel_size, stride, padding, dilation)
    total = lax.reduce_window(x, 0.0, lax.add, **kw)
    if divisor_override is not None:
        return total / divisor_override
    if count_include_pad:
        return total / float(np.prod(p.kernel))
    count = lax.reduce_window(jnp.ones(x.shape[2:], x.dtype), 0.0, lax.add,
                              window_dimensions=p.kernel, window_strides=p.stride,
                              padding=kw["padding"][2:], window_dilation=p.dilation)
    return total / count


# ----------------------------------------------------------------------------- cases

# (x shape, weight shape, bias, kwargs)
CONV = [
    ((2, 4, 11), (6, 2, 3), True, dict(stride=2, padding=1, groups=2)),
    ((2, 3, 9, 8), (4, 3, 3, 2), True, dict(padding="same", dilation=2)),
    ((2, 3, 9, 8), (5, 3, 3, 3), False, dict(stride=(2, 1), padding=((1, 0), (2, 1)))),
    ((1, 4, 6, 5, 7), (4, 1, 2, 3, 2), True,
     dict(padding="valid", dilation=(1, 2, 1), groups=4)),
    ((2, 2, 5, 4, 4), (3, 2, 3, 3, 3), False, dict(stride=2, padding=1)),
]
CONV_T = [
    ((2, 4, 5), (4, 3, 3), True, dict(stride=2, padding=1, output_padding=1)),
    ((2, 4, 4, 5), (4, 2, 3, 3), True,
     dict(stride=(2, 3), padding=(1, 0), output_padding=(1, 2), groups=2)),
    ((2, 3, 4, 4), (3, 2, 2, 3), False, dict(dilation=2, padding=1)),
    ((1, 2, 3, 3, 3), (2, 2, 2, 2, 2), True, dict(stride=2, dilation=(1, 2, 1))),
]
MAX = [
    ((2, 3, 13), dict(kernel_size=3, stride=2, padding=1)),
    ((2, 3, 9, 10), dict(kernel_size=(3, 2), stride=2, padding=(1, 0), dilation=(1, 2))),
    ((2, 2, 9, 9), dict(kernel_size=3, stride=2, ceil_mode=True)),
    ((1, 2, 6, 7, 5), dict(kernel_size=2)),
    ((1, 2, 5, 6, 7), dict(kernel_size=(3, 2, 3), stride=(1, 2, 2), padding=1)),
]
AVG = [
    ((2, 3, 13), dict(kernel_size=3, stride=2, padding=1)),
    ((2, 3, 13), dict(kernel_size=3, stride=2, padding=1, count_include_pad=False)),
    ((2, 3, 9, 10), dict(kernel_size=(3, 2), stride=2, padding=(1, 1), dilation=(2, 1))),
    ((2, 3, 8, 8), dict(kernel_size=3, padding=1, divisor_override=5)),
    ((1, 2, 6, 7, 5), dict(kernel_size=2, padding=1, count_include_pad=False)),
]
RANKED = {1: (cj.conv1d, cj.conv_transpose1d, cj.max_pool1d, cj.avg_pool1d),
          2: (cj.conv2d, cj.conv_transpose2d, cj.max_pool2d, cj.avg_pool2d),
          3: (cj.conv3d, cj.conv_transpose3d, cj.max_pool3d, cj.avg_pool3d)}


def _bias(rng, n, dtype):
    return _rand(rng, (n,), dtype)


def _conv_case(case, dtype, transposed, seed=0):
    x_shape, w_shape, has_bias, kw = case
    rng = np.random.default_rng(seed)
    x, w = _rand(rng, x_shape, dtype), _rand(rng, w_shape, dtype)
    c_out = w_shape[1] * kw.get("groups", 1) if transposed else w_shape[0]
    b = _bias(rng, c_out, dtype) if has_bias else None
    return rng, x, w, b, kw


def _ref_conv(transposed, x, w, b, kw):
    if transposed:
        return ref_conv_transpose(x, w, b, kw.get("stride", 1), kw.get("padding", 0),
                                  kw.get("output_padding", 0), kw.get("groups", 1),
                                  kw.get("dilation", 1))
    return ref_conv(x, w, b, kw.get("stride", 1), kw.get("padding", 0),
                    kw.get("dilation", 1), kw.get("groups", 1))


def _check_conv_grads(case, transposed, dtype, jit):
    rng, x, w, b, kw = _conv_case(case, dtype, transposed)
    ours_fn = cj.conv_transpose if transposed else cj.conv
    y_ref = _ref_conv(transposed, x, w, b, kw)
    r = _rand(rng, y_ref.shape, dtype)
    args = (x, w) if b is None else (x, w, b)

    def ours(*a):
        return jnp.sum(ours_fn(*a, **kw) * r)

    def ref(*a):
        a = a + (None,) * (3 - len(a))
        return jnp.sum(_ref_conv(transposed, *a, kw) * r)

    argnums = tuple(range(len(args)))
    g = jax.grad(ours, argnums)
    if jit:
        g = jax.jit(g)
    got, want = g(*args), jax.grad(ref, argnums)(*args)
    for name, a, e in zip(("x", "weight", "bias"), got, want):
        assert a.dtype == dtype and a.shape == e.shape, name
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), err_msg=name, **_tol(dtype))


# ----------------------------------------------------------------------------- forward


@pytest.mark.parametrize("case", CONV)
def test_conv_forward_matches_cnnfast(case):
    _, x, w, b, kw = _conv_case(case, np.float32, False)
    want = cnnfast.conv(x, w, b, **kw)
    rank = x.ndim - 2
    for got in (cj.conv(x, w, b, **kw), RANKED[rank][0](x, w, b, **kw),
                jax.jit(lambda x, w, b: cj.conv(x, w, b, **kw))(x, w, b)):
        assert isinstance(got, jax.Array) and got.dtype == np.float32
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-6)
    # and close to JAX's own convolution
    np.testing.assert_allclose(want, np.asarray(_ref_conv(False, x, w, b, kw)),
                               **_tol(np.float32))


@pytest.mark.parametrize("case", CONV_T)
def test_conv_transpose_forward_matches_cnnfast(case):
    _, x, w, b, kw = _conv_case(case, np.float32, True)
    want = cnnfast.conv_transpose(x, w, b, **kw)
    rank = x.ndim - 2
    for got in (cj.conv_transpose(x, w, b, **kw), RANKED[rank][1](x, w, b, **kw),
                jax.jit(lambda x, w, b: cj.conv_transpose(x, w, b, **kw))(x, w, b)):
        assert got.shape == want.shape and got.dtype == np.float32
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(want, np.asarray(_ref_conv(True, x, w, b, kw)),
                               **_tol(np.float32))


@pytest.mark.parametrize("case", MAX)
def test_max_pool_forward_matches_cnnfast(case):
    shape, kw = case
    x = _rand(np.random.default_rng(1), shape, np.float32)
    want, want_idx = cnnfast.max_pool(x, return_indices=True, **kw)
    rank = x.ndim - 2
    for got in (cj.max_pool(x, **kw), RANKED[rank][2](x, **kw),
                jax.jit(lambda x: cj.max_pool(x, **kw))(x)):
        np.testing.assert_array_equal(np.asarray(got), want)
    y, idx = jax.jit(lambda x: cj.max_pool(x, return_indices=True, **kw))(x)
    np.testing.assert_array_equal(np.asarray(y), want)
    assert idx.dtype == jnp.int32  # int64 needs x64
    np.testing.assert_array_equal(np.asarray(idx), want_idx)
    np.testing.assert_array_equal(want, np.asarray(ref_max_pool(x, **kw)))


@pytest.mark.parametrize("case", AVG)
def test_avg_pool_forward_matches_cnnfast(case):
    shape, kw = case
    x = _rand(np.random.default_rng(2), shape, np.float32)
    want = cnnfast.avg_pool(x, **kw)
    rank = x.ndim - 2
    for got in (cj.avg_pool(x, **kw), RANKED[rank][3](x, **kw),
                jax.jit(lambda x: cj.avg_pool(x, **kw))(x)):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(want, np.asarray(ref_avg_pool(x, **kw)), **_tol(np.float32))


def test_avg_pool_ceil_mode_forward_and_grad_match_cnnfast():
    x = _rand(np.random.default_rng(3), (2, 2, 9, 9), np.float32)
    kw = dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)
    want = cnnfast.avg_pool(x, **kw)
    np.testing.assert_allclose(np.asarray(cj.avg_pool2d(x, **kw)), want, rtol=1e-6)
    g = jax.jit(jax.grad(lambda x: jnp.sum(cj.avg_pool(x, **kw) ** 2)))(x)
    want_g = cnnfast.avg_pool_backward(2 * want, x.shape, **kw)
    np.testing.assert_allclose(np.asarray(g), want_g, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("jit", [False, True], ids=["grad", "jit_grad"])
@pytest.mark.parametrize("case", CONV)
def test_conv_grad_matches_lax(case, jit):
    _check_conv_grads(case, False, np.float32, jit)


@pytest.mark.parametrize("jit", [False, True], ids=["grad", "jit_grad"])
@pytest.mark.parametrize("case", CONV_T)
def test_conv_transpose_grad_matches_lax(case, jit):
    _check_conv_grads(case, True, np.float32, jit)


@pytest.mark.parametrize("case", CONV)
def test_conv_grad_float64(case, x64):
    _check_conv_grads(case, False, np.float64, True)


@pytest.mark.parametrize("case", CONV_T)
def test_conv_transpose_grad_float64(case, x64):
    _check_conv_grads(case, True, np.float64, True)


def _check_pool_grads(ours_fn, ref_fn, case, dtype, jit):
    shape, kw = case
    rng = np.random.default_rng(4)
    x = _rand(rng, shape, dtype)
    r = _rand(rng, ref_fn(x, **kw).shape, dtype)
    g = jax.grad(lambda x: jnp.sum(ours_fn(x, **kw) * r))
    if jit:
        g = jax.jit(g)
    got = g(x)
    want = jax.grad(lambda x: jnp.sum(ref_fn(x, **kw) * r))(x)
    assert got.dtype == dtype and got.shape == x.shape
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), **_tol(dtype))


@pytest.mark.parametrize("jit", [False, True], ids=["grad", "jit_grad"])
@pytest.mark.parametrize("case", MAX)
def test_max_pool_grad_matches_lax(case, jit):
    _check_pool_grads(cj.max_pool, ref_max_pool, case, np.float32, jit)


@pytest.mark.parametrize("jit", [False, True], ids=["grad", "jit_grad"])
@pytest.mark.parametrize("case", AVG)
def test_avg_pool_grad_matches_lax(case, jit):
    _check_pool_grads(cj.avg_pool, ref_avg_pool, case, np.float32, jit)


@pytest.mark.parametrize("case", MAX)
def test_max_pool_grad_float64(case, x64):
    _check_pool_grads(cj.max_pool, ref_max_pool, case, np.float64, True)


@pytest.mark.parametrize("case", AVG)
def test_avg_pool_grad_float64(case, x64):
    _check_pool_grads(cj.avg_pool, ref_avg_pool, case, np.float64, True)


def test_max_pool_indices_int64_under_x64(x64):
    x = _rand(np.random.default_rng(5), (2, 3, 8, 8), np.float64)
    y, idx = cj.max_pool2d(x, 3, stride=2, return_indices=True)
    want, want_idx = cnnfast.max_pool2d(x, 3, stride=2, return_indices=True)
    assert y.dtype == jnp.float64 and idx.dtype == jnp.int64
    np.testing.assert_array_equal(np.asarray(idx), want_idx)
    # the y output of the indices form is differentiable too
    g = jax.grad(lambda x: jnp.sum(cj.max_pool2d(x, 3, stride=2, return_indices=True)[0]))(x)
    np.testing.assert_array_equal(
        np.asarray(g), cnnfast.max_pool_backward(np.ones_like(want), want_idx, x.shape))


def test_grad_of_one_argument_and_value_and_grad():
    _, x, w, b, kw = _conv_case(CONV[0], np.float32, False)
    val, gw = jax.jit(jax.value_and_grad(
        lambda w: jnp.sum(cj.conv1d(x, w, b, **kw) ** 2)))(w)
    y = cnnfast.conv1d(x, w, b, **kw)
    np.testing.assert_allclose(float(val), float(np.sum(y.astype(np.float64) ** 2)),
                               rtol=1e-5)
    _, want_gw, _ = cnnfast.conv_backward(2 * y, x, w, **kw)
    np.testing.assert_allclose(np.asarray(gw), want_gw, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- vmap


def test_vmap_batched_input_folds_and_matches_loop():
    rng = np.random.default_rng(6)
    xs = _rand(rng, (3, 2, 4, 7, 7), np.float32)
    w = _rand(rng, (6, 2, 3, 3), np.float32)
    b = _rand(rng, (6,), np.float32)
    kw = dict(padding=1, groups=2, stride=2)
    got = jax.jit(jax.vmap(lambda x: cj.conv2d(x, w, b, **kw)))(xs)
    np.testing.assert_allclose(np.asarray(got),
                               np.stack([cnnfast.conv2d(x, w, b, **kw) for x in xs]),
                               rtol=1e-6, atol=1e-6)
    for fn, ref in ((lambda x: cj.max_pool2d(x, 3, 2, 1), ref_max_pool),
                    (lambda x: cj.avg_pool2d(x, 3, 2, 1), ref_avg_pool)):
        got = jax.vmap(fn)(xs)
        want = np.stack([np.asarray(ref(x, 3, 2, 1)) for x in xs])
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)


def test_vmap_batched_weight_and_nested_vmap():
    rng = np.random.default_rng(7)
    x = _rand(rng, (2, 4, 6, 6), np.float32)
    ws = _rand(rng, (3, 5, 4, 3, 3), np.float32)
    got = jax.vmap(lambda w: cj.conv(x, w, padding="same"))(ws)
    np.testing.assert_allclose(np.asarray(got),
                               np.stack([cnnfast.conv(x, w, padding="same") for w in ws]),
                               rtol=1e-6, atol=1e-6)
    xss = _rand(rng, (2, 3, 2, 4, 6, 6), np.float32)
    # outer vmap: x batched, weight not (size-1 leading dim); inner: both batched
    got = jax.vmap(jax.vmap(lambda x, w: cj.conv_transpose(x, w[:, :2], stride=2)),
                   in_axes=(0, None))(xss, ws[:, :4])
    for i in range(2):
        for j in range(3):
            np.testing.assert_allclose(
                np.asarray(got[i, j]),
                cnnfast.conv_transpose(xss[i, j], ws[j, :4, :2], stride=2), rtol=1e-5,
                atol=1e-5)


@pytest.mark.parametrize("op", ["conv", "conv_transpose", "max_pool", "avg_pool"])
def test_vmap_of_grad_matches_per_example_grads(op):
    rng = np.random.default_rng(8)
    xs = _rand(rng, (3, 2, 4, 7, 7), np.float32)
    w = _rand(rng, (4, 4, 3, 3), np.float32)
    fns = {
        "conv": (lambda x, w: cj.conv2d(x, w, padding=1),
                 lambda x, w: ref_conv(x, w, None, 1, 1, 1, 1)),
        "conv_transpose": (lambda x, w: cj.conv_transpose2d(x, w, stride=2),
                           lambda x, w: ref_conv_transpose(x, w, None, 2, 0, 0, 1, 1)),
        "max_pool": (lambda x, w: cj.max_pool2d(x, 2) * jnp.sum(w),
                     lambda x, w: ref_max_pool(x, 2) * jnp.sum(w)),
        "avg_pool": (lambda x, w: cj.avg_pool2d(x, 3, 2, 1) * jnp.sum(w),
                     lambda x, w: ref_avg_pool(x, 3, 2, 1) * jnp.sum(w)),
    }
    ours, ref = fns[op]

    def per_example(f):
        return jax.vmap(jax.grad(lambda x, w: jnp.sum(jnp.sin(f(x, w))), (0, 1)),
                        in_axes=(0, None))

    got = jax.jit(per_example(ours))(xs, w)
    want = per_example(ref)(xs, w)
    for a, e in zip(got, want):
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- errors


def test_errors_at_trace_time():
    x = jnp.ones((1, 2, 5, 5), jnp.float32)
    w = jnp.ones((3, 2, 3, 3), jnp.float32)
    with pytest.raises(ValueError, match="3d op"):
        cj.conv3d(x, w)
    with pytest.raises(ValueError):
        jax.jit(lambda x: cj.conv2d(x, w, groups=2))(x)
    with pytest.raises(ValueError, match="bias"):
        cj.conv2d(x, w, jnp.ones((4,), jnp.float32))
    with pytest.raises(ValueError, match="string"):
        cj.max_pool2d(x, 2, padding="same")
    with pytest.raises(TypeError, match="float32 or float64"):
        cj.conv2d(x.astype(jnp.float16), w.astype(jnp.float16))
    with pytest.raises(TypeError, match="float32 or float64"):
        cj.conv2d(x, w.astype(jnp.bfloat16))
    with pytest.raises(TypeError, match="static"):
        jax.jit(lambda s: cj.conv2d(x, w, stride=s))(jnp.int32(1))


def test_static_lists_are_accepted_and_cached():
    x = jnp.ones((1, 2, 6, 6), jnp.float32)
    w = jnp.ones((3, 2, 3, 3), jnp.float32)
    a = cj.conv2d(x, w, stride=[2, 1], padding=[[1, 0], [0, 1]])
    b = cj.conv2d(x, w, stride=(2, 1), padding=((1, 0), (0, 1)))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_mixed_dtypes_refused(x64):
    x = jnp.ones((1, 2, 5, 5), jnp.float32)
    with pytest.raises(TypeError, match="mixed dtypes"):
        cj.conv2d(x, jnp.ones((3, 2, 3, 3), jnp.float64))


def test_second_derivative_not_supported():
    x = jnp.ones((1, 1, 4, 4), jnp.float32)
    def first(x):
        return jax.grad(lambda x: jnp.sum(cj.avg_pool2d(x, 2) ** 2))(x)

    with pytest.raises(ValueError, match="do not support JVP"):
        jax.grad(lambda x: jnp.sum(first(x)))(x)


def test_vmap_folds_into_one_kernel_call(monkeypatch):
    """vmap_method="expand_dims": a vmapped pool (or a conv whose weight is not
    vmapped) runs one kernel call over the folded batch, not one per item."""
    calls = []
    for name in ("avg_pool", "conv", "max_pool_backward"):
        real = getattr(cnnfast.api, name)

        def counted(*a, _real=real, _name=name, **k):
            calls.append((_name, a[0].shape))
            return _real(*a, **k)

        monkeypatch.setattr(cnnfast.api, name, counted)
    rng = np.random.default_rng(9)
    xs = _rand(rng, (5, 2, 3, 6, 6), np.float32)
    w = _rand(rng, (4, 3, 3, 3), np.float32)
    jax.vmap(lambda x: cj.avg_pool2d(x, 2))(xs).block_until_ready()
    jax.vmap(lambda x: cj.conv2d(x, w))(xs).block_until_ready()
    jax.vmap(jax.grad(lambda x: jnp.sum(cj.max_pool2d(x, 2))))(xs).block_until_ready()
    assert calls == [("avg_pool", (10, 3, 6, 6)), ("conv", (10, 3, 6, 6)),
                     ("max_pool_backward", (10, 3, 3, 3))]


def test_vmap_over_empty_axis():
    x = jnp.zeros((2, 3, 6, 6), jnp.float32)
    ws = jnp.zeros((0, 4, 3, 3, 3), jnp.float32)
    y = jax.vmap(lambda w: cj.conv2d(x, w))(ws)
    assert y.shape == (0, 2, 4, 4, 4)
