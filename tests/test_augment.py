"""Augmentation: each transform does what it says, seeds reproduce, inputs untouched."""

import json

import numpy as np
import pytest

from cnnfast import augment as A


def _batch(n=8, seed=0, c=1, h=16, w=16):
    """Blobs on an empty background (like Fashion-MNIST): values in [0, 1]."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, c, h, w), np.float32)
    for i in range(n):
        r, q = rng.integers(4, h - 4), rng.integers(4, w - 4)
        x[i, :, r - 2:r + 3, q - 1:q + 3] = rng.uniform(0.3, 1.0)
    return x


def _centroid(img):
    rows, cols = np.indices(img.shape)
    m = img.sum()
    return np.array([(rows * img).sum() / m, (cols * img).sum() / m])


def test_flip_twice_is_identity_and_mirrors():
    x = _batch()
    rng = np.random.default_rng(0)
    f = A.Flip(p=1.0)
    once = f(x, rng)
    np.testing.assert_array_equal(once, x[..., ::-1])
    np.testing.assert_array_equal(f(once, rng), x)
    np.testing.assert_array_equal(A.Flip(p=0.0)(x, rng), x)


def test_flip_probability():
    x = np.tile(np.arange(4, dtype=np.float32), (2000, 1, 1, 1))
    y = A.Flip(0.3)(x, np.random.default_rng(1))
    flipped = (y[:, 0, 0, 0] == 3).mean()
    assert 0.26 < flipped < 0.34


def test_translation_moves_centroid_by_the_shift():
    x = _batch(6)
    dy = np.array([0, 1, -2, 2, -1, 3])
    dx = np.array([2, -1, 0, 1, -3, 0])
    y = A.shift_images(x, dy, dx)
    for i in range(len(x)):
        np.testing.assert_allclose(_centroid(y[i, 0]) - _centroid(x[i, 0]), [dy[i], dx[i]],
                                   atol=1e-4)
        assert y[i].sum() == pytest.approx(x[i].sum())  # nothing fell off the edge


def test_random_translate_within_range():
    x = _batch(32)
    y = A.Translate(2)(x, np.random.default_rng(2))
    for i in range(len(x)):
        shift = _centroid(y[i, 0]) - _centroid(x[i, 0])
        assert np.all(np.abs(shift) <= 2 + 1e-4)
        np.testing.assert_allclose(shift, np.round(shift), atol=1e-4)


def test_rotation_by_zero_is_exact_and_90_degrees_moves_pixels():
    x = np.random.default_rng(3).random((3, 2, 9, 11)).astype(np.float32)
    np.testing.assert_array_equal(A.rotate(x, np.zeros(3)), x)
    img = np.zeros((1, 1, 11, 11), np.float32)
    img[0, 0, 5, 8] = 1.0  # right of the centre
    y = A.rotate(img, np.array([np.pi / 2]))
    assert y[0, 0, 2, 5] == pytest.approx(1.0, abs=1e-6)  # now above it
    assert y.sum() == pytest.approx(1.0, abs=1e-6)


def test_small_rotation_keeps_mass_and_centre():
    x = np.zeros((1, 1, 21, 21), np.float32)
    x[0, 0, 6:15, 8:13] = 1.0  # centred rectangle
    y = A.rotate(x, np.deg2rad([10.0]))
    assert y.sum() == pytest.approx(x.sum(), rel=0.02)
    np.testing.assert_allclose(_centroid(y[0, 0]), [10, 10], atol=0.05)
    assert not np.array_equal(y, x)


def test_zoom_scales_spread_about_centre():
    x = np.zeros((2, 1, 21, 21), np.float32)
    x[:, 0, 7:14, 7:14] = 1.0
    m = np.zeros((2, 2, 3))
    m[:, 0, 0] = m[:, 1, 1] = [1 / 1.2, 1.0]
    y = A.affine_warp(x, m)
    np.testing.assert_array_equal(y[1], x[1])  # scale 1: exact
    assert y[0].sum() == pytest.approx(x[0].sum() * 1.2 ** 2, rel=0.05)


def test_crop_with_padding_keeps_shape_and_is_a_shift():
    x = _batch(16, h=12, w=10)
    y = A.RandomCrop(3)(x, np.random.default_rng(4))
    assert y.shape == x.shape and y.dtype == x.dtype
    for i in range(len(x)):
        shift = _centroid(y[i, 0]) - _centroid(x[i, 0])
        assert np.all(np.abs(shift) <= 3 + 1e-4)


@pytest.mark.parametrize("std", [0.02, 0.1])
def test_noise_has_requested_std(std):
    x = np.full((64, 1, 28, 28), 0.5, np.float32)
    y = A.GaussianNoise(std)(x, np.random.default_rng(5))
    d = (y - x).astype(np.float64)
    assert abs(d.mean()) < 3 * std / np.sqrt(d.size) + 1e-6
    assert d.std() == pytest.approx(std, rel=0.02)


def test_intensity_transforms_clip_and_act_per_sample():
    x = _batch(8)
    y = A.Brightness(0.3)(x, np.random.default_rng(6))
    assert y.min() >= 0 and y.max() <= 1
    y = A.Brightness(0.3, clip=None)(x, np.random.default_rng(6))
    off = (y - x).reshape(8, -1)
    np.testing.assert_allclose(off, off[:, :1].repeat(off.shape[1], 1), atol=1e-6)
    assert np.all(np.abs(off) <= 0.3 + 1e-6)
    y = A.Contrast(0.5, clip=None)(x, np.random.default_rng(7))
    np.testing.assert_allclose(y.mean(axis=(1, 2, 3)), x.mean(axis=(1, 2, 3)), atol=1e-6)
    ratio = y.std(axis=(1, 2, 3)) / x.std(axis=(1, 2, 3))
    assert np.all((ratio >= 0.5 - 1e-5) & (ratio <= 1.5 + 1e-5))


def test_seed_reproduces_and_input_untouched():
    x = _batch(8)
    keep = x.copy()
    spec = "flip,rotate=15,translate=2,zoom=0.1,brightness=0.1,contrast=0.2,crop=2,noise=0.05"
    a = A.pipeline_from_spec(spec, seed=123)
    b = A.pipeline_from_spec(spec, seed=123)
    first = a(x)
    np.testing.assert_array_equal(first, b(x))
    np.testing.assert_array_equal(a(x), b(x))  # the sequences stay in step
    assert not np.array_equal(first, a(x))  # ... and move on
    a.reseed(123)
    np.testing.assert_array_equal(a(x), first)
    state = json.loads(json.dumps(a.get_state()))  # survives a checkpoint's JSON
    nxt = a(x)
    np.testing.assert_array_equal(b.set_state(state)(x), nxt)
    assert not np.array_equal(A.pipeline_from_spec(spec, seed=124)(x), first)
    np.testing.assert_array_equal(x, keep)
    assert first.dtype == x.dtype and first.shape == x.shape


def test_empty_pipeline_returns_copy():
    x = _batch(2)
    for spec in (None, "", "none"):
        p = A.pipeline_from_spec(spec)
        y = p(x)
        assert len(p) == 0 and y is not x
        np.testing.assert_array_equal(y, x)


def test_spec_parser():
    p = A.pipeline_from_spec(" flip=0.25, translate=3 ,noise=0.1", seed=0)
    assert [type(t) for t in p.transforms] == [A.Flip, A.Translate, A.GaussianNoise]
    assert p.transforms[0].p == 0.25 and p.transforms[1].max_shift == 3
    assert p.transforms[2].std == 0.1
    assert A.pipeline_from_spec(p.spec).spec == p.spec == "flip=0.25,translate=3,noise=0.1"
    for bad, msg in [("flop", "unknown transform"), ("noise=abc", "not a number"),
                     ("translate=1.5", "whole pixels"), ("flip,,noise", "empty"),
                     ("flip=2", "p="), ("noise=-1", "non-negative"), ("zoom=1", "< 1")]:
        with pytest.raises(ValueError, match=msg):
            A.pipeline_from_spec(bad)


def test_bad_batches():
    p = A.pipeline_from_spec("flip", seed=0)
    with pytest.raises(ValueError, match="N, C, H, W"):
        p(np.zeros((2, 28, 28), np.float32))
    with pytest.raises(TypeError, match="uint8"):
        p(np.zeros((2, 1, 28, 28), np.uint8))


def test_cupy_matches_numpy():
    cp = pytest.importorskip("cupy")
    try:
        cp.zeros(1)
    except Exception as exc:  # installed without a usable GPU
        pytest.skip(f"cupy present but unusable: {exc}")
    x = _batch(8)
    spec = "flip,rotate=15,translate=2,zoom=0.1,brightness=0.1,contrast=0.2,crop=2,noise=0.05"
    want = A.pipeline_from_spec(spec, seed=9)(x)
    got = A.pipeline_from_spec(spec, seed=9)(cp.asarray(x))
    assert isinstance(got, cp.ndarray)
    np.testing.assert_allclose(cp.asnumpy(got), want, atol=1e-5)
