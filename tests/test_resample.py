"""Upsample / SkipConcat / Residual: forward against torch, backward against finite
differences (float64), and the nested-parameter views seen by Sequential,
optimizers and checkpoints."""

import numpy as np
import pytest

from cnnfast.nn.base import layer_from_config
from cnnfast.nn.checkpoint import load_checkpoint, save_checkpoint
from cnnfast.nn.layers import Conv2d, Dropout, Flatten, Linear, MaxPool2d, ReLU, Tanh
from cnnfast.nn.losses import mse
from cnnfast.nn.model import Sequential
from cnnfast.nn.optim import Adam, SGD
from cnnfast.nn.resample import Residual, SkipConcat, Upsample, bilinear_matrix

BACKEND = "numpy"


def _numeric_input_grad(f, x, direction, eps=1e-6):
    """Directional derivative of scalar f at x along ``direction`` (central difference)."""
    return (f(x + eps * direction) - f(x - eps * direction)) / (2 * eps)


def _check_layer_input_grad(layer, x, rng):
    """<backward(gy), d> == d/dt <forward(x + t d), gy> for random gy and d."""
    y = layer.forward(x, training=True)
    gy = rng.standard_normal(y.shape)
    gx = layer.backward(gy)
    assert gx.shape == x.shape
    for _ in range(3):
        d = rng.standard_normal(x.shape)
        num = _numeric_input_grad(lambda z: float((layer.forward(z) * gy).sum()), x, d)
        assert abs(float((gx * d).sum()) - num) <= 1e-6 * max(1.0, abs(num)), (num,)


# ----------------------------------------------------------------------------- Upsample


@pytest.mark.parametrize("mode,shape,scale", [
    ("nearest", (2, 3, 4, 5), 2), ("nearest", (2, 3, 4, 5), (3, 1)),
    ("nearest", (1, 2, 5), 3), ("nearest", (1, 2, 2, 3, 2), 2),
    ("bilinear", (2, 3, 4, 5), 2), ("bilinear", (1, 2, 3, 1), (3, 2)),
    ("bilinear", (1, 1, 1, 1), 4)])
def test_upsample_gradcheck(mode, shape, scale):
    rng = np.random.default_rng(0)
    layer = Upsample(scale, mode=mode)
    layer.build(shape[1:], rng, np.float64)
    x = rng.standard_normal(shape)
    assert layer.forward(x).shape[1:] == layer.output_shape(shape[1:])
    _check_layer_input_grad(layer, x, rng)


def test_upsample_nearest_repeats():
    x = np.arange(6, dtype=np.float64).reshape(1, 1, 2, 3)
    y = Upsample(2).forward(x)
    np.testing.assert_array_equal(y[0, 0], np.repeat(np.repeat(x[0, 0], 2, 0), 2, 1))


def test_bilinear_matrix_rows_sum_to_one():
    for n, s in [(1, 2), (5, 2), (7, 3), (4, 1)]:
        m = bilinear_matrix(n, s)
        np.testing.assert_allclose(m.sum(axis=1), 1.0)
        assert m.shape == (n * s, n)
    np.testing.assert_array_equal(bilinear_matrix(4, 1), np.eye(4))


@pytest.mark.parametrize("mode,shape,scale", [
    ("nearest", (2, 3, 5, 4), 2), ("nearest", (2, 3, 5, 4), (2, 3)), ("nearest", (2, 3, 7), 3),
    ("nearest", (1, 2, 3, 2, 4), 2), ("bilinear", (2, 3, 5, 4), 2),
    ("bilinear", (2, 3, 5, 4), (3, 2)), ("bilinear", (1, 1, 1, 6), 4)])
