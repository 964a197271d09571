"""Grad-CAM (against torch autograd, and on a trained model), feature maps, and the
pictures written by ``cnnfast.viz`` / ``cnnfast visualize``."""

import json
import os

import numpy as np
import pytest

from cnnfast.nn.base import to_numpy
from cnnfast.nn.checkpoint import save_checkpoint
from cnnfast.nn.data import load_fashion_mnist, to_float
from cnnfast.nn.encdec import autoencoder, unet
from cnnfast.nn.layers import (BatchNorm, Conv2d, Dense, Dropout, Flatten, MaxPool2d, ReLU)
from cnnfast.nn.losses import softmax_cross_entropy
from cnnfast.nn.model import Sequential
from cnnfast.nn.optim import Adam
from cnnfast.viz import conv_layers, feature_maps, grad_cam, heat_inside_outside

SLICE = os.path.join(os.path.dirname(__file__), "data", "fashion-mnist-slice")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _classifier(seed=0, extra=(), dtype="float32"):
    return Sequential([Conv2d(4, 3, padding=1), ReLU(), MaxPool2d(2),
                       Conv2d(6, 3), ReLU(), *extra, Flatten(), Dense(5)],
                      input_shape=(1, 12, 12), seed=seed, dtype=dtype, backend="numpy")


def test_grad_cam_matches_torch_autograd():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    model = _classifier(dtype="float64")
    x = np.random.default_rng(0).random((3, 1, 12, 12))
    heat, classes, logits = grad_cam(model, x)

    p = {k: torch.tensor(to_numpy(v)) for k, v in model.state_dict().items()}
    tx = torch.tensor(x)
    a = F.conv2d(F.max_pool2d(F.relu(F.conv2d(tx, p["param/conv2d.weight"],
                                              p["param/conv2d.bias"], padding=1)), 2),
                 p["param/conv2d_1.weight"], p["param/conv2d_1.bias"]).requires_grad_()
    out = F.linear(F.relu(a).flatten(1), p["param/dense.weight"], p["param/dense.bias"])
    np.testing.assert_allclose(logits, out.detach().numpy(), rtol=1e-10, atol=1e-12)
    cls = out.argmax(1)
    np.testing.assert_array_equal(classes, cls.numpy())
    out[torch.arange(3), cls].sum().backward()
    cam = F.relu((a.grad.mean(dim=(2, 3), keepdim=True) * a).sum(1, keepdim=True))
    cam = F.interpolate(cam.detach(), size=(12, 12), mode="bilinear", align_corners=False)[:, 0]
    cam = cam / cam.amax(dim=(1, 2), keepdim=True)
    np.testing.assert_allclose(heat, cam.numpy(), rtol=1e-9, atol=1e-12)


def test_grad_cam_shape_range_class_choice_and_no_side_effects():
    model = _classifier(extra=(BatchNorm(), Dropout(0.5)))
    bn = model.get_layer("batch_norm")
    bn.buffers["running_mean"] += 0.1
    before = {k: v.copy() for k, v in model.state_dict().items()}
    model.freeze(["conv2d"])
    x = np.random.default_rng(1).random((4, 1, 12, 12)).astype(np.float32)
    heat, classes, logits = grad_cam(model, x)
    assert heat.shape == (4, 12, 12) and heat.dtype == np.float64
    assert heat.min() >= 0 and heat.max() <= 1
    for h in heat:
        assert h.max() == 0 or h.max() == pytest.approx(1.0)
    np.testing.assert_allclose(logits, to_numpy(model.forward(x)), rtol=1e-5, atol=1e-6)
    again, _, _ = grad_cam(model, x)  # dropout off, BatchNorm on running statistics
    np.testing.assert_array_equal(again, heat)
    other, c2, _ = grad_cam(model, x, class_index=[0, 1, 2, 3])
    assert list(c2) == [0, 1, 2, 3]
    assert not np.allclose(other, heat)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    assert [l.trainable for l in model.layers] == [False] + [True] * (len(model.layers) - 1)
    assert model.get_layer("dropout").rate == 0.5
    assert all(l._cache is None and not l.grads for l in model.layers)
    with pytest.raises(ValueError, match="class_index"):
        grad_cam(model, x, class_index=7)
    with pytest.raises(ValueError, match="classifier"):
        grad_cam(autoencoder((1, 8, 8), channels=(2,), seed=0), np.zeros((1, 1, 8, 8),
                                                                          np.float32))


