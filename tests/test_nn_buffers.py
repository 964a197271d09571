"""``Sequential``'s reused result arrays (``cnnfast.nn.model._Buffers``): in training,
the convolution and pooling layers write their results through ``out=`` into arrays the
model keeps from one step to the next, where no one else can still hold the previous
result. Checked here: training gives bit-identical weights with and without them, on
every CPU backend, fused or not; the arrays are really reused; the model's output,
parameter gradients and direct layer calls stay fresh arrays; an evaluation forward
between a training forward and its backward, and a model called twice before its
backward (a GAN's discriminator), back-propagate as without buffers."""

from __future__ import annotations

import numpy as np
import pytest

import cnnfast
from cnnfast import nn

BACKENDS = ["numpy", "cpp", "numba"]


def _backend(name):
    if name not in cnnfast.available_backends():
        pytest.skip(f"backend {name!r} unavailable")
    return name


def _layers():
    """Every taker: conv (fused with ReLU + max pooling, and with an activation), a
    transposed conv, max and average pooling, then a Flatten that passes its input on."""
    return [nn.Conv2d(4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.ConvTranspose2d(3, 2, stride=2), nn.Tanh(),
            nn.Conv2d(3, 3, stride=2), nn.AvgPool2d(2, padding=1),
            nn.Flatten(), nn.Dense(5)]


def _model(backend, buffers=True, fuse=True, layers=None, dtype="float64"):
    m = nn.Sequential(layers if layers is not None else _layers(), (2, 10, 10), seed=3,
                      backend=backend, fuse=fuse, dtype=dtype)
    if not buffers:
        m._buffers = None
    return m


def _batch(seed, n=4, shape=(2, 10, 10)):
    return np.random.default_rng(seed).standard_normal((n,) + shape)


def _step(model, x, opt):
    out = model.forward(x, training=True)
    loss, grad = nn.mse(out, np.zeros_like(out))
    model.backward(grad)
    opt.step(model)
    return out


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_training_with_buffers_is_bit_identical(backend, fuse):
    _backend(backend)
    a, b = _model(backend, True, fuse), _model(backend, False, fuse)
    oa, ob = nn.Adam(1e-2), nn.Adam(1e-2)
    for i, n in enumerate((4, 4, 3, 4)):  # a batch of another size in between
        ya = _step(a, _batch(i, n), oa)
        yb = _step(b, _batch(i, n), ob)
        np.testing.assert_array_equal(ya, yb)
    sa, sb = a.state_dict(), b.state_dict()
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)


def test_buffers_are_reused_across_steps():
    m = _model("cpp" if "cpp" in cnnfast.available_backends() else "numpy")
    opt = nn.SGD(0.01)
    _step(m, _batch(0), opt)
    held = {k: v[2] for k, v in m._buffers._held.items()}
    roles = sorted(role for _, role in held)
    # forward: the conv, transposed conv, conv and both pools (the last step, Dense,
    # is not lent); backward: the input gradients of all but the first conv (which
    # computes none): the first pool's (inside the first, fused, step), the
    # transposed conv's, the second conv's and the average pool's
    assert roles.count("y") == 5 and roles.count("grad_x") == 4
    _step(m, _batch(1), opt)

    def arrays(r):  # max pooling keeps the pair (y, indices)
        return r if isinstance(r, tuple) else (r,)

    for k, v in held.items():
        now = arrays(m._buffers._held[k][2])
        assert len(now) == len(arrays(v))
        assert all(a is b for a, b in zip(now, arrays(v))), k


def test_the_output_and_parameter_gradients_stay_fresh():
    m = _model("numpy")
    opt = nn.SGD(0.01)
    y1 = m.forward(_batch(0), training=True)
    kept = y1.copy()
    loss, grad = nn.mse(y1, np.zeros_like(y1))
    m.backward(grad)
    grads = {(layer.name, k): g for layer in m.layers for k, g in layer.grads.items()}
    copies = {k: g.copy() for k, g in grads.items()}
    opt.step(m)
    for i in (1, 2):
        _step(m, _batch(i), opt)
    # the next steps wrote into neither the output nor the gradients handed out
    np.testing.assert_array_equal(y1, kept)
    for k, g in grads.items():
        np.testing.assert_array_equal(g, copies[k], err_msg=str(k))


def test_an_output_that_views_a_buffer_is_copied():
    # Flatten passes the pooling's output on as a view: the model's output must not
    # be that buffer
    m = _model("numpy", layers=[nn.Conv2d(3, 3), nn.MaxPool2d(2), nn.Flatten()])
    y = m.forward(_batch(0), training=True)
    assert not m._buffers.viewed_by(y)
    kept = y.copy()
    m.backward(np.ones_like(y))
    m.forward(_batch(1), training=True)
    np.testing.assert_array_equal(y, kept)


def test_direct_layer_calls_return_fresh_arrays():
    m = _model("numpy")
    conv = m.get_layer("conv2d")
    x = _batch(0)
    m.forward(x, training=True)  # buffers now held
    y1 = conv.forward(x, training=True)
    y2 = conv.forward(x, training=True)
    assert not np.shares_memory(y1, y2)
    assert not m._buffers.viewed_by(y1)


@pytest.mark.parametrize("backend", ["numpy", "cpp"])
def test_an_evaluation_forward_before_backward_changes_nothing(backend):
    _backend(backend)
    a, b = _model(backend), _model(backend, buffers=False)
    for m in (a, b):
        y = m.forward(_batch(0), training=True)
        m.forward(_batch(1))  # evaluation: must not touch the training activations
        m.backward(np.ones_like(y))
    for la, lb in zip(a.layers, b.layers):
        for k in la.grads:
            np.testing.assert_array_equal(la.grads[k], lb.grads[k])


@pytest.mark.parametrize("backend", ["numpy", "cpp"])
def test_a_model_called_twice_before_backward(backend):
    """A GAN's discriminator on a real and a fake batch, then one backward: the layers
    keep their last forward's cache, so it back-propagates the second call, with or
    without buffers, and the first call's output is still intact."""
    _backend(backend)
    a, b, ref = _model(backend), _model(backend, buffers=False), _model(backend)
    real, fake = _batch(0), _batch(1)
    outs = {}
    for name, m in (("a", a), ("b", b)):
        first = m.forward(real, training=True)
        kept = first.copy()
        second = m.forward(fake, training=True)
        np.testing.assert_array_equal(first, kept)
        m.backward(np.ones_like(second))
        outs[name] = second
    y = ref.forward(fake, training=True)
    ref.backward(np.ones_like(y))
    for la, lb, lr in zip(a.layers, b.layers, ref.layers):
        for k in lr.grads:
            np.testing.assert_array_equal(la.grads[k], lr.grads[k])
            np.testing.assert_array_equal(lb.grads[k], lr.grads[k])

