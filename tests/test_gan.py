"""The class-conditional DCGAN (cnnfast.nn.gan) and its quality measures
(cnnfast.nn.generative_quality): the loss with logits against torch, gradients of the
generator-through-discriminator path against finite differences in float64, a short
training run with its checkpoint round trip, `cnnfast sample` and its user errors."""

from __future__ import annotations

import os

import numpy as np
import pytest

from cnnfast import nn
from cnnfast.cli import main
from cnnfast.nn import gan as G
from cnnfast.nn import generative_quality as Q
from cnnfast.nn.losses import binary_cross_entropy_with_logits
from helpers.cli import cli_fails as _fails, read_png as _read_png

torch = pytest.importorskip("torch")

SLICE = os.path.join(os.path.dirname(__file__), "data", "fashion-mnist-slice")


def _tiny(dtype="float64", smoothing=0.0, seed=0):
    return G.DCGAN.build(z_dim=3, classes=3, image_shape=(1, 8, 8), g_channels=(3, 2),
                         d_channels=(2, 3), label_smoothing=smoothing, dtype=dtype,
                         seed=seed, backend="numpy")


def _batch(n=4, seed=1):
    rng = np.random.default_rng(seed)
    return (rng.uniform(-1, 1, (n, 1, 8, 8)), np.array([0, 1, 2, 1][:n]),
            rng.standard_normal((n, 3)))


# ----------------------------------------------------------------------------- the loss


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 2e-6)])
def test_bce_with_logits_matches_torch_including_huge_logits(dtype, tol):
    rng = np.random.default_rng(0)
    logits = np.concatenate([rng.standard_normal(40) * 6,
                             [0.0, -0.0, 1e4, -1e4, 88.0, -88.0, 30.0, -30.0]]).astype(dtype)
    targets = np.concatenate([rng.uniform(0, 1, 40), [1, 0, 1, 0, 0, 1, 0.9, 0.1]])
    targets = targets.astype(dtype)
    before = logits.copy()
    loss, grad = binary_cross_entropy_with_logits(logits.reshape(8, 6), targets.reshape(8, 6))
    np.testing.assert_array_equal(logits, before)  # the input is not modified
    tl = torch.tensor(logits.astype(np.float64), requires_grad=True)
    ref = torch.nn.functional.binary_cross_entropy_with_logits(
        tl, torch.tensor(targets.astype(np.float64)))
    ref.backward()
    assert grad.dtype == dtype and grad.shape == (8, 6)
    assert np.isfinite(loss) and abs(loss - ref.item()) <= tol * max(1.0, abs(ref.item()))
    np.testing.assert_allclose(grad.reshape(-1), tl.grad.numpy(), rtol=tol, atol=tol / 48)


def test_bce_with_logits_direct_formula_and_errors():
    l, t = np.array([[2.0, -3.0]]), np.array([[1.0, 0.25]])
    direct = -(t * np.log(1 / (1 + np.exp(-l))) + (1 - t) * np.log(1 - 1 / (1 + np.exp(-l))))
    loss, grad = binary_cross_entropy_with_logits(l, t)
    assert loss == pytest.approx(direct.mean(), rel=1e-14)
    np.testing.assert_allclose(grad, (1 / (1 + np.exp(-l)) - t) / 2, rtol=1e-14)
    with pytest.raises(ValueError, match="do not match"):
        binary_cross_entropy_with_logits(np.zeros((2, 1)), np.zeros(2))


# ----------------------------------------------------------------------------- gradients


def _loss_of_generator(gan, z, labels):
    """The generator loss as a plain function of the weights (training-mode batch
    statistics; caches dropped: nothing is back-propagated)."""
    fake = gan.generator.forward(gan.generator_input(z, labels), training=True)
    loss, _ = gan.generator_loss(fake, labels)
    for layer in gan.generator.layers:
        layer._cache = None
    return loss


def _central(f, arr, idx, h=1e-6):
    old = arr[idx]
    arr[idx] = old + h
    a = f()
    arr[idx] = old - h
    b = f()
    arr[idx] = old
    return (a - b) / (2 * h)