def test_upsample_matches_torch(mode, shape, scale):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape)
    layer = Upsample(scale, mode=mode)
    y = layer.forward(x, training=True)
    gy = rng.standard_normal(y.shape)
    gx = layer.backward(gy)
    tx = torch.tensor(x, requires_grad=True)
    sf = scale if isinstance(scale, int) else tuple(float(s) for s in scale)
    kw = {"align_corners": False} if mode == "bilinear" else {}
    ty = F.interpolate(tx, scale_factor=sf, mode=mode, **kw)
    ty.backward(torch.tensor(gy))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gx, tx.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_upsample_float32_and_errors():
    x = np.ones((1, 2, 3, 3), np.float32)
    assert Upsample(2, "bilinear").forward(x).dtype == np.float32
    with pytest.raises(ValueError, match="mode"):
        Upsample(2, mode="bicubic")
    with pytest.raises(ValueError, match="scale_factor"):
        Upsample(0)
    with pytest.raises(ValueError, match="scale_factor"):
        Upsample(1.5)
    with pytest.raises(NotImplementedError, match="2-D"):
        Upsample(2, "bilinear").output_shape((1, 4))


# ----------------------------------------------------------------------------- blocks


def _tiny_unet(dtype="float64", seed=0):
    inner = [MaxPool2d(2), Conv2d(4, 3, padding=1), Tanh(),
             SkipConcat([Conv2d(3, 1), Tanh()]),
             Upsample(2, "bilinear"), Conv2d(2, 3, padding=1)]
    return Sequential([Conv2d(2, 3, padding=1), Tanh(), SkipConcat(inner),
                       Residual([Conv2d(4, 3, padding=1), Tanh()]),
                       Conv2d(1, 1)], input_shape=(1, 6, 6), dtype=dtype, seed=seed,
                      backend=BACKEND)


def test_skip_concat_shapes_and_values():
    rng = np.random.default_rng(2)
    block = SkipConcat([Conv2d(3, 3, padding=1), ReLU()])
    block.build((2, 5, 5), rng, np.float64)
    assert block.output_shape((2, 5, 5)) == (5, 5, 5)
    x = rng.standard_normal((4, 2, 5, 5))
    y = block.forward(x)
    np.testing.assert_array_equal(y[:, :2], x)
    np.testing.assert_array_equal(y[:, 2:], block.layers[1].forward(block.layers[0].forward(x)))
    with pytest.raises(ValueError, match="spatial size"):
        SkipConcat([MaxPool2d(2)]).output_shape((2, 4, 4))
    with pytest.raises(ValueError, match="same shape"):
        Residual([Conv2d(3, 1)]).output_shape((2, 4, 4))
    with pytest.raises(ValueError, match="at least one"):
        SkipConcat([])


@pytest.mark.parametrize("block", ["skip", "residual"])
def test_block_input_gradcheck(block):
    rng = np.random.default_rng(3)
    inner = [Conv2d(2, 3, padding=1), Tanh(), Conv2d(3, 1)]
    layer = SkipConcat(inner) if block == "skip" else Residual(inner)
    layer.build((3, 4, 4), rng, np.float64)
    _check_layer_input_grad(layer, rng.standard_normal((2, 3, 4, 4)), rng)


def _blocks_first(dtype="float64"):
    """Blocks as the first layers: the model asks the first one for no input
    gradient, and inside the second a parameter-free layer comes first."""
    return Sequential([Residual([Conv2d(1, 3, padding=1), Tanh()]),
                       SkipConcat([Tanh(), Conv2d(2, 3, padding=1)]),
                       Conv2d(1, 1)], input_shape=(1, 6, 6), dtype=dtype, seed=3,
                      backend=BACKEND)


@pytest.mark.parametrize("build,count", [(_tiny_unet, 12), (_blocks_first, 6)])
def test_nested_model_param_grads_match_finite_differences(build, count):
    """Every parameter of a model with nested blocks gets the right gradient
    through Sequential.backward (the first conv is checked too: its input
    gradient is not needed but its weight gradient is)."""
    model = build()
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 1, 6, 6))
    t = rng.standard_normal((3, 1, 6, 6))
    _, g = mse(model.forward(x, training=True), t)
    model.backward(g)
    keys = [(k, layer, p) for k, layer, p in model.trainable_params()]
    assert len(keys) == count
    assert build is _blocks_first or any(k.startswith("skip.skip.") for k, _, _ in keys)
    for key, layer, pname in keys:
        param = layer.params[pname]
        grad = layer.grads[pname]
        assert grad.shape == param.shape, key
        d = rng.standard_normal(param.shape)
        eps = 1e-6
        param += eps * d
        lp = mse(model.forward(x), t)[0]
        param -= 2 * eps * d
        lm = mse(model.forward(x), t)[0]
        param += eps * d
        num = (lp - lm) / (2 * eps)
        assert abs(float((grad * d).sum()) - num) <= 1e-6 * max(1.0, abs(num)), key


