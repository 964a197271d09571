"""cnnfast.nn layers: every backward against central finite differences (float64,
numpy backend), shapes, configs, freezing and the model-level backward."""

from __future__ import annotations

import numpy as np
import pytest

from cnnfast import nn
from cnnfast.nn.base import layer_from_config


def _directional_check(layer, x, seed=0, eps=1e-6, reseed=None):
    """Compare the analytic gradients of L = sum(forward(x) * r) with central
    differences along random directions, for x and every parameter."""
    rng = np.random.default_rng(seed)

    def forward(inp):
        if reseed is not None:
            reseed()
        return layer.forward(inp, training=True)

    y = forward(x)
    assert y.shape[1:] == tuple(layer.output_shape(x.shape[1:]))
    r = rng.standard_normal(y.shape)
    gx = layer.backward(r, need_input_grad=True)
    grads = {k: v.copy() for k, v in layer.grads.items()}
    assert gx.shape == x.shape and gx.dtype == x.dtype

    def loss(inp):
        return float((forward(inp) * r).sum())

    d = rng.standard_normal(x.shape)
    numeric = (loss(x + eps * d) - loss(x - eps * d)) / (2 * eps)
    analytic = float((gx * d).sum())
    assert np.isclose(analytic, numeric, rtol=1e-6, atol=1e-7), ("x", analytic, numeric)
    if not layer.trainable:
        assert not grads
        return y
    assert set(grads) == set(layer.params)
    for name, p in layer.params.items():
        d = rng.standard_normal(p.shape)
        orig = p.copy()
        layer.params[name] = orig + eps * d
        plus = loss(x)
        layer.params[name] = orig - eps * d
        minus = loss(x)
        layer.params[name] = orig
        numeric = (plus - minus) / (2 * eps)
        analytic = float((grads[name] * d).sum())
        assert np.isclose(analytic, numeric, rtol=1e-6, atol=1e-7), (name, analytic, numeric)
    return y


def _build(layer, x):
    layer.build(x.shape[1:], np.random.default_rng(1), np.float64)
    layer.backend = "numpy"
    return layer


X_CASES = {1: (2, 3, 9), 2: (2, 3, 7, 6), 3: (1, 2, 5, 4, 5)}


def _x(rank, seed=3):
    return np.random.default_rng(seed).standard_normal(X_CASES[rank])


CONV_CASES = [
    (nn.Conv1d, dict(out_channels=4, kernel_size=3, stride=2, padding=1), 1),
    (nn.Conv2d, dict(out_channels=4, kernel_size=3), 2),
    (nn.Conv2d, dict(out_channels=4, kernel_size=3, stride=2, padding="same"), 2),
    (nn.Conv2d, dict(out_channels=3, kernel_size=(2, 3), dilation=(2, 1), groups=3,
                     padding=((1, 0), (0, 2))), 2),
    (nn.Conv3d, dict(out_channels=2, kernel_size=2, padding="same"), 3),
    (nn.Conv, dict(out_channels=2, kernel_size=3, padding="valid", use_bias=False), 1),
    (nn.ConvTranspose1d, dict(out_channels=2, kernel_size=3, stride=2,
                              output_padding=1), 1),
    (nn.ConvTranspose2d, dict(out_channels=4, kernel_size=3, stride=2, padding=1), 2),
    (nn.ConvTranspose2d, dict(out_channels=3, kernel_size=2, groups=3, padding="same",
                              stride=2), 2),
    (nn.ConvTranspose3d, dict(out_channels=2, kernel_size=2, stride=(1, 2, 1)), 3),
]


@pytest.mark.parametrize("cls,kw,rank", CONV_CASES,
                         ids=[f"{c.__name__}-{i}" for i, (c, _, _) in enumerate(CONV_CASES)])
def test_conv_layers_backward_matches_finite_differences(cls, kw, rank):
    x = _x(rank)
    layer = _build(cls(**kw), x)
    _directional_check(layer, x)


