"""cnnfast.nn losses, optimizers, schedules and initializers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cnnfast import nn
from cnnfast.nn.init import INITIALIZERS, fans


def test_softmax_cross_entropy_is_stable_for_huge_logits():
    logits = np.array([[1e4, 0.0, -1e4], [0.0, 1e4, 1e4]], np.float32)
    with np.errstate(over="raise", invalid="raise"):
        loss, grad = nn.softmax_cross_entropy(logits, np.array([0, 2]))
    assert math.isfinite(loss)
    np.testing.assert_allclose(loss, math.log(2) / 2, rtol=1e-6)
    np.testing.assert_allclose(grad, [[0, 0, 0], [0, 0.25, -0.25]], atol=1e-7)
    assert grad.dtype == np.float32


def test_softmax_cross_entropy_values_and_gradient():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((5, 4))
    labels = np.array([0, 3, 1, 1, 2])
    loss, grad = nn.softmax_cross_entropy(logits, labels)
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(loss, -np.log(p[np.arange(5), labels]).mean(), rtol=1e-12)
    eps, d = 1e-6, rng.standard_normal(logits.shape)
    numeric = (nn.softmax_cross_entropy(logits + eps * d, labels)[0]
               - nn.softmax_cross_entropy(logits - eps * d, labels)[0]) / (2 * eps)
    np.testing.assert_allclose((grad * d).sum(), numeric, rtol=1e-6)
    onehot = np.eye(4)[labels]
    loss2, grad2 = nn.softmax_cross_entropy(logits, onehot)
    np.testing.assert_allclose(loss2, loss, rtol=1e-12)
    np.testing.assert_allclose(grad2, grad, atol=1e-15)
    with pytest.raises(ValueError, match="lie in"):
        nn.softmax_cross_entropy(logits, np.array([0, 4, 1, 1, 2]))
    with pytest.raises(ValueError, match="entries"):
        nn.softmax_cross_entropy(logits, np.array([0, 1]))


def test_mse():
    y, t = np.array([[1.0, 2.0], [3.0, 5.0]]), np.array([[1.0, 1.0], [1.0, 1.0]])
    loss, grad = nn.mse(y, t)
    assert loss == pytest.approx((0 + 1 + 4 + 16) / 4)
    np.testing.assert_allclose(grad, 2 * (y - t) / 4)


def _one_param_model(w):
    model = nn.Sequential([nn.Dense(w.shape[0], use_bias=False)], input_shape=(w.shape[1],))
    model.layers[0].params["weight"] = w.copy()
    return model


def _run_optimizer(opt, w0, grads):
    model = _one_param_model(w0)
    for g in grads:
        model.layers[0].grads["weight"] = g
        opt.step(model)
    return model.layers[0].params["weight"]


OPTIM_CASES = [
    ("sgd", dict(lr=0.1), {}),
    ("sgd", dict(lr=0.1, momentum=0.9), {}),
    ("sgd", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01), {}),
    ("adam", dict(lr=0.01), {}),
    ("adam", dict(lr=0.01, weight_decay=0.1, betas=(0.8, 0.99)), {}),
    ("adamw", dict(lr=0.01, weight_decay=0.1), {}),
]


@pytest.mark.parametrize("name,kw,_", OPTIM_CASES)
def test_optimizers_match_torch(name, kw, _):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((3, 4))
    grads = [rng.standard_normal((3, 4)) for _ in range(5)]
    ours = _run_optimizer(nn.make_optimizer({"name": name, **kw}), w0, grads)
    p = torch.nn.Parameter(torch.tensor(w0))
    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]
    topt = cls([p], **kw)
    for g in grads:
        p.grad = torch.tensor(g)
        topt.step()
    np.testing.assert_allclose(ours, p.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_optimizer_state_round_trip():
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((3, 4))
    grads = [rng.standard_normal((3, 4)) for _ in range(4)]
    straight = _run_optimizer(nn.Adam(0.01), w0, grads)
    opt = nn.Adam(0.01)
    half = _run_optimizer(opt, w0, grads[:2])
    opt2 = nn.make_optimizer(opt.config())
    opt2.load_state_dict(opt.state_dict())
    assert opt2.t == 2
    resumed = _run_optimizer(opt2, half, grads[2:])
    np.testing.assert_array_equal(resumed, straight)
    with pytest.raises(ValueError, match="unknown"):
        nn.make_optimizer({"name": "rmsprop"})
    with pytest.raises(ValueError, match="lr"):
        nn.SGD(lr=0)
    with pytest.raises(ValueError, match="nesterov"):
        nn.SGD(lr=0.1, nesterov=True)


def test_optimizer_needs_gradients():
    model = _one_param_model(np.ones((2, 2)))
    with pytest.raises(RuntimeError, match="backward"):
        nn.SGD(0.1).step(model)


def test_schedules():
    step = nn.StepLR(1.0, step_size=2, gamma=0.5)
    assert [step(e) for e in (0, 1.9, 2.0, 4.5)] == [1.0, 1.0, 0.5, 0.25]
    cos = nn.CosineLR(1.0, epochs=4, min_lr=0.1)
    assert cos(0) == pytest.approx(1.0) and cos(4) == pytest.approx(0.1)
    assert cos(2) == pytest.approx(0.55)
    assert cos(1) > cos(1.5) > cos(3)
    for s in (step, cos, nn.Schedule(0.3)):
        again = nn.make_schedule(s.config())
        assert [again(e) for e in (0, 1.3, 3.7)] == [s(e) for e in (0, 1.3, 3.7)]


@pytest.mark.parametrize("name", sorted(INITIALIZERS))
def test_initializers_statistics_and_seeding(name):
    shape = (64, 32, 3, 3)
    fan_in, fan_out = fans(shape)
    assert (fan_in, fan_out) == (288, 576)
    f = nn.get_initializer(name)
    a = f(shape, fan_in, fan_out, np.random.default_rng(5), np.float32)
    b = f(shape, fan_in, fan_out, np.random.default_rng(5), np.float32)
    assert a.dtype == np.float32 and a.shape == shape
    np.testing.assert_array_equal(a, b)
    expected_std = {
        "zeros": 0.0, "ones": 0.0, "random_normal": 0.05, "truncated_normal": 0.05 * 0.8796,
        "random_uniform": 0.05 / math.sqrt(3), "lecun_uniform": math.sqrt(1 / fan_in),
        "lecun_normal": math.sqrt(1 / fan_in), "glorot_uniform": math.sqrt(2 / (fan_in + fan_out)),
        "glorot_normal": math.sqrt(2 / (fan_in + fan_out)), "he_uniform": math.sqrt(2 / fan_in),
        "he_normal": math.sqrt(2 / fan_in)}[name]
    assert a.std() == pytest.approx(expected_std, rel=0.03, abs=1e-12)
    if name == "ones":
        assert (a == 1).all()
    if name.endswith("normal") and name != "random_normal":
        assert np.abs(a).max() <= 2 * expected_std / 0.8796 * 1.0001  # truncated at 2 std
    if name.endswith("uniform"):
        assert np.abs(a).max() <= expected_std * math.sqrt(3) * 1.0001


def test_unknown_initializer():
    with pytest.raises(ValueError, match="glorot_uniform"):
        nn.get_initializer("xavier")


def test_model_initialization_is_seeded():
    def make(seed):
        return nn.Sequential([nn.Conv2d(2, 3), nn.Flatten(), nn.Dense(3)],
                             input_shape=(1, 5, 5), seed=seed)
    a, b, c = make(1), make(1), make(2)
    for la, lb, lc in zip(a.layers, b.layers, c.layers):
        for k in la.params:
            np.testing.assert_array_equal(la.params[k], lb.params[k])
            if k == "weight":
                assert not np.array_equal(la.params[k], lc.params[k])