def test_optimizer_updates_inner_layers_and_clears_grads():
    model = _tiny_unet()
    inner_conv = model.get_layer("skip").layers[1]
    before = inner_conv.params["weight"].copy()
    x = np.random.default_rng(5).random((2, 1, 6, 6))
    _, g = mse(model.forward(x, training=True), x)
    model.backward(g)
    assert "conv2d.weight" in model.get_layer("skip").grads

    def walk(layers):
        for layer in layers:
            yield layer
            yield from walk(getattr(layer, "layers", ()))
    assert all(layer._cache is None for layer in walk(model.layers))  # activations freed
    Adam(lr=0.01).step(model)
    assert not np.array_equal(before, inner_conv.params["weight"])
    assert not inner_conv.grads and not dict(model.get_layer("skip").grads)


def test_freeze_block_and_param_count():
    model = _tiny_unet()
    skip = model.get_layer("skip")
    n = sum(layer.param_count() for layer in skip.layers if not isinstance(layer, SkipConcat)) \
        + skip.layers[3].param_count()
    assert skip.param_count() == n > 0
    model.freeze(["skip"])
    assert all(not layer.trainable for layer in skip.layers)
    assert not skip.layers[3].layers[0].trainable
    assert not any(k.startswith("skip.") for k, _, _ in model.trainable_params())
    x = np.random.default_rng(6).random((2, 1, 6, 6))
    _, g = mse(model.forward(x, training=True), x)
    model.backward(g)
    SGD(lr=0.1).step(model)  # no "no gradient" error for frozen inner layers
    assert model.param_count(trainable=True) == model.param_count() - skip.param_count()


def test_state_dict_and_checkpoint_round_trip(tmp_path):
    model = _tiny_unet(seed=1)
    x = np.random.default_rng(7).random((2, 1, 6, 6))
    expected = model.forward(x)
    other = _tiny_unet(seed=2)
    assert not np.allclose(other.forward(x), expected)
    other.load_state_dict(model.state_dict())
    np.testing.assert_array_equal(other.forward(x), expected)
    path = save_checkpoint(tmp_path / "m.npz", model, Adam())
    loaded, _, _ = load_checkpoint(path, backend=BACKEND)
    np.testing.assert_array_equal(loaded.forward(x), expected)
    assert isinstance(loaded.get_layer("skip").layers[3], SkipConcat)


def test_block_config_round_trip_and_dropout_rng():
    block = SkipConcat([Conv2d(2, 3, padding=1), Dropout(0.5)])
    clone = layer_from_config(block.full_config())
    assert [type(layer) for layer in clone.layers] == [Conv2d, Dropout]
    assert clone.layers[1].rate == 0.5
    model = Sequential([block, Flatten(), Linear(2)], input_shape=(1, 3, 3), seed=0)
    assert block.layers[1].rng is model.rng


@pytest.mark.parametrize("size_in,size_out", [((11, 11), (28, 28)), ((5, 7), (3, 9)),
                                              ((4, 4), (8, 8)), ((1, 3), (2, 5))])
def test_resize_bilinear_matches_torch(size_in, size_out):
    torch = pytest.importorskip("torch")
    from cnnfast.nn.resample import resize_bilinear

    x = np.random.default_rng(8).standard_normal((2, 3) + size_in)
    want = torch.nn.functional.interpolate(torch.tensor(x), size=size_out, mode="bilinear",
                                           align_corners=False).numpy()
    np.testing.assert_allclose(resize_bilinear(x, size_out), want, rtol=1e-12, atol=1e-12)