POOL_CASES = [
    (nn.MaxPool1d, dict(kernel_size=3, stride=2, padding=1), 1),
    (nn.MaxPool2d, dict(kernel_size=2), 2),
    (nn.MaxPool2d, dict(kernel_size=3, stride=2, padding="same"), 2),
    (nn.MaxPool2d, dict(kernel_size=2, ceil_mode=True, dilation=(1, 2)), 2),
    (nn.MaxPool3d, dict(kernel_size=2), 3),
    (nn.AvgPool1d, dict(kernel_size=2, stride=1, padding=1, count_include_pad=False), 1),
    (nn.AvgPool2d, dict(kernel_size=3, stride=2, padding="same"), 2),
    (nn.AvgPool2d, dict(kernel_size=2, ceil_mode=True), 2),
    (nn.AvgPool3d, dict(kernel_size=(1, 2, 2)), 3),
    (nn.MaxPool, dict(kernel_size=2), 1),
    (nn.AvgPool, dict(kernel_size=2), 3),
]


@pytest.mark.parametrize("cls,kw,rank", POOL_CASES,
                         ids=[f"{c.__name__}-{i}" for i, (c, _, _) in enumerate(POOL_CASES)])
def test_pool_layers_backward_matches_finite_differences(cls, kw, rank):
    x = _x(rank)
    _directional_check(_build(cls(**kw), x), x)


@pytest.mark.parametrize("layer", [
    nn.ReLU(), nn.LeakyReLU(0.2), nn.Sigmoid(), nn.Tanh(), nn.Flatten(), nn.GlobalAvgPool(),
    nn.BatchNorm(), nn.BatchNorm(momentum=0.3, eps=1e-3),
], ids=lambda l: type(l).__name__)
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_elementwise_and_shape_layers_backward(layer, rank):
    x = _x(rank)
    _directional_check(_build(layer, x), x)


def test_batchnorm_on_features_and_linear():
    x = np.random.default_rng(0).standard_normal((5, 7))
    _directional_check(_build(nn.BatchNorm(), x), x)
    _directional_check(_build(nn.Linear(4), x), x)
    _directional_check(_build(nn.Dense(3, use_bias=False), x), x)


def test_dropout_backward_uses_the_forward_mask():
    x = _x(2)
    layer = _build(nn.Dropout(0.4), x)

    def reseed():
        layer.rng = np.random.default_rng(7)

    y = _directional_check(layer, x, reseed=reseed)
    dropped = y == 0
    assert 0.2 < dropped.mean() < 0.6
    np.testing.assert_allclose(y[~dropped], x[~dropped] / 0.6)
    assert layer.forward(x, training=False) is x  # identity in evaluation


