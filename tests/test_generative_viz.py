"""``cnnfast visualize`` on GAN and diffusion checkpoints: samples.png (a row per
class), forward_noising.png and reverse_process.png (diffusion), curves.png from
metrics.jsonl, and the user errors; plus the ``cnnfast.viz`` functions behind them."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from cnnfast import nn
from cnnfast.cli import main
from cnnfast.nn import diffusion as D
from cnnfast.nn import gan as G

pytest.importorskip("matplotlib")

from cnnfast import viz  # noqa: E402  (after the skip: the curves need matplotlib)
from helpers.cli import cli_fails as _fails, read_png as _read_png

SLICE = os.path.join(os.path.dirname(__file__), "data", "fashion-mnist-slice")


def _tile(grid, row, col, size):
    return grid[row * (size + 1):row * (size + 1) + size, col * (size + 1):col * (size + 1) + size]


def _tiny_diffusion(size=8, steps=10):
    return D.Diffusion.build(image_shape=(1, size, size), classes=3, steps=steps,
                             base_channels=2, depth=2, embed_dim=4, dtype="float32",
                             seed=0, backend="numpy")


def _save_diffusion(path, d):
    return str(nn.save_checkpoint(path, d.net, None,
                                  {"task": "diffusion", "diffusion": d.config()}))


def _metrics(folder, rows):
    with open(os.path.join(folder, "metrics.jsonl"), "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def _no_data(data=None):
    raise FileNotFoundError("no Fashion-MNIST here")


@pytest.fixture(scope="module")
def diffusion_ck(tmp_path_factory):
    folder = tmp_path_factory.mktemp("diffusion")
    ck = _save_diffusion(folder / "checkpoint.npz", _tiny_diffusion())
    _metrics(folder, [{"epoch": 1, "train_loss": 0.9, "test_loss": 0.8},
                      {"epoch": 2, "train_loss": 0.5, "test_loss": 0.6}])
    return ck


@pytest.fixture(scope="module")
def gan_ck(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gan")
    gan = G.DCGAN.build(z_dim=3, classes=3, image_shape=(1, 8, 8), g_channels=(3, 2),
                        d_channels=(2, 3), dtype="float32", seed=0, backend="numpy")
    ck = str(G.save_gan(folder / "checkpoint.npz", gan, nn.Adam(), nn.Adam()))
    _metrics(folder, [{"epoch": 1, "d_loss": 1.3, "g_loss": 0.7, "d_real": 0.6,
                       "d_fake": 0.4}, {"epoch": 2, "d_loss": 1.2, "g_loss": 0.8}])
    return ck


# ----------------------------------------------------------------------------- the functions


def test_forward_timesteps_and_noising():
    assert viz.forward_timesteps(1000) == [0, 100, 250, 500, 750, 999]
    assert viz.forward_timesteps(10) == [0, 1, 2, 5, 7, 9]
    assert viz.forward_timesteps(1) == [0]
    with pytest.raises(ValueError, match="steps"):
        viz.forward_timesteps(0)
    d = _tiny_diffusion(steps=1000)
    image = np.random.default_rng(0).integers(0, 256, (1, 8, 8)).astype(np.uint8)
    keep = image.copy()
    times = viz.forward_timesteps(1000)
    tiles = viz.forward_noising(d, image, times, np.random.default_rng(3))
    np.testing.assert_array_equal(image, keep)  # the input is not modified
    assert tiles.shape == (7, 1, 8, 8)
    np.testing.assert_allclose(tiles[0], image / 255)
    # the tiles are q(x_t | x_0) with one noise draw, mapped back to [0, 1]
    noise = np.random.default_rng(3).standard_normal((1, 8, 8))
    for tile, t in zip(tiles[1:], times):
        a = d.schedule.alpha_bars[t]
        want = np.sqrt(a) * (image / 255 * 2 - 1) + np.sqrt(1 - a) * noise
        np.testing.assert_allclose(tile, np.clip((want + 1) / 2, 0, 1), atol=1e-12)
    # t = T - 1 is (almost) pure noise: nearly uncorrelated with the image
    assert abs(np.corrcoef(tiles[-1].ravel(), image.ravel())[0, 1]) < 0.2
    with pytest.raises(ValueError, match="model's images"):
        viz.forward_noising(d, image[:, :4], times, np.random.default_rng(3))


@pytest.mark.parametrize("steps, guidance", [(None, 0.0), (4, 0.0), (4, 2.0)])
def test_reverse_trajectory_ends_in_the_sample(steps, guidance):
    d = _tiny_diffusion()  # steps None: DDPM over all 10 timesteps; 4: DDIM
    times, frames = viz.reverse_trajectory(d, np.array([0, 2]), np.random.default_rng(5),
                                           steps=steps, frames=3, guidance=guidance)
    want = d.sample(np.array([0, 2]), np.random.default_rng(5), steps=steps,
                    guidance=guidance)
    assert frames.shape == (2, 3, 1, 8, 8) and times[0] == 9 and times[-1] == -1
    assert times == sorted(times, reverse=True)
    np.testing.assert_array_equal(frames[:, -1], want)
    # the first frame is the starting noise (the sampler's first draw)
    start = np.random.default_rng(5).standard_normal((2, 1, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(frames[:, 0], np.clip((start + 1) * np.float32(0.5), 0, 1))
    with pytest.raises(ValueError, match="labels"):
        viz.reverse_trajectory(d, np.array([3]), np.random.default_rng(5))
    with pytest.raises(ValueError, match="frames"):
        viz.reverse_trajectory(d, np.array([0]), np.random.default_rng(5), frames=1)


def test_plot_generative_curves_panels_and_errors(tmp_path):
    gan = [{"epoch": 1, "d_loss": 1.0, "g_loss": 0.5}, {"epoch": 2, "d_loss": 0.9}]
    assert viz.generative_panels(gan, "gan") == [("losses", ["d_loss", "g_loss"])]
    both = gan + [{"epoch": 3, "d_real": 0.6}]
    assert viz.generative_panels(both, "gan")[1] == ("D on test images", ["d_real"])
    assert viz.generative_panels([{"test_loss": 1.0}], "diffusion") == [
        ("noise-prediction MSE", ["test_loss"])]
    assert viz.plot_generative_curves(both, "gan", tmp_path / "g.png") == str(
        tmp_path / "g.png")
    with open(tmp_path / "g.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="task"):
        viz.plot_generative_curves([{"d_loss": 1}], "cnn", tmp_path / "c.png")
    with pytest.raises(ValueError, match="no metrics"):
        viz.plot_generative_curves([], "gan", tmp_path / "c.png")
    with pytest.raises(ValueError, match="no gan metric"):
        viz.plot_generative_curves([{"train_loss": 1}], "gan", tmp_path / "c.png")
    assert not os.path.exists(tmp_path / "c.png")


# ----------------------------------------------------------------------------- cnnfast visualize


def test_visualize_diffusion(diffusion_ck, tmp_path, capsys, monkeypatch):
    out = tmp_path / "pics"
    assert main(["visualize", diffusion_ck, "--out", str(out), "--data", SLICE,
                 "--image", "3", "--seed", "7", "--backend", "numpy"]) == 2
    assert "draws (1, 8, 8) images" in capsys.readouterr().err  # 28x28 data, 8x8 model
    # no data set installed: the forward noising starts from a sample
    monkeypatch.setattr("cnnfast.nn.data.find_fashion_mnist", _no_data)
    assert main(["visualize", diffusion_ck, "--out", str(out), "--seed", "7",
                 "--steps", "4", "--guidance", "1.5", "--backend", "numpy"]) == 0
    captured = capsys.readouterr()
    names = ["samples.png", "forward_noising.png", "reverse_process.png", "curves.png"]
    assert captured.out.split() == [str(out / n) for n in names]
    assert "noises a sample" in captured.err
    samples = _read_png(out / "samples.png")
    assert samples.shape == (3 * 9 - 1, 8 * 9 - 1)  # a row per class, 8 columns
    # the same grid as cnnfast sample --n 24 --seed 7 --steps 4 --guidance 1.5
    assert main(["sample", diffusion_ck, "--n", "24", "--seed", "7", "--steps", "4",
                 "--guidance", "1.5", "--out", str(tmp_path / "s.png")]) == 0
    np.testing.assert_array_equal(samples, _read_png(tmp_path / "s.png"))
    forward = _read_png(out / "forward_noising.png")
    assert forward.shape == (8, 7 * 9 - 1)  # the image, then t = 0, 1, 2, 5, 7, 9
    np.testing.assert_array_equal(_tile(forward, 0, 0, 8), _tile(samples, 0, 0, 8))
    reverse = _read_png(out / "reverse_process.png")
    # 3 samples (one per class); DDIM in 4 steps: 4 states and the sample = 5 frames
    assert reverse.shape == (3 * 9 - 1, 5 * 9 - 1)
    d, _, _ = D.load_diffusion(diffusion_ck, backend="numpy")
    final = d.sample(np.arange(3), np.random.default_rng([7, 2]), steps=4, guidance=1.5)
    for row in range(3):
        np.testing.assert_array_equal(_tile(reverse, row, 4, 8),
                                      np.round(final[row, 0] * 255))
    with open(out / "curves.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_visualize_diffusion_with_a_test_image(tmp_path, capsys):
    d = _tiny_diffusion(size=28, steps=12)
    ck = _save_diffusion(tmp_path / "ck.npz", d)  # no metrics: curves.png skipped
    out = tmp_path / "pics"
    assert main(["visualize", ck, "--out", str(out), "--data", SLICE, "--image", "3",
                 "--steps", "2", "--backend", "numpy"]) == 0
    captured = capsys.readouterr()
    assert "curves.png skipped" in captured.err
    assert not os.path.exists(out / "curves.png")
    from cnnfast.nn.data import load_fashion_mnist

    images, _ = load_fashion_mnist("test", SLICE, 4)
    forward = _read_png(out / "forward_noising.png")
    assert forward.shape == (28, 7 * 29 - 1)  # the image, then t = 0, 1, 3, 6, 9, 11
    np.testing.assert_array_equal(_tile(forward, 0, 0, 28), images[3, 0])
    assert not (_tile(forward, 0, 6, 28) == images[3, 0]).all()


def test_visualize_gan(gan_ck, tmp_path, capsys):
    out = tmp_path / "pics"
    assert main(["visualize", gan_ck, "--out", str(out), "--seed", "2"]) == 0
    assert capsys.readouterr().out.split() == [str(out / "samples.png"),
                                                str(out / "curves.png")]
    assert not os.path.exists(out / "forward_noising.png")
    samples = _read_png(out / "samples.png")
    assert samples.shape == (3 * 9 - 1, 8 * 9 - 1)
    assert main(["sample", gan_ck, "--n", "24", "--seed", "2", "--out",
                 str(tmp_path / "s.png")]) == 0
    np.testing.assert_array_equal(samples, _read_png(tmp_path / "s.png"))
    with open(out / "curves.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_visualize_generative_user_errors(gan_ck, diffusion_ck, tmp_path, capsys):
    out = str(tmp_path / "v")
    _fails(capsys, ["visualize", gan_ck, "--out", out, "--class", "1"], "--class",
           "holds a GAN")
    _fails(capsys, ["visualize", gan_ck, "--out", out, "--steps", "3"], "--steps",
           "diffusion checkpoints")
    _fails(capsys, ["visualize", gan_ck, "--out", out, "--guidance", "1"], "--guidance",
           "diffusion checkpoints")
    _fails(capsys, ["visualize", diffusion_ck, "--out", out, "--guidance", "-1"],
           "argument --guidance")
    _fails(capsys, ["visualize", diffusion_ck, "--out", out, "--noise", "0.2"], "--noise",
           "holds a diffusion model")
    _fails(capsys, ["visualize", diffusion_ck, "--out", out, "--steps", "11"],
           "--steps 11", "10 timesteps")
    _fails(capsys, ["visualize", diffusion_ck, "--out", out, "--seed", "-1"],
           "argument --seed")
    _fails(capsys, ["visualize", diffusion_ck, "--out", out, "--data",
                    str(tmp_path / "nodata")], "nodata")
    _fails(capsys, ["visualize", diffusion_ck, "--out", out, "--data", SLICE, "--limit",
                    "2", "--image", "5"], "--image 5", "2 images")
    _fails(capsys, ["visualize", diffusion_ck, "--out", out, "--metrics",
                    str(tmp_path / "none.jsonl")], "--metrics")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"epoch": 1, "accuracy": 0.5}\n')
    _fails(capsys, ["visualize", gan_ck, "--out", out, "--metrics", str(bad)],
           "no gan metric")
    cls = nn.save_checkpoint(tmp_path / "cls.npz", nn.Sequential(
        [nn.Flatten(), nn.Dense(10)], input_shape=(1, 28, 28)), None)
    _fails(capsys, ["visualize", str(cls), "--out", out, "--steps", "3", "--data", SLICE],
           "--steps applies to diffusion")
    _fails(capsys, ["visualize", str(cls), "--out", out, "--guidance", "1", "--data",
                    SLICE], "--guidance applies to diffusion")
    assert not os.path.exists(os.path.join(out, "samples.png"))
