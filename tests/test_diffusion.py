"""The diffusion pieces (cnnfast.nn.diffusion): noise schedules, the forward noising,
DDPM and DDIM reverse steps against their closed forms, sampling with an exact noise
predictor, the sinusoidal timestep embedding against its formula and finite
differences; the conditioned U-Net noise predictor (its ConditionShift layer and the
whole network's parameter gradients against float64 finite differences), a short
training run with its checkpoint round trip and exact resume, and the CLI
(`cnnfast train --model diffusion`, `cnnfast sample`) with its user errors."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from cnnfast import nn
from cnnfast.nn import diffusion as D
from helpers.cli import cli_fails as _fails, read_png as _read_png


def test_linear_schedule_spans_ho_et_al_range_scaled_by_the_step_count():
    s = D.NoiseSchedule(1000, "linear")
    assert s.betas[0] == pytest.approx(1e-4) and s.betas[-1] == pytest.approx(0.02)
    s100 = D.NoiseSchedule(100, "linear")
    assert s100.betas[0] == pytest.approx(1e-3) and s100.betas[-1] == pytest.approx(0.2)
    # fewer, larger steps noise about as much: alpha_bar_T is tiny either way
    assert s.alpha_bars[-1] < 1e-4 and s100.alpha_bars[-1] < 1e-4
    np.testing.assert_allclose(s.alpha_bars, np.cumprod(1 - s.betas), rtol=1e-15)


def test_cosine_schedule_matches_its_alpha_bar_formula():
    T, s = 50, 0.008
    sched = D.NoiseSchedule(T, "cosine")

    def f(t):
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    expected = [min(1 - f(t + 1) / f(t), 0.999) for t in range(T)]
    np.testing.assert_allclose(sched.betas, expected, rtol=1e-12)
    assert sched.betas.max() <= 0.999 and sched.betas.min() > 0
    # without the clip, alpha_bar_t would be f(t + 1) / f(0)
    np.testing.assert_allclose(sched.alpha_bars[:-1], [f(t + 1) / f(0) for t in range(T - 1)],
                               rtol=1e-10)


def test_schedule_rejects_bad_arguments():
    for steps in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="steps"):
            D.NoiseSchedule(steps)
    with pytest.raises(ValueError, match="kind"):
        D.NoiseSchedule(10, "quadratic")
    s = D.NoiseSchedule(10)
    x = np.zeros((2, 1, 2, 2))
    with pytest.raises(ValueError, match=r"t must be integer timesteps"):
        s.q_sample(x, np.array([0, 10]), x)
    with pytest.raises(ValueError, match="must agree"):
        s.q_sample(x, np.array([0]), x)


def _setup(seed=0, t=None, T=20, kind="linear"):
    sched = D.NoiseSchedule(T, kind)
    rng = np.random.default_rng(seed)
    x0 = rng.standard_normal((3, 1, 4, 4))
    eps = rng.standard_normal(x0.shape)
    tt = np.array([t, t, t]) if t is not None else np.array([0, 7, T - 1])
    return sched, x0, eps, tt


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_q_sample_is_the_closed_form_and_keeps_its_inputs(dtype):
    sched, x0, eps, t = _setup()
    x0, eps = x0.astype(dtype), eps.astype(dtype)
    before = (x0.copy(), eps.copy())
    xt = sched.q_sample(x0, t, eps)
    assert xt.dtype == dtype
    for i, ti in enumerate(t):
        a = sched.alpha_bars[ti]
        np.testing.assert_allclose(xt[i], math.sqrt(a) * x0[i] + math.sqrt(1 - a) * eps[i],
                                   rtol=1e-6 if dtype == np.float32 else 1e-14)
    np.testing.assert_array_equal(x0, before[0])
    np.testing.assert_array_equal(eps, before[1])


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("t", [1, 5, 19])
def test_ddpm_step_with_the_true_noise_is_the_posterior_mean(kind, t):
    sched, x0, eps, tt = _setup(t=t, kind=kind)
    xt = sched.q_sample(x0, tt, eps)
    z = np.random.default_rng(9).standard_normal(x0.shape)
    beta, abar, abar_prev = sched.betas[t], sched.alpha_bars[t], sched.alpha_bars[t - 1]
    mean = (math.sqrt(abar_prev) * beta / (1 - abar) * x0
            + math.sqrt(1 - beta) * (1 - abar_prev) / (1 - abar) * xt)
    var = beta * (1 - abar_prev) / (1 - abar)
    np.testing.assert_allclose(D.ddpm_step(sched, xt, t, eps, z),
                               mean + math.sqrt(var) * z, rtol=1e-10, atol=1e-12)


def test_ddpm_step_at_zero_returns_the_clean_image():
    sched, x0, eps, tt = _setup(t=0)
    xt = sched.q_sample(x0, tt, eps)
    np.testing.assert_allclose(D.ddpm_step(sched, xt, 0, eps), x0, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="needs noise"):
        D.ddpm_step(sched, xt, 3, eps)


@pytest.mark.parametrize("t, t_prev", [(19, 10), (5, 4), (7, -1)])
def test_ddim_step_with_the_true_noise_lands_on_the_same_trajectory(t, t_prev):
    sched, x0, eps, tt = _setup(t=t)
    xt = sched.q_sample(x0, tt, eps)
    out = D.ddim_step(sched, xt, t, t_prev, eps, eta=0.0)
    expected = x0 if t_prev < 0 else sched.q_sample(x0, np.full(3, t_prev), eps)
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="t_prev"):
        D.ddim_step(sched, xt, t, t, eps)


def test_ddim_with_eta_one_has_ddpm_variance():
    sched, x0, eps, tt = _setup(t=9)
    xt = sched.q_sample(x0, tt, eps)
    z = np.random.default_rng(4).standard_normal(x0.shape)
    # eta = 1 and consecutive steps: the same distribution as DDPM, here the same
    # noise scale (sigma^2 = beta~_t) and mean
    a, ap = sched.alpha_bars[9], sched.alpha_bars[8]
    sigma = math.sqrt((1 - ap) / (1 - a) * (1 - a / ap))
    assert sigma ** 2 == pytest.approx(sched.betas[9] * (1 - ap) / (1 - a), rel=1e-12)
    np.testing.assert_allclose(D.ddim_step(sched, xt, 9, 8, eps, 1.0, z),
                               D.ddpm_step(sched, xt, 9, eps, z), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("method, steps", [("ddpm", None), ("ddim", 20), ("ddim", 5)])
def test_sampling_with_an_exact_noise_predictor_recovers_a_single_point(method, steps):
    """For data that is one image x*, the exact noise predictor is
    (x - sqrt(a_t) x*) / sqrt(1 - a_t); every sampler must end on x*."""
    sched = D.NoiseSchedule(20, "cosine")
    target = np.random.default_rng(1).uniform(-1, 1, (1, 1, 4, 4))
    calls = []

    def eps_model(x, t, labels):
        calls.append(labels)
        a = sched.alpha_bars[t].reshape(-1, 1, 1, 1)
        return (x - np.sqrt(a) * target) / np.sqrt(1 - a)

    out = D.sample(eps_model, sched, (2, 1, 4, 4), np.random.default_rng(0), method=method,
                   steps=steps, dtype=np.float64, labels=np.array([1, 1]), guidance=0.5)
    np.testing.assert_allclose(out, np.broadcast_to(target, out.shape), atol=1e-9)
    # guidance: a conditional and an unconditional prediction per step
    n = 20 if steps is None else steps
    assert len(calls) == 2 * n and calls[1] is None and calls[0] is not None


def test_sample_rejects_bad_arguments():
    sched = D.NoiseSchedule(10)

    def model(x, t, labels):
        return x

    shape, rng = (1, 1, 2, 2), np.random.default_rng(0)
    with pytest.raises(ValueError, match="ddpm runs all 10"):
        D.sample(model, sched, shape, rng, steps=5)
    with pytest.raises(ValueError, match="method"):
        D.sample(model, sched, shape, rng, method="euler")
    with pytest.raises(ValueError, match="needs labels"):
        D.sample(model, sched, shape, rng, guidance=1.0)


def test_sinusoidal_embedding_formula_gradient_and_config():
    layer = D.SinusoidalEmbedding(6, max_period=100.0)
    t = np.array([[0.0], [3.0], [17.5]])
    y = layer.forward(t, training=True)
    f = 100.0 ** (-np.arange(3) / 3)
    # exp(-log(100) i / 3) and 100 ** (-i / 3) may differ in the last bit: the
    # argument t f then by ~17.5 ulp-scale, hence 1e-13
    np.testing.assert_allclose(y, np.concatenate([np.sin(t * f), np.cos(t * f)], 1),
                               rtol=1e-13, atol=1e-15)
    g = np.random.default_rng(0).standard_normal(y.shape)
    gt = layer.backward(g)
    h = 1e-6
    fd = ((layer.forward(t + h) - layer.forward(t - h)) / (2 * h) * g).sum(1, keepdims=True)
    np.testing.assert_allclose(gt, fd, rtol=1e-7, atol=1e-9)
    again = nn.layer_from_config(layer.full_config())
    assert again.config() == {"dim": 6, "max_period": 100.0}
    for bad in (3, 0, 2.0, True):
        with pytest.raises(ValueError, match="even int"):
            D.SinusoidalEmbedding(bad)
    with pytest.raises(ValueError, match=r"\(1,\)"):
        layer.output_shape((2,))


def test_sinusoidal_plus_dense_embedding_parameter_gradients_match_finite_differences():
    emb = nn.Sequential([D.SinusoidalEmbedding(8), nn.Dense(5), nn.ReLU(), nn.Dense(4)],
                        input_shape=(1,), dtype="float64", seed=0)
    t = np.array([[0.0], [4.0], [9.0], [31.0]])
    target = np.random.default_rng(1).standard_normal((4, 4))
    loss, grad = nn.mse(emb.forward(t, training=True), target)
    emb.backward(grad)
    for layer in emb.layers:
        for name, g in layer.grads.items():
            p = layer.params[name]
            for flat in range(0, p.size, max(1, p.size // 6)):
                idx = np.unravel_index(flat, p.shape)
                old = p[idx]
                p[idx] = old + 1e-6
                a = nn.mse(emb.forward(t), target)[0]
                p[idx] = old - 1e-6
                b = nn.mse(emb.forward(t), target)[0]
                p[idx] = old
                assert g[idx] == pytest.approx((a - b) / 2e-6, rel=1e-5, abs=1e-10)


def test_module_examples():
    import doctest

    result = doctest.testmod(D, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# ----------------------------------------------------------------------------- the model


def _fd(f, arr, idx, h=1e-6):
    old = arr[idx]
    arr[idx] = old + h
    a = f()
    arr[idx] = old - h
    b = f()
    arr[idx] = old
    return (a - b) / (2 * h)


@pytest.mark.parametrize("shape", [(3, 4, 5), (3,), (2, 1, 1)])
def test_condition_shift_gradients_match_finite_differences(shape):
    rng = np.random.default_rng(0)
    layer = D.ConditionShift(4)
    layer.build(shape, rng, np.float64)
    layer.params["bias"][:] = rng.standard_normal(shape[0])
    x = rng.standard_normal((3,) + shape)
    c = rng.standard_normal((3, 4))
    target = rng.standard_normal(x.shape)
    x_copy, c_copy = x.copy(), c.copy()
    layer.set_condition(c)
    y = layer.forward(x, training=True)
    # the formula: one shift per sample and channel, the same at every position
    shift = c @ layer.params["weight"].T + layer.params["bias"]
    np.testing.assert_allclose(y, x + shift.reshape(shift.shape + (1,) * (x.ndim - 2)),
                               rtol=1e-15)
    loss, grad = nn.mse(y, target)
    gx = layer.backward(grad)
    np.testing.assert_array_equal(x, x_copy)
    np.testing.assert_array_equal(c, c_copy)

    def f():
        return nn.mse(layer.forward(x), target)[0]

    for name in ("weight", "bias"):
        p = layer.params[name]
        for flat in range(p.size):
            idx = np.unravel_index(flat, p.shape)
            assert layer.grads[name][idx] == pytest.approx(_fd(f, p, idx), rel=1e-6,
                                                            abs=1e-9), name
    for flat in range(0, x.size, max(1, x.size // 7)):
        idx = np.unravel_index(flat, x.shape)
        assert gx[idx] == pytest.approx(_fd(f, x, idx), rel=1e-6, abs=1e-9)


def test_condition_shift_errors_and_frozen_backward():
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="cond_dim"):
            D.ConditionShift(bad)
    layer = D.ConditionShift(2)
    layer.build((3, 2, 2), np.random.default_rng(0), np.float32)
    x = np.ones((4, 3, 2, 2), np.float32)
    with pytest.raises(RuntimeError, match="no condition"):
        layer.forward(x)
    for c in (np.zeros((3, 2), np.float32), np.zeros((4, 3), np.float32),
              np.zeros((4, 2), np.float64)):
        layer.set_condition(c)
        with pytest.raises(ValueError, match="condition"):
            layer.forward(x)
    layer.set_condition(np.ones((4, 2), np.float32))
    layer.trainable = False
    layer.forward(x, training=True)
    assert layer.backward(np.ones_like(x), need_input_grad=False) is None
    assert layer.grads == {}
    assert D.ConditionShift(5).param_shapes((7, 3, 3)) == {"weight": (7, 5), "bias": (7,)}


def _tiny(dtype="float64", seed=0, **kw):
    options = dict(image_shape=(1, 8, 8), classes=3, steps=10, base_channels=2, depth=2,
                   embed_dim=4)
    options.update(kw)
    return D.Diffusion.build(dtype=dtype, seed=seed, backend="numpy", **options)


def test_noise_unet_parameter_gradients_match_finite_differences():
    d = _tiny()
    rng = np.random.default_rng(1)
    # Zero biases put the pre-activations of ReLUs fed by all-zero inputs (a
    # ConvTranspose2d after a dead ReLU) exactly on the kink, where a central
    # difference gives half the one-sided slope: move them off it.
    for _, layer, name in d.net.trainable_params():
        if name.endswith("bias"):
            p = layer.params[name]
            p += 0.1 * rng.standard_normal(p.shape)
    x = rng.standard_normal((3, 1, 8, 8))
    t = np.array([0, 4, 9])
    labels = np.array([2, 3, 0])  # 3: the null class
    target = rng.standard_normal(x.shape)
    loss, grad = nn.mse(d.predict_noise(x, t, labels, training=True), target)
    d.net.backward(grad)
    keys = []
    for key, layer, name in d.net.trainable_params():
        p, g = layer.params[name], layer.grads[name]
        for flat in range(0, p.size, max(1, p.size // 4)):
            idx = np.unravel_index(flat, p.shape)
            fd = _fd(lambda: nn.mse(d.predict_noise(x, t, labels), target)[0], p, idx)
            assert g[idx] == pytest.approx(fd, rel=1e-5, abs=1e-10), key
        keys.append(key)
    # the nested blocks' conditioning layers were reached too
    assert sum("condition_shift" in k and "weight" in k for k in keys) == 5


def test_condition_vector_null_class_and_bad_labels():
    d = _tiny("float32")
    c = d.condition(np.array([0, 5]), None)
    assert c.shape == (2, d.cond_dim) == (2, 4 + 3 + 1) and c.dtype == np.float32
    np.testing.assert_array_equal(c[:, 4:], [[0, 0, 0, 1], [0, 0, 0, 1]])
    np.testing.assert_allclose(c[:, :4], D.SinusoidalEmbedding(4).forward(
        np.array([[0.0], [5.0]], np.float32)))
    np.testing.assert_array_equal(d.condition(np.array([1]), np.array([2]))[0, 4:],
                                  [0, 0, 1, 0])
    with pytest.raises(ValueError, match="labels"):
        d.condition(np.array([1]), np.array([4]))
    with pytest.raises(ValueError, match="t must be"):
        d.condition(np.array([10]), None)
    with pytest.raises(ValueError, match="labels"):
        d.sample(np.array([3]), np.random.default_rng(0))  # the null class is no class
    with pytest.raises(ValueError, match="ConditionShift"):
        D.Diffusion(d.net, d.schedule, classes=4, embed_dim=4)
    with pytest.raises(ValueError, match="p_uncond"):
        D.Diffusion(d.net, d.schedule, classes=3, embed_dim=4, p_uncond=1.0)
    with pytest.raises(ValueError, match="image_shape"):
        D.noise_unet((1, 6, 6), 4, depth=2)


def test_guided_ddim_sampling_is_seeded_and_in_range():
    d = _tiny("float32")
    labels = np.array([0, 1, 2, 2])
    a = d.sample(labels, np.random.default_rng(3), steps=4, guidance=2.0, batch_size=3)
    b = d.sample(labels, np.random.default_rng(3), steps=4, guidance=2.0, batch_size=3)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (4, 1, 8, 8) and a.min() >= 0 and a.max() <= 1
    assert np.isfinite(d.sample(labels[:1], np.random.default_rng(0))).all()  # DDPM
    sampler = D.DiffusionSampler(d, steps=4, guidance=2.0)
    np.testing.assert_array_equal(sampler.sample(labels, np.random.default_rng(3)), a)


def _data(n, seed):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, 1, 8, 8)).astype(np.uint8),
            rng.integers(0, 3, n).astype(np.int64))


def test_training_run_saves_and_resumes_exactly(tmp_path):
    from cnnfast.nn.runs import fit

    train_x, train_y = _data(12, 0)
    test_x, test_y = _data(4, 1)

    def fresh():
        return D.new_run(seed=0, batch_size=4, dtype="float32", backend="numpy", steps=10,
                         noise_schedule="cosine", p_uncond=0.5, image_shape=(1, 8, 8),
                         classes=3, base_channels=2, embed_dim=4)

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    run = fresh()
    before = {k: v.copy() for k, v in run.model.state_dict().items()}
    assert fit(run, train_x, train_y, test_x, test_y, 2, str(a), progress=False) == "done"
    hist = run.trainer.history
    assert len(hist) == 2 and all(np.isfinite([m["train_loss"], m["test_loss"]]).all()
                                  for m in hist)
    assert any(not np.array_equal(before[k], v) for k, v in run.model.state_dict().items())
    fit(fresh(), train_x, train_y, test_x, test_y, 1, str(b), progress=False)
    resumed = D.DiffusionRun.load(b / "checkpoint.npz", backend="numpy")
    assert resumed.diffusion.config() == run.diffusion.config()
    assert resumed.trainer.epoch == 1
    fit(resumed, train_x, train_y, test_x, test_y, 2, str(b), progress=False)
    arrays_a, arrays_b = (nn.read_arrays(p / "checkpoint.npz") for p in (a, b))
    meta = arrays_a.pop("__meta__")
    arrays_b.pop("__meta__")
    assert meta["extra"]["task"] == "diffusion"
    assert meta["extra"]["diffusion"]["schedule"] == {"steps": 10, "kind": "cosine"}
    assert sorted(arrays_a) == sorted(arrays_b) and any("optim/" in k for k in arrays_a)
    for k in arrays_a:
        np.testing.assert_array_equal(arrays_a[k], arrays_b[k], err_msg=k)
    # the loaded model predicts what the trained one does
    loaded, _, _ = D.load_diffusion(a / "checkpoint.npz", backend="numpy")
    x = np.random.default_rng(2).standard_normal((2, 1, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(
        loaded.predict_noise(x, np.array([1, 9]), np.array([0, 3])),
        run.diffusion.predict_noise(x, np.array([1, 9]), np.array([0, 3])))


def test_load_diffusion_refuses_other_checkpoints(tmp_path):
    cls = nn.save_checkpoint(tmp_path / "cls.npz", nn.Sequential(
        [nn.Flatten(), nn.Dense(3)], input_shape=(1, 2, 2), seed=0))
    with pytest.raises(ValueError, match="not a diffusion model"):
        D.load_diffusion(cls)
    d = _tiny("float32")
    bad = nn.save_checkpoint(tmp_path / "bad.npz", d.net, None,
                             {"task": "diffusion", "diffusion": {"classes": 3}})
    with pytest.raises(ValueError, match="invalid diffusion configuration"):
        D.load_diffusion(bad)


# ----------------------------------------------------------------------------- the CLI

SLICE = os.path.join(os.path.dirname(__file__), "data", "fashion-mnist-slice")


def _main(argv):
    from cnnfast.cli import main

    return main(argv)


def _train(out, *extra, epochs=1):
    return _main(["train", "--model", "diffusion", "--data", SLICE, "--limit", "16",
                  "--test-limit", "8", "--epochs", str(epochs), "--batch-size", "8",
                  "--backend", "numpy", "--out", str(out), "--no-progress", *extra])


def test_cli_trains_resumes_exactly_and_samples(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    opts = ("--timesteps", "12", "--noise-schedule", "cosine", "--p-uncond", "0.2")
    assert _train(a, *opts) == 0
    out = capsys.readouterr().out
    assert 'Model: "noise_unet"' in out and "epoch 1/1: train loss" in out
    _fails(capsys, ["train", "--model", "diffusion", "--resume", "--out", str(a), "--data",
                    SLICE, "--limit", "16", "--timesteps", "20", "--epochs", "2"],
           "--timesteps 20 conflicts", "12")
    assert _train(a, "--resume", epochs=2) == 0
    assert "resuming from" in capsys.readouterr().out
    assert _train(b, *opts, epochs=2) == 0
    cnn = tmp_path / "cnn"
    assert _main(["train", "--data", SLICE, "--limit", "8", "--test-limit", "4", "--out",
                  str(cnn), "--no-progress", "--model", "dense"]) == 0
    _fails(capsys, ["train", "--resume", "--out", str(cnn), "--data", SLICE, "--limit", "8",
                    "--timesteps", "5"], "--timesteps applies to --model diffusion")
    arrays_a, arrays_b = (nn.read_arrays(p / "checkpoint.npz") for p in (a, b))
    assert arrays_a.pop("__meta__")["extra"]["diffusion"]["p_uncond"] == 0.2
    arrays_b.pop("__meta__")
    for k in arrays_a:
        np.testing.assert_array_equal(arrays_a[k], arrays_b[k], err_msg=k)

    ck, png = str(a / "checkpoint.npz"), tmp_path / "grid.png"
    assert _main(["sample", ck, "--n", "4", "--class", "7", "--steps", "3", "--guidance",
                  "1.5", "--seed", "5", "--out", str(png), "--backend", "numpy"]) == 0
    assert "DDIM, 3 steps, guidance 1.5" in capsys.readouterr().out
    d, _, _ = D.load_diffusion(ck, backend="numpy")
    expected = d.sample(np.full(4, 7), np.random.default_rng(5), steps=3, guidance=1.5)
    grid = _read_png(png)
    assert grid.shape == (2 * 29 - 1, 2 * 29 - 1)
    for i, (r, c) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        np.testing.assert_array_equal(grid[r * 29:r * 29 + 28, c * 29:c * 29 + 28],
                                      np.round(expected[i, 0] * 255))
    assert _main(["sample", ck, "--n", "10", "--steps", "12", "--out", str(png)]) == 0
    assert "DDPM, 12 steps" in capsys.readouterr().out
    assert _read_png(png).shape == (10 * 29 - 1, 28)  # a row per class

    _fails(capsys, ["sample", ck, "--out", str(png), "--steps", "13"], "--steps 13",
           "12 timesteps")
    _fails(capsys, ["sample", ck, "--out", str(png), "--steps", "0"], "argument --steps")
    _fails(capsys, ["sample", ck, "--out", str(png), "--guidance", "-1"],
           "argument --guidance")
    _fails(capsys, ["sample", ck, "--out", str(png), "--class", "10"], "--class 10")
    nock = str(nn.save_checkpoint(tmp_path / "p0.npz", d.net, None, {
        "task": "diffusion", "diffusion": {**d.config(), "p_uncond": 0.0}}))
    _fails(capsys, ["sample", nock, "--out", str(png), "--guidance", "2"], "--p-uncond 0")
    from cnnfast.nn import gan as G

    gan = G.DCGAN.build(z_dim=3, classes=3, image_shape=(1, 8, 8), g_channels=(2, 2),
                        d_channels=(2, 2))
    gck = str(G.save_gan(tmp_path / "gan.npz", gan, nn.Adam(), nn.Adam()))
    _fails(capsys, ["sample", gck, "--out", str(png), "--steps", "5"], "--steps",
           "diffusion checkpoints")
    _fails(capsys, ["sample", gck, "--out", str(png), "--guidance", "1"], "--guidance")
    # a classifier's commands refuse it
    _fails(capsys, ["evaluate", ck, "--data", SLICE], "diffusion model", "cnnfast sample")


def test_quality_script_takes_diffusion_checkpoints(tmp_path, capsys):
    """benchmarks/generative_quality.py on a tiny untrained diffusion model: the
    figures are those of evaluate_generator on the same sampler; a GAN refuses
    --steps."""
    import json
    import sys

    from cnnfast.nn import gan as G
    from cnnfast.nn import generative_quality as Q

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)),
                                    "benchmarks"))
    from generative_quality import main as quality_main

    d = D.Diffusion.build((1, 28, 28), steps=10, base_channels=2, depth=1, seed=0,
                          backend="numpy")
    ck = nn.save_checkpoint(tmp_path / "d.npz", d.net, None,
                            {"task": "diffusion", "diffusion": d.config()})
    judge = nn.Sequential([nn.Flatten(), nn.Dense(8), nn.ReLU(), nn.Dense(10)],
                          input_shape=(1, 28, 28), seed=0)
    nn.save_checkpoint(tmp_path / "cnn.npz", judge)
    argv = [str(ck), "--classifier", str(tmp_path / "cnn.npz"), "--data", SLICE,
            "--n", "20", "--backend", "numpy", "--steps", "3", "--guidance", "1.5"]
    assert quality_main(argv + ["--json", "-"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["model"], result["method"], result["steps"], result["guidance"]) == \
        ("diffusion", "DDIM", 3, 1.5)
    from cnnfast.nn.data import load_fashion_mnist

    test_x, _ = load_fashion_mnist("test", SLICE)
    direct = Q.evaluate_generator(D.DiffusionSampler(d, steps=3, guidance=1.5), judge,
                                  test_x, n=20)
    assert result["recognised"] == direct["recognised"]
    assert result["frechet"] == pytest.approx(direct["frechet"], rel=1e-12)
    assert quality_main(argv) == 0
    assert "DDIM, 3 steps, guidance 1.5" in capsys.readouterr().out
    gan = G.DCGAN.build(g_channels=(2, 2), d_channels=(2, 2), seed=0)
    gck = G.save_gan(tmp_path / "gan.npz", gan)
    with pytest.raises(SystemExit) as exc:
        quality_main([str(gck), "--classifier", str(tmp_path / "cnn.npz"), "--data", SLICE,
                      "--n", "20", "--steps", "3"])
    assert exc.value.code == 2 and "diffusion checkpoints" in capsys.readouterr().err


@pytest.mark.parametrize("argv, needle", [
    (["--model", "diffusion", "--noise", "0.2"], "--noise does not apply"),
    (["--model", "diffusion", "--freeze", "1"], "--freeze does not apply"),
    (["--model", "diffusion", "--device", "gpu", "--backend", "numpy"], "CPU"),
    (["--model", "cnn", "--timesteps", "10"], "--timesteps applies to --model diffusion"),
    (["--p-uncond", "0.3"], "--p-uncond applies"),
    (["--model", "diffusion", "--p-uncond", "1.5"], "argument --p-uncond"),
    (["--model", "diffusion", "--noise-schedule", "quad"], "argument --noise-schedule"),
])
def test_cli_train_diffusion_option_errors(argv, needle, tmp_path, capsys):
    _fails(capsys, ["train", "--data", SLICE, "--limit", "8", "--out",
                    str(tmp_path / "o"), "--no-progress", *argv], needle)
    assert not (tmp_path / "o" / "checkpoint.npz").exists()