def test_batchnorm_running_stats_and_eval():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 3, 4, 4)) * 2 + 5
    bn = _build(nn.BatchNorm(momentum=0.5), x)
    y = bn.forward(x, training=True)
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), 1, rtol=1e-4)
    np.testing.assert_allclose(bn.buffers["running_mean"],
                               0.5 * x.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(bn.buffers["running_var"],
                               0.5 + 0.5 * x.var(axis=(0, 2, 3), ddof=1), rtol=1e-12)
    ye = bn.forward(x, training=False)  # running statistics
    mean, var = bn.buffers["running_mean"], bn.buffers["running_var"]
    np.testing.assert_allclose(ye, (x - mean[:, None, None]) / np.sqrt(
        var[:, None, None] + 1e-5), rtol=1e-12)
    bn.trainable = False  # frozen: running statistics even in training, no grads
    _directional_check(bn, x)
    assert bn.grads == {}


def test_sigmoid_is_stable_for_huge_inputs():
    x = np.array([[-1e4, -50.0, 0.0, 50.0, 1e4]], np.float32)
    with np.errstate(over="raise", invalid="raise"):  # underflow to 0 is fine
        y = nn.Sigmoid().forward(x)
    np.testing.assert_allclose(y, [[0, 1.9287499e-22, 0.5, 1, 1]], rtol=1e-6)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_tf_same_padding_any_stride(rank):
    x = np.zeros((1, 2) + (7,) * rank)
    layer = _build(nn.Conv(3, 3, stride=2, padding="same"), x)
    assert layer.output_shape(x.shape[1:]) == (3,) + (4,) * rank  # ceil(7 / 2)
    assert nn.tf_same_pads((7,), (3,), (2,), (1,)) == ((1, 1),)
    assert nn.tf_same_pads((8,), (3,), (2,), (1,)) == ((0, 1),)  # extra pad after
    assert nn.tf_same_pads((5,), (1,), (2,), (1,)) == ((0, 0),)


def test_frozen_conv_gets_no_param_grads_and_skips_input_grad():
    x = _x(2)
    conv = _build(nn.Conv2d(2, 3), x)
    conv.trainable = False
    conv.forward(x, training=True)
    assert conv.backward(np.ones((2, 2, 5, 4)), need_input_grad=False) is None
    assert conv.grads == {}


def test_backward_without_forward_is_an_error():
    with pytest.raises(RuntimeError, match="without a forward"):
        nn.ReLU().backward(np.ones(3))
    for layer in (nn.Conv2d(2, 3), nn.MaxPool2d(2), nn.AvgPool2d(2), nn.Dense(2),
                  nn.BatchNorm(), nn.ConvTranspose2d(2, 2)):
        with pytest.raises(RuntimeError, match="not built"):
            layer.forward(np.zeros((1, 1, 4, 4)))


def test_layer_config_round_trip():
    for cls, kw, _ in CONV_CASES + POOL_CASES:
        layer = cls(**kw, name="x")
        again = layer_from_config(layer.full_config())
        assert type(again) is cls and again.config() == layer.config()
        import json
        assert json.loads(json.dumps(layer.full_config())) == json.loads(
            json.dumps(again.full_config()))


def test_bad_layer_arguments():
    with pytest.raises(ValueError, match="out_channels"):
        nn.Conv2d(0, 3)
    with pytest.raises(ValueError, match="initializer"):
        nn.Dense(3, kernel_initializer="nope")
    with pytest.raises(ValueError, match="rate"):
        nn.Dropout(1.0)
    with pytest.raises(ValueError, match="spatial dims"):
        nn.Sequential([nn.Conv2d(2, 3)], input_shape=(1, 8))
    with pytest.raises(ValueError, match="Flatten"):
        nn.Sequential([nn.Dense(2)], input_shape=(1, 4, 4))


def _small_model(seed=0, dtype="float64"):
    return nn.Sequential([
        nn.Conv2d(3, 3, padding="same"), nn.BatchNorm(), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 3, stride=2, padding="same"), nn.Tanh(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Dense(6), nn.LeakyReLU(), nn.Dense(3),
    ], input_shape=(2, 8, 8), seed=seed, dtype=dtype, backend="numpy")


def test_model_backward_matches_finite_differences():
    model = _small_model()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 2, 8, 8))
    labels = np.array([0, 2, 1, 2])
    loss, g = nn.softmax_cross_entropy(model.forward(x, training=True), labels)
    model.backward(g)
    eps = 1e-6
    for key, layer, pname in model.trainable_params():
        d = rng.standard_normal(layer.params[pname].shape)
        orig = layer.params[pname].copy()
        vals = []
        for sign in (1, -1):
            layer.params[pname] = orig + sign * eps * d
            vals.append(nn.softmax_cross_entropy(model.forward(x, training=True), labels)[0])
        layer.params[pname] = orig
        numeric = (vals[0] - vals[1]) / (2 * eps)
        assert np.isclose(float((layer.grads[pname] * d).sum()), numeric, rtol=1e-5,
                          atol=1e-8), key


