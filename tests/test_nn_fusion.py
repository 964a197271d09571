"""cnnfast.nn fusion (``Sequential(fuse=True)``, cnnfast.nn.fusion): a fused model
against the same model with ``fuse=False`` -- forward outputs and every parameter
gradient -- for convolution + activation (+ max pooling) stacks of every rank, on the
CPU backends; which layers fuse and which must not; NaN and ties; summaries,
checkpoints and training unchanged.

Exactness: on the numpy backend (the reference) every fusion is bit-identical (the
activation layers do the reference's arithmetic). The ReLU / max pooling swap uses no
fused kernel, so stacks fused only that way are bit-identical on every backend; where a
compiled kernel applies an activation itself, the results agree within rounding."""

from __future__ import annotations

import numpy as np
import pytest

import cnnfast
from cnnfast import api, nn
from cnnfast.nn.training import Trainer, cnn_model

BACKENDS = ["numpy", "cpp", "numba"]


def _backend(name):
    if name not in cnnfast.available_backends():
        pytest.skip(f"backend {name!r} unavailable")
    return name


# name -> (layers factory, per-sample input shape, the fused groups as layer indices,
#          fused only by the ReLU / max pooling swap)
STACKS = {
    "conv2d_relu_maxpool": (
        lambda: [nn.Conv2d(4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                 nn.Conv2d(6, 3, groups=2), nn.ReLU(), nn.MaxPool2d(2)],
        (2, 12, 12), [(0, 1, 2), (3, 4, 5)], True),
    "conv2d_relu_overlapping_ceil_pool": (
        lambda: [nn.Conv2d(3, 3, stride=2, dilation=1), nn.ReLU(),
                 nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
                 nn.Conv2d(2, 2), nn.ReLU(), nn.MaxPool2d(2, stride=1, dilation=2),
                 nn.Flatten(), nn.Dense(3)],
        (2, 17, 15), [(0, 1, 2), (3, 4, 5)], True),
    "conv2d_leaky": (
        lambda: [nn.Conv2d(4, 3), nn.LeakyReLU(0.1), nn.Conv2d(3, 3, stride=2),
                 nn.LeakyReLU(0.0)],
        (2, 11, 11), [(0, 1), (2, 3)], False),
    "conv2d_sigmoid": (
        lambda: [nn.Conv2d(4, 3, padding="same"), nn.Sigmoid(), nn.Conv2d(2, 3, dilation=2),
                 nn.Sigmoid()],
        (3, 10, 10), [(0, 1), (2, 3)], False),
    "conv_transpose2d_tanh": (
        lambda: [nn.Conv2d(3, 3), nn.Tanh(),
                 nn.ConvTranspose2d(2, 3, stride=2, padding=1, output_padding=1),
                 nn.Tanh()],
        (2, 8, 8), [(0, 1), (2, 3)], False),
    "conv1d_relu_maxpool_leaky": (
        lambda: [nn.Conv1d(4, 3), nn.ReLU(), nn.MaxPool1d(2), nn.Conv1d(3, 3, padding=2),
                 nn.LeakyReLU(0.2)],
        (3, 20), [(0, 1, 2), (3, 4)], False),
    "conv1d_transpose_relu_maxpool": (
        lambda: [nn.Conv1d(3, 3), nn.ReLU(), nn.MaxPool1d(2),
                 nn.ConvTranspose1d(4, 3, stride=2), nn.ReLU(), nn.MaxPool1d(3, stride=2)],
        (2, 19), [(0, 1, 2), (3, 4, 5)], True),
    "conv3d_relu_maxpool_sigmoid": (
        lambda: [nn.Conv3d(3, 3, padding=1), nn.ReLU(), nn.MaxPool3d(2), nn.Conv3d(2, 2),
                 nn.Sigmoid()],
        (2, 6, 6, 6), [(0, 1, 2), (3, 4)], False),
    "conv3d_transpose_tanh": (
        lambda: [nn.Conv3d(2, 2), nn.Tanh(), nn.ConvTranspose3d(2, 2, stride=2), nn.Tanh()],
        (1, 5, 4, 5), [(0, 1), (2, 3)], False),
    "any_rank_conv_tanh_relu_maxpool": (
        lambda: [nn.Conv(4, 3), nn.Tanh(), nn.Conv(3, 3), nn.ReLU(), nn.MaxPool(2)],
        (2, 10, 9), [(0, 1), (2, 3, 4)], False),
}


def _pair(layers_fn, input_shape, dtype, backend, seed=3):
    """The same model (same weights) fused and unfused."""
    return [nn.Sequential(layers_fn(), input_shape, dtype=dtype, seed=seed, backend=backend,
                          fuse=fuse) for fuse in (True, False)]


def _step(model, x, seed=7):
    """Forward (training), backward with a fixed random output gradient: the output
    and ``{param key: gradient}``."""
    y = model.forward(x, training=True)
    g = np.random.default_rng(seed).standard_normal(y.shape).astype(y.dtype)
    model.backward(g)
    grads = {key: layer.grads[p].copy() for key, layer, p in model.trainable_params()}
    return y, grads


def _compare(got, want, exact, dtype):
    """Bit for bit (NaN where NaN) or within rounding of the compiled activations."""
    (y1, g1), (y0, g0) = got, want
    assert set(g1) == set(g0) and g1
    for key, a, b in [("output", y1, y0)] + [(k, g1[k], g0[k]) for k in g0]:
        assert a.dtype == b.dtype and a.shape == b.shape, key
        if exact:
            np.testing.assert_array_equal(a, b, err_msg=key)
        else:
            tol = 1e-5 if dtype == np.float32 else 1e-13
            scale = max(1.0, float(np.abs(b).max()))
            np.testing.assert_allclose(a, b, rtol=tol, atol=tol * scale, err_msg=key)


def _x(input_shape, dtype, n=3, seed=0):
    return np.random.default_rng(seed).standard_normal((n,) + input_shape).astype(dtype)


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("stack", sorted(STACKS))
def test_fused_equals_unfused(stack, dtype, backend_name):
    backend = _backend(backend_name)
    layers_fn, shape, groups, swap_only = STACKS[stack]
    fused, plain = _pair(layers_fn, shape, dtype, backend)
    names = [layer.name for layer in fused.layers]
    plan = fused.fusion_plan()
    assert [g for g in plan if len(g) > 1] == [tuple(names[i] for i in g) for g in groups]
    assert plain.fusion_plan() == [(n,) for n in names]
    x = _x(shape, dtype)
    exact = backend == "numpy" or swap_only
    _compare(_step(fused, x), _step(plain, x), exact, dtype)


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_relu_maxpool_swap_keeps_nan_inf_and_ties(backend_name):
    """NaN and inf in the input, whole windows of exact zeros and of equal negative
    values (ties, where the two orders pick different cells): bit-identical."""
    backend = _backend(backend_name)
    layers_fn, shape, _, _ = STACKS["conv2d_relu_overlapping_ceil_pool"]
    fused, plain = _pair(layers_fn, shape, np.float32, backend)
    for model in (fused, plain):  # channel biases: negative, zero, positive
        conv = model.layers[0]
        conv.params["bias"] = np.array([-0.5, 0.0, 0.25], np.float32)
    x = _x(shape, np.float32, n=4)
    x[0, :, 3:12, 2:11] = 0.0  # zero windows: conv = bias, so ties at 0 and at -0.5
    x[1, 0, 5, 5] = np.nan
    x[2, 1, 8, 3] = np.inf
    x[3, :, 0, 0] = -np.inf
    with np.errstate(invalid="ignore"):  # inf - inf in the sums: NaN, as intended
        got, want = _step(fused, x), _step(plain, x)
    assert np.isnan(want[0]).any()
    _compare(got, want, True, np.float32)


def test_fused_groups_run_the_kernels_activation_and_pool_before_relu(monkeypatch):
    """The fused path really is fused: the convolution kernel gets ``activation=``,
    the activation layer does not run, and ReLU after max pooling sees the pooled
    shape."""
    calls = []
    for op in ("conv", "conv_backward", "conv_transpose", "conv_transpose_backward"):
        real = getattr(api, op)

        def spy(*args, _op=op, _real=real, **kw):
            calls.append((_op, kw.get("activation"), kw.get("y") is not None))
            return _real(*args, **kw)

        monkeypatch.setattr(api, op, spy)
    relu_inputs = []
    real_relu = nn.ReLU.forward
    monkeypatch.setattr(nn.ReLU, "forward", lambda self, x, training=False: (
        relu_inputs.append(x.shape), real_relu(self, x, training))[1])
    monkeypatch.setattr(nn.Sigmoid, "forward", lambda *a, **k: pytest.fail("not fused"))
    model = nn.Sequential([nn.Conv2d(4, 3), nn.ReLU(), nn.MaxPool2d(2),
                           nn.ConvTranspose2d(2, 2, stride=2), nn.Sigmoid()],
                          (1, 8, 8), dtype="float64", seed=0, backend="numpy")
    y = model.forward(_x((1, 8, 8), np.float64, n=2), training=True)
    model.backward(np.ones_like(y))
    assert calls == [("conv", None, False), ("conv_transpose", "sigmoid", False),
                     ("conv_transpose_backward", "sigmoid", True),
                     ("conv_backward", None, False)]
    assert relu_inputs == [(2, 4, 3, 3)]  # pooled: 6x6 -> 3x3


class _MyReLU(nn.ReLU):
    """A subclass may compute something else: never fused."""


@pytest.mark.parametrize("layers_fn, shape, groups", [
    (lambda: [nn.Conv2d(3, 3), nn.Dropout(0.5), nn.ReLU(), nn.MaxPool2d(2)], (1, 8, 8), []),
    (lambda: [nn.Conv2d(3, 3), nn.BatchNorm(), nn.ReLU(), nn.MaxPool2d(2)], (1, 8, 8), []),
    (lambda: [nn.Conv2d(3, 3), nn.LeakyReLU(-0.5), nn.MaxPool2d(2)], (1, 8, 8), []),
    (lambda: [nn.Conv2d(3, 3), _MyReLU(), nn.MaxPool2d(2)], (1, 8, 8), []),
    (lambda: [nn.Conv2d(3, 3), nn.AvgPool2d(2), nn.ReLU(), nn.MaxPool2d(2)], (1, 10, 10),
     []),
    (lambda: [nn.Flatten(), nn.Dense(4), nn.ReLU()], (1, 4, 4), []),
    (lambda: [nn.Conv2d(3, 3), nn.MaxPool2d(2), nn.ReLU()], (1, 8, 8), []),
    # partly: the activation fuses, the pooling after it does not swap
    (lambda: [nn.Conv2d(3, 3), nn.LeakyReLU(0.1), nn.MaxPool2d(2)], (1, 8, 8), [(0, 1)]),
    (lambda: [nn.Conv2d(3, 3), nn.Sigmoid(), nn.MaxPool2d(2)], (1, 8, 8), [(0, 1)]),
    (lambda: [nn.Conv2d(3, 3), nn.ReLU(), nn.AvgPool2d(2)], (1, 8, 8), [(0, 1)]),
    (lambda: [nn.Conv2d(3, 3), nn.ReLU(), nn.ReLU(), nn.MaxPool2d(2)], (1, 8, 8), [(0, 1)]),
], ids=["dropout", "batchnorm", "negative_slope", "subclass", "avgpool_between", "dense",
        "pool_before_relu", "leaky_then_pool", "sigmoid_then_pool", "relu_then_avgpool",
        "relu_twice"])
def test_what_fuses_and_what_does_not(layers_fn, shape, groups):
    fused, plain = _pair(layers_fn, shape, np.float64, "numpy")
    names = [layer.name for layer in fused.layers]
    assert [g for g in fused.fusion_plan() if len(g) > 1] == \
        [tuple(names[i] for i in g) for g in groups]
    x = _x(shape, np.float64, n=2)
    _compare(_step(fused, x), _step(plain, x), True, np.float64)


def test_summary_config_and_state_dict_do_not_depend_on_fuse():
    layers_fn, shape, _, _ = STACKS["conv2d_relu_maxpool"]
    fused, plain = _pair(layers_fn, shape, np.float32, "numpy")
    assert fused.summary(print_fn=None) == plain.summary(print_fn=None)
    assert "max_pool2d (MaxPool2d)" in fused.summary(print_fn=None)
    assert fused.config() == plain.config()
    a, b = fused.state_dict(), plain.state_dict()
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_checkpoint_of_a_fused_model_loads_into_an_unfused_one(tmp_path):
    model = cnn_model(input_shape=(1, 12, 12), classes=3, seed=1, backend="numpy")
    assert model.fuse
    opt = nn.Adam(lr=1e-2)
    rng = np.random.default_rng(0)
    x = rng.random((4, 1, 12, 12), dtype=np.float32)
    loss, grad = nn.softmax_cross_entropy(model.forward(x, training=True),
                                          np.array([0, 1, 2, 1]))
    model.backward(grad)
    opt.step(model)
    path = nn.save_checkpoint(tmp_path / "fused.npz", model, opt)
    loaded, _, _ = nn.load_checkpoint(path, backend="numpy")
    assert loaded.fuse  # the default: fusion is not stored
    loaded.fuse = False
    assert loaded.fusion_plan() == [(layer.name,) for layer in loaded.layers]
    np.testing.assert_array_equal(loaded.forward(x), model.forward(x))


@pytest.mark.parametrize("backend_name", ["numpy", "cpp"])
def test_seed_cnn_trains_identically_fused_and_unfused(backend_name):
    backend = _backend(backend_name)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 8, 1, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, (3, 8))
    runs = []
    for fuse in (True, False):
        model = cnn_model(seed=0, backend=backend)
        model.fuse = fuse
        trainer = Trainer(model, nn.Adam(lr=1e-3), batch_size=8)
        losses = [trainer.train_step(trainer.task.to_float(x, model), y)[0]
                  for x, y in zip(images, labels)]
        runs.append((losses, model.state_dict()))
    (l1, s1), (l0, s0) = runs
    assert l1 == l0
    assert all(np.array_equal(s1[k], s0[k]) for k in s0)