def test_generator_parameter_gradients_through_the_discriminator_match_finite_differences():
    gan = _tiny()
    _, labels, z = _batch()
    d_before = gan.discriminator.state_dict()
    fake = gan.generator.forward(gan.generator_input(z, labels), training=True)
    loss, grad_fake = gan.generator_loss(fake, labels)
    gan.generator.backward(grad_fake)
    # the discriminator was frozen: no gradient left behind, flags restored
    assert all(not layer.grads for layer in gan.discriminator.layers)
    assert all(layer.trainable for layer in gan.discriminator.layers)
    rng = np.random.default_rng(2)
    checked = 0
    for layer in gan.generator.layers:
        for name, g in layer.grads.items():
            p = layer.params[name]
            assert g.shape == p.shape
            for flat in rng.choice(p.size, size=min(4, p.size), replace=False):
                idx = np.unravel_index(flat, p.shape)
                fd = _central(lambda: _loss_of_generator(gan, z, labels), p, idx)
                assert g[idx] == pytest.approx(fd, rel=1e-5, abs=1e-9), (layer.name, name)
                checked += 1
    assert checked >= 20
    after = gan.discriminator.state_dict()
    assert all(np.array_equal(d_before[k], after[k]) for k in d_before)


def test_discriminator_input_gradient_matches_finite_differences():
    gan = _tiny()
    real, labels, _ = _batch()
    x = gan.discriminator_input(real, labels)
    targets = np.array([[1.0], [0.0], [1.0], [0.3]])

    def loss_fn(y):
        return binary_cross_entropy_with_logits(y, targets)

    loss, _, gx = G.input_gradient(gan.discriminator, x, loss_fn)
    assert gx.shape == x.shape
    with pytest.raises(ValueError, match="batch normalisation"):
        G.input_gradient(gan.generator, np.zeros((2, 6)), loss_fn)
    assert loss == pytest.approx(loss_fn(gan.discriminator.forward(x))[0], rel=1e-14)
    for flat in np.random.default_rng(3).choice(x.size, size=40, replace=False):
        idx = np.unravel_index(flat, x.shape)
        fd = _central(lambda: loss_fn(gan.discriminator.forward(x))[0], x, idx)
        assert gx[idx] == pytest.approx(fd, rel=1e-5, abs=1e-10)


def test_discriminator_step_on_one_batch_equals_two_passes_summed():
    """Real and fake in one batch (no batch statistics in the discriminator) give the
    gradients of the two means summed, with the smoothed real target."""
    gan = _tiny(smoothing=0.1)
    real, labels, z = _batch()
    fake = gan.generator.forward(gan.generator_input(z, labels))
    loss, grad = gan.discriminator_loss(real, fake, labels)
    gan.discriminator.backward(grad)
    joint = {(l.name, k): v.copy() for l in gan.discriminator.layers
             for k, v in l.grads.items()}
    total, summed = 0.0, {}
    for images, target in ((real, 0.9), (fake, 0.0)):
        d = gan.discriminator
        logits = d.forward(gan.discriminator_input(images, labels), training=True)
        part, g = binary_cross_entropy_with_logits(logits, np.full(logits.shape, target))
        d.backward(g)
        total += part
        for l in d.layers:
            for k, v in l.grads.items():
                summed[(l.name, k)] = summed.get((l.name, k), 0) + v
    assert loss == pytest.approx(total, rel=1e-13)
    assert joint.keys() == summed.keys() and len(joint) == 6
    for key in joint:
        np.testing.assert_allclose(joint[key], summed[key], rtol=1e-12, atol=1e-15)


# ----------------------------------------------------------------------------- training