def test_model_freeze_prefix_and_skip():
    model = _small_model()
    model.freeze(4)  # conv, bn, relu, pool
    assert [l.trainable for l in model.layers[:5]] == [False] * 4 + [True]
    calls = []
    first = model.layers[0]
    original = first.backward
    first.backward = lambda *a, **k: calls.append(1) or original(*a, **k)
    conv2 = model.layers[4]
    seen = {}
    orig2 = conv2.backward

    def spy(grad, need_input_grad=True):
        seen["need"] = need_input_grad
        return orig2(grad, need_input_grad)

    conv2.backward = spy
    x = np.random.default_rng(0).standard_normal((2, 2, 8, 8))
    _, g = nn.softmax_cross_entropy(model.forward(x, training=True), np.array([0, 1]))
    model.backward(g)
    assert not calls and seen["need"] is False  # no work below the first trainable layer
    keys = [k for k, _, _ in model.trainable_params()]
    assert keys == ["conv2d_1.weight", "conv2d_1.bias", "dense.weight", "dense.bias",
                    "dense_1.weight", "dense_1.bias"]
    w0 = model.layers[0].params["weight"].copy()
    nn.SGD(0.1).step(model)
    np.testing.assert_array_equal(model.layers[0].params["weight"], w0)
    model.unfreeze()
    assert all(l.trainable for l in model.layers)
    model.freeze(-2)  # all but the last two layers
    assert [l.trainable for l in model.layers[-3:]] == [False, True, True]
    model.freeze(["dense_1"])
    assert not model.get_layer("dense_1").trainable


def test_model_rejects_wrong_inputs():
    model = _small_model()
    with pytest.raises(ValueError, match="expects"):
        model.forward(np.zeros((1, 2, 9, 8)))
    with pytest.raises(TypeError, match="dtype"):
        model.forward(np.zeros((1, 2, 8, 8), np.float32))
    with pytest.raises(ValueError, match="unique"):
        nn.Sequential([nn.ReLU(name="a"), nn.ReLU(name="a")])


def test_float32_model_stays_float32():
    model = _small_model(dtype="float32")
    x = np.random.default_rng(0).standard_normal((3, 2, 8, 8)).astype(np.float32)
    y = model.forward(x, training=True)
    assert y.dtype == np.float32
    _, g = nn.softmax_cross_entropy(y, np.array([0, 1, 2]))
    model.backward(g)
    nn.Adam().step(model)
    assert all(l.params[k].dtype == np.float32 for l in model.layers for k in l.params)


def test_model_trains_on_cupy_like_on_numpy():
    """A step on the GPU (cupy arrays, cupy backend) gives the CPU's numbers."""
    from cnnfast.registry import get_backend

    if not get_backend("cupy").available:
        pytest.skip(f"cupy backend unavailable: {get_backend('cupy').reason}")
    import cupy

    cpu = _small_model()
    gpu = _small_model().set_backend(None).to("gpu")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 2, 8, 8))
    y = np.array([0, 1, 2, 1])
    losses = []
    for model, xs, ys in ((cpu, x, y), (gpu, cupy.asarray(x), cupy.asarray(y))):
        loss, g = nn.softmax_cross_entropy(model.forward(xs, training=True), ys)
        model.backward(g)
        nn.Adam(1e-2).step(model)
        losses.append(loss)
    assert losses[1] == pytest.approx(losses[0], rel=1e-10)
    a, b = cpu.state_dict(), gpu.state_dict()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-8, atol=1e-10, err_msg=k)


# ----------------------------------------------------------------------------- GlobalAvgPool
# It runs the average-pooling kernels (one window = the whole spatial extent): the
# results are the mean over the spatial axes, on every CPU backend and on cupy.


def _old_global_avg_pool(x, grad):
    """The formula GlobalAvgPool used before it went through the kernels."""
    count = int(np.prod(x.shape[2:]))
    g = (grad / grad.dtype.type(count)).reshape(x.shape[:2] + (1,) * (x.ndim - 2))
    return x.mean(axis=tuple(range(2, x.ndim))), np.broadcast_to(g, x.shape)


GLOBAL_SHAPES = [(2, 3, 9), (2, 3, 7, 6), (1, 2, 5, 4, 5), (3, 4, 1), (2, 2, 1, 1),
                 (2, 5, 33, 17)]