def test_backward_follows_the_plan_its_forward_ran():
    layers_fn, shape, _, _ = STACKS["any_rank_conv_tanh_relu_maxpool"]
    fused, plain = _pair(layers_fn, shape, np.float64, "numpy")
    x = _x(shape, np.float64)
    want = _step(fused, x)
    y = fused.forward(x, training=True)
    fused.fuse = False  # switched between forward and backward: no effect until the next
    fused.backward(np.random.default_rng(7).standard_normal(y.shape))
    got = (y, {key: layer.grads[p] for key, layer, p in fused.trainable_params()})
    _compare(got, want, True, np.float64)
    _compare(_step(fused, x), _step(plain, x), True, np.float64)


def test_frozen_leading_group_is_skipped_and_its_caches_freed():
    layers_fn, shape, _, _ = STACKS["conv2d_relu_maxpool"]
    fused, plain = _pair(layers_fn, shape, np.float32, "cpp" if "cpp" in
                         cnnfast.available_backends() else "numpy")
    for model in (fused, plain):
        model.freeze(["conv2d"])
    x = _x(shape, np.float32)
    got, want = _step(fused, x), _step(plain, x)
    assert set(got[1]) == {"conv2d_1.weight", "conv2d_1.bias"}
    _compare(got, want, True, np.float32)
    assert all(layer._cache is None for layer in fused.layers)


def test_fuse_must_be_a_bool():
    with pytest.raises(TypeError, match="fuse"):
        nn.Sequential([nn.ReLU()], fuse="yes")
    model = nn.Sequential([nn.ReLU()])
    with pytest.raises(TypeError, match="fuse"):
        model.fuse = 1
    model.fuse = False
    assert not model.fuse


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_relu_layer_backward_is_the_references(dtype):
    """The unfused ReLU's gradient is ``cnnfast.activation.grad``'s bit for bit (the
    fused kernels' definition): +0 at closed units even for a NaN or inf gradient."""
    from cnnfast import activation

    x = np.array([[1.5, -2.0, 0.0, -0.0, np.nan, np.inf, -np.inf, 3.0]] * 2, dtype)
    grad = np.array([[np.nan, np.nan, np.inf, -1.0, -np.inf, -0.0, 2.0, np.nan],
                     [-4.0, -1.0, 2.0, -3.0, 5.0, 6.0, -7.0, -0.0]], dtype)
    layer = nn.ReLU()
    y = layer.forward(x, training=True)
    got = layer.backward(grad)
    want = activation.grad(grad, y, "relu", 0.0)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.signbit(got), np.signbit(want))
