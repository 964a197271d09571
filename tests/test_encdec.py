"""Encoder-decoder builders, PSNR and the denoising training routine."""

import math

import numpy as np
import pytest

from cnnfast.augment import pipeline_from_spec
from cnnfast.nn.encdec import (add_noise, autoencoder, build_encdec, evaluate_denoiser,
                               is_encdec, psnr, train_denoiser, unet)
from cnnfast.nn.layers import ConvTranspose2d, MaxPool2d
from cnnfast.nn.model import Sequential
from cnnfast.nn.resample import SkipConcat, Upsample

BACKEND = "numpy"


def _shapes_dataset(n, size=16, seed=0):
    """Large bright rectangles on a dark background: easy to denoise."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 1, size, size), np.float32)
    for i in range(n):
        h, w = rng.integers(6, 12, 2)
        r, c = rng.integers(0, size - h), rng.integers(0, size - w)
        x[i, 0, r:r + h, c:c + w] = rng.uniform(0.5, 1.0)
    return x


def test_psnr():
    a = np.zeros((2, 1, 4, 4))
    b = a + 0.1
    assert psnr(a, b) == pytest.approx(20.0)
    assert psnr(a, b, data_range=255) == pytest.approx(20 * math.log10(2550))
    assert psnr(a, a) == math.inf
    with pytest.raises(ValueError, match="shapes"):
        psnr(a, b[:1])


def test_add_noise_seeded_and_clipped():
    x = np.full((4, 1, 8, 8), 0.5, np.float32)
    a = add_noise(x, 0.2, np.random.default_rng(0))
    np.testing.assert_array_equal(a, add_noise(x, 0.2, np.random.default_rng(0)))
    assert a.dtype == np.float32 and a.min() >= 0 and a.max() <= 1
    assert np.all(x == 0.5)


@pytest.mark.parametrize("down", ["stride", "maxpool"])
def test_autoencoder_shapes(down):
    m = autoencoder((1, 28, 28), channels=(4, 8), downsample=down, seed=0, backend=BACKEND)
    assert is_encdec(m) and m.output_shape == (1, 28, 28)
    assert sum(isinstance(layer, ConvTranspose2d) for layer in m.layers) == 2
    pools = sum(isinstance(layer, MaxPool2d) for layer in m.layers)
    assert pools == (2 if down == "maxpool" else 0)
    y = m.forward(np.random.default_rng(0).random((2, 1, 28, 28)).astype(np.float32))
    assert y.shape == (2, 1, 28, 28) and y.min() >= 0 and y.max() <= 1
    with pytest.raises(ValueError, match="divisible"):
        autoencoder((1, 30, 30), channels=(4, 8, 16))


@pytest.mark.parametrize("up", ["transpose", "bilinear", "nearest"])
def test_unet_shapes(up):
    m = unet((2, 16, 16), base_channels=4, depth=2, up=up, seed=0, backend=BACKEND)
    assert m.output_shape == (2, 16, 16)
    outer = [layer for layer in m.layers if isinstance(layer, SkipConcat)]
    assert len(outer) == 1
    assert any(isinstance(layer, SkipConcat) for layer in outer[0].layers)  # recursive
    assert any(isinstance(layer, Upsample) for layer in outer[0].layers) == (up != "transpose")
    m.forward(np.zeros((1, 2, 16, 16), np.float32))
    with pytest.raises(ValueError, match="up="):
        unet(up="cubic")


def test_build_encdec_by_name():
    assert build_encdec("unet", (1, 8, 8), base_channels=2, depth=1).name == "unet"
    assert build_encdec("autoencoder", (1, 8, 8), channels=(2,)).name == "autoencoder"
    with pytest.raises(ValueError, match="expected one of"):
        build_encdec("cnn")


def test_train_denoiser_rejects_classifier():
    from cnnfast.nn.layers import Flatten, Linear

    clf = Sequential([Flatten(), Linear(3)], input_shape=(1, 4, 4), seed=0)
    with pytest.raises(ValueError, match="image-to-image"):
        train_denoiser(clf, np.zeros((4, 1, 4, 4), np.float32))


@pytest.mark.parametrize("builder", ["autoencoder", "unet"])
def test_denoiser_learns(builder):
    """A short run must beat the noisy input's PSNR on held-out images, and the
    seed must make the run reproducible."""
    images = _shapes_dataset(600)
    kw = dict(channels=(8, 16)) if builder == "autoencoder" else dict(base_channels=6, depth=1)

    def run():
        model = build_encdec(builder, (1, 16, 16), seed=0, backend=BACKEND, **kw)
        steps = []
        res = train_denoiser(model, images, epochs=5, batch_size=32, lr=1e-2,
                             noise_std=0.3, seed=1, progress=lambda s, t, l: steps.append(l))
        return model, res, steps

    model, res, steps = run()
    assert res["test_images"] == 60 and res["train_images"] == 540
    assert res["steps"] == len(steps) == 5 * math.ceil(540 / 32)
    assert res["history"][-1] < res["history"][0]
    assert res["psnr_denoised"] > res["psnr_noisy"] + 2.5, res
    again = evaluate_denoiser(model, images[540:], 0.3, seed=2)
    assert again["psnr_denoised"] == pytest.approx(res["psnr_denoised"])
    if builder == "autoencoder":  # reproducibility (one builder is enough)
        _, res2, _ = run()
        assert res2["psnr_denoised"] == res["psnr_denoised"]


def test_train_denoiser_with_augment_and_uint8():
    images = (_shapes_dataset(64) * 255).astype(np.uint8)
    model = autoencoder((1, 16, 16), channels=(4,), seed=0, backend=BACKEND)
    res = train_denoiser(model, images[:, 0], epochs=1, batch_size=16, noise_std=0.2,
                         augment=pipeline_from_spec("flip,translate=1", seed=0),
                         test_images=images[:8])
    assert res["train_images"] == 64 and res["test_images"] == 8
    assert np.isfinite(res["psnr_denoised"])