def test_train_step_updates_both_networks_with_finite_losses():
    gan = _tiny("float32")
    real, labels, z = (a.astype(np.float32) if a.dtype.kind == "f" else a for a in _batch())
    g0, d0 = gan.generator.state_dict(), gan.discriminator.state_dict()
    og, od = nn.Adam(1e-3, (0.5, 0.999)), nn.Adam(1e-3, (0.5, 0.999))
    losses = [G.train_step(gan, og, od, real, labels, z) for _ in range(3)]
    assert np.isfinite(losses).all()
    assert og.t == od.t == 3
    for before, model in ((g0, gan.generator), (d0, gan.discriminator)):
        after = model.state_dict()
        assert any(not np.array_equal(before[k], after[k]) for k in before if "param/" in k)


def test_dcgan_shapes_and_bad_arguments():
    gan = G.DCGAN.build(seed=0, g_channels=(8, 4), d_channels=(4, 8))
    assert gan.generator.input_shape == (74,) and gan.generator.output_shape == (1, 28, 28)
    assert gan.discriminator.input_shape == (11, 28, 28)
    x = gan.sample(np.arange(10), np.random.default_rng(0))
    assert x.shape == (10, 1, 28, 28) and x.dtype == np.float32
    assert 0 <= x.min() and x.max() <= 1
    with pytest.raises(ValueError, match="divisible by 4"):
        G.dcgan_generator(image_shape=(1, 30, 30))
    with pytest.raises(ValueError, match="two positive ints"):
        G.dcgan_discriminator(channels=(4,))
    with pytest.raises(ValueError, match="label_smoothing"):
        G.DCGAN.build(label_smoothing=1.0, g_channels=(2, 2), d_channels=(2, 2))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        gan.sample(np.array([10]), np.random.default_rng(0))
    with pytest.raises(ValueError, match="z_dim"):
        G.DCGAN(gan.generator, gan.discriminator, z_dim=63, classes=10)