def test_feature_maps_of_every_conv_including_nested():
    model = unet((1, 8, 8), base_channels=2, depth=1, seed=0, backend="numpy")
    x = np.random.default_rng(2).random((2, 1, 8, 8)).astype(np.float32)
    maps = feature_maps(model, x)
    convs = conv_layers(model)
    assert len(convs) == len(maps) == 5
    assert list(maps) == ["conv2d", "skip.conv2d", "skip.conv_transpose2d", "conv2d_1",
                          "conv2d_2"]
    assert maps["conv2d"].shape == (2, 2, 8, 8)
    assert maps["skip.conv2d"].shape == (2, 4, 4, 4)
    assert all("forward" not in c.__dict__ for c in convs)  # the hooks are gone
    np.testing.assert_array_equal(model.forward(x), model.forward(x))


@pytest.fixture(scope="module")
def fashion_slice():
    if not os.path.isdir(SLICE):
        pytest.skip(f"the Fashion-MNIST test slice {SLICE} is missing")
    return load_fashion_mnist("train", SLICE), load_fashion_mnist("test", SLICE)


@pytest.fixture(scope="module")
def trained_cnn(fashion_slice):
    """A small CNN trained for 100 steps (about 6 epochs) on the 512-image slice;
    its last convolution works at 14x14, so the heatmaps have some detail."""
    (x, y), _ = fashion_slice
    model = Sequential([Conv2d(8, 3, padding="same"), ReLU(), MaxPool2d(2),
                        Conv2d(16, 3, padding="same"), ReLU(), Flatten(), Dense(10)],
                       input_shape=(1, 28, 28), seed=0, backend="numpy")
    opt = Adam(2e-3)
    rng = np.random.default_rng(0)
    history = []
    for step in range(100):
        idx = rng.choice(len(x), 32, replace=False)
        loss, grad = softmax_cross_entropy(model.forward(to_float(x[idx]), training=True),
                                           y[idx])
        model.backward(grad)
        opt.step(model)
        if step % 25 == 24:
            history.append({"epoch": len(history) + 1, "train_loss": loss})
    return model, opt, history


def test_grad_cam_heat_lies_on_the_garment(fashion_slice, trained_cnn):
    """Averaged over test images, the heatmap is hotter on the garment's pixels
    (> 0.1) than on the empty background. (An untrained network passes this too:
    its maps follow the image intensity; the torch comparison above is what pins
    the computation down.)"""
    model, _, _ = trained_cnn
    _, (tx, ty) = fashion_slice
    imgs = to_float(tx[:64])
    acc = float((to_numpy(model.forward(to_float(tx))).argmax(1) == ty).mean())
    assert acc > 0.6, acc  # the model did learn something
    heat, _, _ = grad_cam(model, imgs)
    inside, outside = heat_inside_outside(heat, imgs[:, 0], threshold=0.1)
    mask = imgs[:, 0] > 0.1
    assert inside[0] == pytest.approx(heat[0][mask[0]].mean())
    assert inside.mean() > 1.5 * outside.mean(), (inside.mean(), outside.mean())
    assert (inside > outside).mean() > 0.6


# ----------------------------------------------------------------------------- pictures


def _check_pngs(paths, directory):
    for p in paths:
        with open(p, "rb") as f:
            assert f.read(8) == PNG_MAGIC, p
        assert os.path.getsize(p) < 400_000, p
    assert not [f for f in os.listdir(directory) if f.startswith(".tmp-")]


def test_require_matplotlib_message(monkeypatch):
    import sys

    from cnnfast import viz

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"cnnfast\[viz\]"):
        viz.require_matplotlib()


def test_visualize_classifier_pictures(tmp_path):
    pytest.importorskip("matplotlib")
    from cnnfast.viz import visualize

    model = _classifier()
    rng = np.random.default_rng(3)
    images = (rng.random((20, 1, 12, 12)) * 255).astype(np.uint8)
    labels = rng.integers(0, 5, 20)
    history = [{"epoch": 1, "train_loss": 1.0, "test_loss": 1.1, "train_acc": 0.5,
                "test_acc": 0.4}, {"epoch": 2, "train_loss": 0.7, "test_loss": 0.9,
                                   "train_acc": 0.6, "test_acc": 0.55}]
    paths = visualize(model, images, tmp_path, labels=labels, image_index=2, history=history,
                      cam_images=4, log=lambda *a: None)
    names = sorted(os.path.basename(p) for p in paths)
    assert names == ["confusion.png", "curves.png", "features_00_conv2d.png",
                     "features_01_conv2d_1.png", "filters.png", "gradcam.png"]
    _check_pngs(paths, tmp_path)
    with pytest.raises(ValueError, match="image index"):
        visualize(model, images, tmp_path, image_index=20)