@pytest.mark.parametrize("backend", [None, "numpy"])
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-13), (np.float32, 2e-6)])
@pytest.mark.parametrize("shape", GLOBAL_SHAPES, ids=str)
def test_global_avg_pool_is_the_spatial_mean(shape, dtype, tol, backend):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    grad = rng.standard_normal(shape[:2]).astype(dtype)
    layer = nn.GlobalAvgPool()
    layer.backend = backend
    y = layer.forward(x, training=True)
    gx = layer.backward(grad)
    y_ref, gx_ref = _old_global_avg_pool(x, grad)
    assert y.shape == shape[:2] and y.dtype == dtype
    assert gx.shape == shape and gx.dtype == dtype and gx.flags.c_contiguous
    np.testing.assert_allclose(y, y_ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(gx, gx_ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_global_avg_pool_backward_matches_finite_differences_any_backend(rank):
    x = _x(rank)
    layer = _build(nn.GlobalAvgPool(), x)
    layer.backend = None  # the automatic choice (the compiled kernels where built)
    _directional_check(layer, x)


def test_global_avg_pool_runs_the_pooling_kernels_with_its_backend(monkeypatch):
    from cnnfast import api

    calls = []
    for op in ("avg_pool", "avg_pool_backward"):
        real = getattr(api, op)

        def spy(*args, _op=op, _real=real, **kw):
            calls.append((_op, kw.get("backend")))
            return _real(*args, **kw)

        monkeypatch.setattr(api, op, spy)
    layer = nn.GlobalAvgPool()
    layer.backend = "numpy"
    x = _x(2)
    layer.backward(np.ones(layer.forward(x, training=True).shape))
    assert calls == [("avg_pool", "numpy"), ("avg_pool_backward", "numpy")]


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_global_avg_pool_matches_torch_adaptive_avg_pool(rank):
    torch = pytest.importorskip("torch")
    adaptive = getattr(torch.nn.functional, f"adaptive_avg_pool{rank}d")
    x = _x(rank)
    grad = np.random.default_rng(5).standard_normal(x.shape[:2])
    layer = nn.GlobalAvgPool()
    y = layer.forward(x, training=True)
    gx = layer.backward(grad)
    xt = torch.tensor(x, requires_grad=True)
    yt = adaptive(xt, 1).reshape(x.shape[:2])
    yt.backward(torch.tensor(grad))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=1e-12, atol=1e-14)


def test_global_avg_pool_rejects_inputs_without_1_to_3_spatial_dims():
    layer = nn.GlobalAvgPool(name="gap")
    for shape in ((2, 3), (1, 1, 2, 2, 2, 2)):
        with pytest.raises(ValueError, match="gap expects .* 1 to 3 spatial dims"):
            layer.forward(np.zeros(shape))
    with pytest.raises(ValueError, match="1 to 3 spatial dims"):
        nn.Sequential([nn.GlobalAvgPool()], input_shape=(4,))


def test_global_avg_pool_in_a_model_with_an_empty_batch():
    model = nn.Sequential([nn.Conv2d(3, 3, padding="same"), nn.GlobalAvgPool(),
                           nn.Dense(2)], input_shape=(2, 5, 5), seed=0, dtype="float64",
                          backend="numpy")
    assert model.forward(np.zeros((0, 2, 5, 5))).shape == (0, 2)


def test_global_avg_pool_on_cupy_matches_numpy():
    from cnnfast.registry import get_backend

    if not get_backend("cupy").available:
        pytest.skip(f"cupy backend unavailable: {get_backend('cupy').reason}")
    import cupy

    for rank, dtype, tol in ((1, np.float64, 1e-12), (2, np.float32, 1e-5),
                             (3, np.float64, 1e-12)):
        x = _x(rank).astype(dtype)
        grad = np.random.default_rng(2).standard_normal(x.shape[:2]).astype(dtype)
        layer = nn.GlobalAvgPool()
        y = layer.forward(cupy.asarray(x), training=True)
        gx = layer.backward(cupy.asarray(grad))
        assert isinstance(y, cupy.ndarray) and isinstance(gx, cupy.ndarray)
        assert y.dtype == dtype and gx.dtype == dtype and gx.shape == x.shape
        y_ref, gx_ref = _old_global_avg_pool(x, grad)
        np.testing.assert_allclose(y.get(), y_ref, rtol=tol, atol=tol)
        np.testing.assert_allclose(gx.get(), gx_ref, rtol=tol, atol=tol)