def test_run_trains_saves_resumes_and_samples(tmp_path):
    """A few steps on tiny synthetic data through the training loop: finite losses,
    a checkpoint that loads both networks and optimizers back exactly, and a resumed
    epoch equal to an uninterrupted one."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (24, 1, 8, 8), dtype=np.uint8)
    labels = rng.integers(0, 3, 24)
    opts = dict(z_dim=3, classes=3, image_shape=(1, 8, 8), g_channels=(4, 2),
                d_channels=(2, 4))

    def fresh():
        return G.new_run(seed=5, batch_size=8, backend="numpy", **opts)

    run = fresh()
    m = run.trainer.train_epoch(images, labels, progress=False)
    assert np.isfinite([m["d_loss"], m["g_loss"]]).all() and m["epoch"] == 1
    res = run.trainer.evaluate(images[:6], labels[:6])
    assert 0 < res["d_real"] < 1 and 0 < res["d_fake"] < 1
    path = run.save(tmp_path / "ck.npz")
    # load_checkpoint sees the generator; load_gan both networks and optimizers
    generator, _, extra = nn.load_checkpoint(path)
    assert generator.name == "dcgan_generator" and extra["task"] == "gan"
    gan, og, od, _ = G.load_gan(path, backend="numpy")
    for a, b in ((run.gan.generator, gan.generator), (run.gan.discriminator,
                                                      gan.discriminator)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(np.array_equal(sa[k], sb[k]) for k in sa)
    assert og.t == od.t == 3 and od.betas == (0.5, 0.999)
    # sampling is reproducible from the seed
    s1 = gan.sample(np.array([0, 1, 2]), np.random.default_rng(9))
    s2 = run.gan.sample(np.array([0, 1, 2]), np.random.default_rng(9))
    np.testing.assert_array_equal(s1, s2)
    # resume: the second epoch equals an uninterrupted run's
    resumed = G.GanRun.load(path, backend="numpy")
    resumed.trainer.train_epoch(images, labels, progress=False)
    straight = fresh()
    for _ in range(2):
        straight.trainer.train_epoch(images, labels, progress=False)
    for a, b in ((resumed.gan.generator, straight.gan.generator),
                 (resumed.gan.discriminator, straight.gan.discriminator)):
        sa, sb = a.state_dict(), b.state_dict()
        assert all(np.array_equal(sa[k], sb[k]) for k in sa)


def test_load_gan_refuses_a_classifier_and_a_crafted_discriminator(tmp_path):
    model = nn.Sequential([nn.Flatten(), nn.Dense(3)], input_shape=(1, 2, 2), seed=0)
    path = nn.save_checkpoint(tmp_path / "cls.npz", model, nn.Adam())
    with pytest.raises(nn.CheckpointError, match="not a GAN"):
        G.load_gan(path)
    gan = _tiny("float32")
    good = G.save_gan(tmp_path / "gan.npz", gan, nn.Adam(), nn.Adam())
    arrays = nn.read_arrays(good)
    meta = arrays.pop("__meta__")
    meta["extra"]["discriminator"]["layers"][0]["config"]["out_channels"] = 10 ** 6
    import json
    arrays["__meta__"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "crafted.npz", **arrays)
    with pytest.raises(nn.CheckpointError, match="discriminator's arrays do not match"):
        G.load_gan(tmp_path / "crafted.npz")
    with pytest.raises(ValueError, match="the model's or optimizer's"):
        nn.save_checkpoint(tmp_path / "x.npz", model, arrays={"param/x": np.zeros(1)})


# ----------------------------------------------------------------------------- quality


def test_frechet_distance_against_the_direct_formula():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(0)
    a = rng.standard_normal((300, 5)) @ rng.standard_normal((5, 5))
    b = rng.standard_normal((200, 5)) * 2 + 1
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    direct = (np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(ca + cb)
              - 2 * np.trace(scipy_linalg.sqrtm(ca @ cb)).real)
    assert Q.frechet_distance(a, b) == pytest.approx(direct, rel=1e-9)
    assert Q.frechet_distance(b, a) == pytest.approx(direct, rel=1e-9)
    assert Q.frechet_distance(a, a) == pytest.approx(0, abs=1e-9)
    with pytest.raises(ValueError, match="same F"):
        Q.frechet_distance(a, b[:, :4])
    with pytest.raises(ValueError, match="NaN"):
        Q.frechet_distance(a, np.full_like(b, np.nan))


def test_recognisability_and_evaluate_generator():
    classifier = nn.Sequential([nn.Flatten(), nn.Dense(6), nn.ReLU(), nn.Dense(3)],
                               input_shape=(1, 8, 8), seed=0, backend="numpy")
    rng = np.random.default_rng(0)
    images = rng.random((30, 1, 8, 8)).astype(np.float32)
    predicted = classifier.predict(images).argmax(1)
    rec = Q.recognisability(classifier, images, predicted)
    assert rec["overall"] == 1.0
    wrong = Q.recognisability(classifier, images, (predicted + 1) % 3)
    assert wrong["overall"] == 0.0 and wrong["counts"] == np.bincount(
        (predicted + 1) % 3, minlength=3).tolist()
    feats = Q.penultimate_features(classifier, images, batch_size=7)
    assert feats.shape == (30, 6) and feats.dtype == np.float64 and feats.min() >= 0
    gan = _tiny("float32")
    test = rng.integers(0, 256, (40, 1, 8, 8), dtype=np.uint8)
    out = Q.evaluate_generator(gan, classifier, test, n=20, seed=0)
    assert 0 <= out["recognised"] <= 1 and len(out["per_class"]) == 3
    assert out["frechet"] > 0 and out["frechet_floor"] > 0
    assert out["name"] == Q.FRECHET_NAME and "FID" not in Q.FRECHET_NAME
    with pytest.raises(ValueError, match="2 n = 42"):
        Q.evaluate_generator(gan, classifier, test, n=21)
    with pytest.raises(ValueError, match="classes"):
        Q.evaluate_generator(G.DCGAN.build(z_dim=3, classes=4, image_shape=(1, 8, 8),
                                           g_channels=(2, 2), d_channels=(2, 2)),
                             classifier, test, n=20)


# ----------------------------------------------------------------------------- cnnfast sample


@pytest.fixture(scope="module")
def gan_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("gan") / "checkpoint.npz"
    G.save_gan(path, _tiny("float32"), nn.Adam(), nn.Adam())
    return path


def test_sample_writes_a_grid_with_a_row_per_class(gan_checkpoint, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["sample", str(gan_checkpoint), "--n", "7", "--out", str(out),
                 "--backend", "numpy", "--seed", "4"]) == 0
    assert "7 samples" in capsys.readouterr().out
    # the tiles are the GAN's samples, a row per class (3 classes, ceil(7 / 3) columns)
    gan, _, _, _ = G.load_gan(gan_checkpoint, backend="numpy")
    labels = np.repeat(np.arange(3), 3)[:7]
    samples = gan.sample(labels, np.random.default_rng(4))
    grid = _read_png(out)
    assert grid.shape == (3 * 9 - 1, 3 * 9 - 1)
    for i, (row, col) in enumerate([(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2),
                                    (2, 0)]):
        tile = grid[row * 9:row * 9 + 8, col * 9:col * 9 + 8]
        np.testing.assert_array_equal(tile, np.round(samples[i, 0] * 255))
    assert (grid[18:, 9:] == 255).all()  # class 2 has one sample: the rest is blank
    assert main(["sample", str(gan_checkpoint), "--n", "4", "--class", "2", "--out",
                 str(tmp_path / "c2.png")]) == 0
    assert _read_png(tmp_path / "c2.png").shape == (17, 17)


def test_sample_user_errors(gan_checkpoint, tmp_path, capsys):
    ck = str(gan_checkpoint)
    png = str(tmp_path / "g.png")
    _fails(capsys, ["sample", ck, "--out", png, "--class", "3"], "--class 3", "0..2")
    _fails(capsys, ["sample", ck, "--out", png, "--n", "0"], "argument --n")
    _fails(capsys, ["sample", ck, "--out", png, "--n", "20000"], "at most 10,000")
    _fails(capsys, ["sample", ck, "--out", str(tmp_path / "g.jpg")], ".png")
    _fails(capsys, ["sample", ck, "--out", str(tmp_path / "no" / "g.png")], "does not exist")
    _fails(capsys, ["sample", str(tmp_path / "none.npz"), "--out", png], "does not exist")
    cls = nn.save_checkpoint(tmp_path / "cls.npz", nn.Sequential(
        [nn.Flatten(), nn.Dense(3)], input_shape=(1, 2, 2), seed=0))
    _fails(capsys, ["sample", str(cls), "--out", png], "not a GAN")
    _fails(capsys, ["sample", ck, "--out", png, "--backend", "nope"], "--backend 'nope'")
    assert not os.path.exists(png)


# ----------------------------------------------------------------------------- cnnfast train


def _train_gan(out, *extra, epochs=1):
    return main(["train", "--model", "dcgan", "--data", SLICE, "--limit", "16",
                 "--test-limit", "8", "--epochs", str(epochs), "--batch-size", "8",
                 "--backend", "numpy", "--out", str(out), "--no-progress", *extra])


def test_cli_trains_resumes_exactly_and_samples(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert _train_gan(a) == 0
    stdout = capsys.readouterr().out
    assert 'Model: "dcgan_generator"' in stdout and 'Model: "dcgan_discriminator"' in stdout
    assert "'betas': [0.5, 0.999]" in stdout and "'lr': 0.0002" in stdout
    assert "epoch 1/1: D loss" in stdout and "D(fake)" in stdout
    assert _train_gan(a, "--resume", epochs=2) == 0
    assert "resuming from" in capsys.readouterr().out
    assert _train_gan(b, epochs=2) == 0
    arrays_a, arrays_b = (nn.read_arrays(p / "checkpoint.npz") for p in (a, b))
    meta = arrays_a.pop("__meta__")
    arrays_b.pop("__meta__")
    assert meta["extra"]["task"] == "gan" and len(meta["extra"]["trainer"]["history"]) == 2
    assert sorted(arrays_a) == sorted(arrays_b)
    assert any(k.startswith("discriminator/optim/") for k in arrays_a)
    for k in arrays_a:
        np.testing.assert_array_equal(arrays_a[k], arrays_b[k], err_msg=k)
    with open(a / "metrics.jsonl") as f:
        lines = f.read().splitlines()
    assert len(lines) == 2 and '"d_real"' in lines[1]
    # a classifier's commands refuse the GAN with a pointer to cnnfast sample
    _fails(capsys, ["evaluate", str(a / "checkpoint.npz"), "--data", SLICE], "cnnfast sample")


@pytest.mark.parametrize("extra, needle", [
    (["--optimizer", "sgd"], "Adam"),
    (["--weight-decay", "0.1"], "--weight-decay"),
    (["--noise", "0.2"], "--noise does not apply"),
    (["--freeze", "1"], "--freeze does not apply"),
    (["--device", "gpu", "--backend", "numpy"], "CPU"),
])
def test_cli_train_dcgan_refuses_options_it_does_not_take(extra, needle, tmp_path, capsys):
    _fails(capsys, ["train", "--model", "dcgan", "--data", SLICE, "--limit", "8",
                    "--out", str(tmp_path / "o"), "--no-progress", *extra], needle)
    assert not (tmp_path / "o" / "checkpoint.npz").exists()


def test_cli_resume_of_a_gan_checks_the_options(tmp_path, capsys):
    out = tmp_path / "g"
    G.save_gan(out / "checkpoint.npz", _tiny("float32"), nn.Adam(), nn.Adam())
    _fails(capsys, ["train", "--resume", "--out", str(out), "--data", SLICE],
           "--resume", "no usable GAN training state")
    assert _train_gan(out) == 0  # overwrites it with a real run
    _fails(capsys, ["train", "--resume", "--out", str(out), "--data", SLICE, "--lr", "0.1",
                    "--epochs", "2"], "--lr 0.1 conflicts", "0.0002")


@pytest.mark.parametrize("module", [G, Q])
def test_module_examples(module):
    import doctest

    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_reshape_layer_round_trip_and_errors():
    layer = nn.Reshape((2, 3, 4))
    layer.build((24,), np.random.default_rng(0), np.float64)
    x = np.arange(48.0).reshape(2, 24)
    y = layer.forward(x, training=True)
    np.testing.assert_array_equal(y, x.reshape(2, 2, 3, 4))
    np.testing.assert_array_equal(layer.backward(y * 2), x * 2)
    assert nn.layer_from_config(layer.full_config()).config() == {"shape": [2, 3, 4]}
    with pytest.raises(ValueError, match="cannot reshape"):
        layer.output_shape((25,))
    for bad in ((), (0, 2), (2.5,), "ab", (True,)):
        with pytest.raises(ValueError, match="positive ints"):
            nn.Reshape(bad)


def test_quality_script_on_the_shipped_slice(tmp_path, capsys):
    """benchmarks/generative_quality.py end to end on an untrained GAN and a tiny
    classifier (the figures are meaningless; the plumbing and names are checked)."""
    import json
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)),
                                    "benchmarks"))
    from generative_quality import main as quality_main

    gan = G.DCGAN.build(g_channels=(4, 2), d_channels=(2, 4), seed=0)
    G.save_gan(tmp_path / "gan.npz", gan)
    judge = nn.Sequential([nn.Flatten(), nn.Dense(8), nn.ReLU(), nn.Dense(10)],
                          input_shape=(1, 28, 28), seed=0)
    nn.save_checkpoint(tmp_path / "cnn.npz", judge)
    argv = [str(tmp_path / "gan.npz"), "--classifier", str(tmp_path / "cnn.npz"),
            "--data", SLICE, "--n", "40", "--backend", "numpy"]
    assert quality_main(argv + ["--json", "-"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 40 and len(result["per_class"]) == 10
    assert result["name"] == Q.FRECHET_NAME and result["frechet_floor"] > 0
    assert quality_main(argv) == 0
    text = capsys.readouterr().out
    assert "recognised:" in text and "real-vs-real floor" in text and "FID" not in text