def test_visualize_denoiser_pictures(tmp_path):
    pytest.importorskip("matplotlib")
    from cnnfast.viz import visualize

    model = unet((1, 8, 8), base_channels=2, depth=1, seed=0, backend="numpy")
    images = np.random.default_rng(4).random((10, 1, 8, 8)).astype(np.float32)
    notes = []
    paths = visualize(model, images, tmp_path, denoise_images=4, log=notes.append)
    names = {os.path.basename(p) for p in paths}
    assert "denoising.png" in names and "gradcam.png" not in names
    assert sum(n.startswith("features_") for n in names) == 5
    assert notes and "curves.png skipped" in notes[0]
    _check_pngs(paths, tmp_path)


def test_visualize_command(tmp_path, fashion_slice, trained_cnn):
    pytest.importorskip("matplotlib")
    from cnnfast.cli import main

    model, opt, history = trained_cnn
    run_dir = tmp_path / "run"
    ckpt = save_checkpoint(run_dir / "checkpoint.npz", model, opt)
    with open(run_dir / "metrics.jsonl", "w") as f:
        for m in history:
            f.write(json.dumps(m) + "\n")
    out = tmp_path / "pics"
    rc = main(["visualize", str(ckpt), "--out", str(out), "--data", SLICE, "--limit", "64",
               "--image", "5", "--class", "3", "--backend", "numpy"])
    assert rc == 0
    names = sorted(os.listdir(out))
    assert names == ["confusion.png", "curves.png", "features_00_conv2d.png",
                     "features_01_conv2d_1.png", "filters.png", "gradcam.png"]
    _check_pngs([out / n for n in names], out)
    assert main(["visualize", str(ckpt), "--out", str(out), "--data", SLICE,
                 "--class", "10"]) == 2
    assert main(["visualize", str(tmp_path / "nope.npz"), "--out", str(out)]) == 2


def test_plot_curves_panels(tmp_path):
    pytest.importorskip("matplotlib")
    from cnnfast.viz import plot_curves, read_metrics

    path = tmp_path / "m.jsonl"
    path.write_text('{"epoch": 1, "train_loss": 0.03, "psnr_noisy": 12.8, "psnr_denoised": 18.1}'
                    '\n\n{"epoch": 2, "train_loss": 0.01, "psnr_noisy": 12.8, '
                    '"psnr_denoised": 19.0}\n')
    history = read_metrics(path)
    assert len(history) == 2
    out = plot_curves(history, tmp_path / "curves.png")
    _check_pngs([out], tmp_path)
    with pytest.raises(ValueError, match="no known metric"):
        plot_curves([{"epoch": 1, "foo": 1}], tmp_path / "x.png")
    with pytest.raises(ValueError, match="no metrics"):
        plot_curves([], tmp_path / "x.png")


def test_visualize_dense_classifier_and_bad_metrics(tmp_path, capsys):
    """A dense classifier (``cnnfast train --model dense``) has no convolution for
    Grad-CAM: the other pictures are still drawn. A corrupt --metrics file is one
    line naming the file and line, exit 2."""
    pytest.importorskip("matplotlib")
    from cnnfast.cli import main
    from cnnfast.nn.training import dense_model

    ckpt = save_checkpoint(tmp_path / "dense.npz", dense_model(seed=0))
    out = tmp_path / "pics"
    assert main(["visualize", str(ckpt), "--out", str(out), "--data", SLICE, "--limit",
                 "16", "--backend", "numpy"]) == 0
    captured = capsys.readouterr()  # the paths on stdout, the messages on stderr
    assert "gradcam.png skipped" in captured.err
    assert "skipped" not in captured.out
    assert sorted(os.listdir(out)) == ["confusion.png"]
    (tmp_path / "m.jsonl").write_text('{"epoch": 1}\n[1, 2]\n')
    assert main(["visualize", str(ckpt), "--out", str(out), "--data", SLICE,
                 "--metrics", str(tmp_path / "m.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "m.jsonl, line 2: not a JSON object" in err
