"""`cnnfast train` end to end for the denoisers (--model autoencoder / unet, --noise)
and for --augment on the classifier: metrics, checkpoints, resume, bad options."""

from __future__ import annotations

import importlib.util
import json
import math
import os

import numpy as np
import pytest

from cnnfast import nn
from cnnfast.cli import main

SLICE = os.path.join(os.path.dirname(__file__), "data", "fashion-mnist-slice")
TIMING = ("images_per_s", "train_time_s", "eval_time_s", "peak_rss_mb")


def _train(out, *extra, epochs=1, limit=48, model="cnn"):
    """``model=None`` leaves --model out (a resumed run takes the checkpoint's)."""
    return main(["train", "--data", SLICE, "--limit", str(limit), "--test-limit", "32",
                 "--epochs", str(epochs), "--batch-size", "16", "--backend", "numpy",
                 *(["--model", model] if model else []), "--out", str(out),
                 "--no-progress", *extra])


def _metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _untimed(history):
    return [{k: v for k, v in m.items() if k not in TIMING} for m in history]


def _checkpoint(out):
    arrays = nn.read_arrays(os.path.join(out, "checkpoint.npz"))
    return arrays, arrays.pop("__meta__")


def _assert_same_arrays(a, b):
    arrays_a, meta_a = _checkpoint(a)
    arrays_b, meta_b = _checkpoint(b)
    assert sorted(arrays_a) == sorted(arrays_b)
    for k in arrays_a:
        np.testing.assert_array_equal(arrays_a[k], arrays_b[k], err_msg=k)
    state_a, state_b = meta_a["extra"]["trainer"], meta_b["extra"]["trainer"]
    for key in ("epoch", "augment", "augment_state", "model_rng_state"):
        assert state_a[key] == state_b[key], key
    assert _untimed(_metrics(a)) == _untimed(_metrics(b))


def test_autoencoder_metrics_checkpoint_and_visualize(tmp_path, capsys):
    out = tmp_path / "ae"
    assert _train(out, "--noise", "0.25", model="autoencoder", limit=64) == 0
    stdout = capsys.readouterr().out
    assert 'Model: "autoencoder"' in stdout and "epoch 1/1" in stdout
    assert "PSNR noisy" in stdout and "-> denoised" in stdout and "done:" in stdout
    (m,) = _metrics(out)
    for key in ("epoch", "train_loss", "test_loss", "psnr_noisy", "psnr_denoised",
                "train_time_s"):
        assert key in m, key
    assert m["epoch"] == 1 and "test_acc" not in m
    assert math.isfinite(m["psnr_noisy"]) and math.isfinite(m["psnr_denoised"])
    assert 5 < m["psnr_noisy"] < 25  # std 0.25 noise, clipped, on [0, 1] images
    assert m["train_loss"] > 0 and m["test_loss"] > 0
    assert sorted(os.listdir(out)) == ["checkpoint.npz", "metrics.jsonl"]  # no temp files
    model, opt, extra = nn.load_checkpoint(out / "checkpoint.npz", backend="numpy")
    assert extra["noise_std"] == 0.25 and extra["task"] == "denoise"
    assert extra["model"] == "autoencoder" and extra["augment"] is None
    assert tuple(model.output_shape) == (1, 28, 28) and opt.config()["name"] == "adam"
    # The test loss is the MSE of the denoised test images: PSNR = -10 log10(MSE).
    assert m["psnr_denoised"] == pytest.approx(-10 * math.log10(m["test_loss"]), abs=1e-3)

    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("matplotlib is not installed: the visualize part is skipped")
    pics = tmp_path / "pics"
    assert main(["visualize", str(out / "checkpoint.npz"), "--out", str(pics), "--data",
                 SLICE, "--limit", "16", "--backend", "numpy"]) == 0
    assert (pics / "denoising.png").stat().st_size > 0
    assert (pics / "curves.png").exists()


def test_unet_resume_continues_exactly(tmp_path, capsys):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert _train(straight, model="unet", epochs=2, limit=32) == 0
    assert _train(resumed, model="unet", epochs=1, limit=32) == 0
    assert len(_metrics(resumed)) == 1
    capsys.readouterr()
    # --model may be left out on resume (the checkpoint knows the model).
    assert _train(resumed, "--resume", model=None, epochs=2, limit=32) == 0
    stdout = capsys.readouterr().out
    assert "resuming from" in stdout and "unet, epoch 2" in stdout
    assert [m["epoch"] for m in _metrics(resumed)] == [1, 2]
    _assert_same_arrays(straight, resumed)
    # The second epoch trained on a new shuffle and new noise: the weights moved.
    first = _metrics(resumed)[0]
    assert _metrics(resumed)[1]["train_loss"] != first["train_loss"]
    # A finished run has nothing left to do; a mismatched option is refused.
    assert _train(resumed, "--resume", model="unet", epochs=2, limit=32) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert _train(resumed, "--resume", model="autoencoder", epochs=3, limit=32) == 2
    assert "trained with --model unet" in capsys.readouterr().err
    assert _train(resumed, "--resume", "--noise", "0.1", model="unet", epochs=3,
                  limit=32) == 2
    assert "--noise 0.3" in capsys.readouterr().err


def test_classifier_augment_records_spec_and_changes_training(tmp_path, capsys):
    assert _train(tmp_path / "aug", "--augment", "flip,translate=1", limit=32) == 0
    assert "augmentation: flip=0.5,translate=1" in capsys.readouterr().out
    arrays, meta = _checkpoint(tmp_path / "aug")
    assert meta["extra"]["augment"] == "flip=0.5,translate=1"
    assert meta["extra"]["trainer"]["augment"] == "flip=0.5,translate=1"
    assert meta["extra"]["trainer"]["augment_state"]["bit_generator"] == "PCG64"
    (m,) = _metrics(tmp_path / "aug")
    assert "test_acc" in m and m["train_loss"] > 0
    # Without augmentation the same seed trains different weights.
    assert _train(tmp_path / "plain", limit=32) == 0
    plain, plain_meta = _checkpoint(tmp_path / "plain")
    assert plain_meta["extra"]["augment"] is None
    assert not np.array_equal(arrays["param/conv2d.weight"], plain["param/conv2d.weight"])


def test_classifier_resume_with_augment_is_bit_exact(tmp_path, capsys):
    spec = ("--augment", "flip,translate=1")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert _train(straight, *spec, epochs=2, limit=32) == 0
    assert _train(resumed, *spec, epochs=1, limit=32) == 0
    # The spec comes from the checkpoint; repeating it is allowed.
    assert _train(resumed, "--resume", epochs=2, limit=32) == 0
    assert "augmentation: flip=0.5,translate=1" in capsys.readouterr().out
    _assert_same_arrays(straight, resumed)
    # A different --augment on resume would break the continuation: refused.
    assert _train(resumed, "--resume", "--augment", "flip", epochs=3, limit=32) == 2
    assert "trained with --augment" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (("--augment", "flop"), "unknown transform 'flop'"),
    (("--augment", "translate=1.5"), "whole pixels"),
    (("--augment", "flip=2"), "must lie in [0, 1]"),
    (("--augment", "rotate=abc"), "is not a number"),
    (("--noise", "-0.1", "--model", "autoencoder"), "argument --noise"),
    (("--noise", "0.2"), "--noise is for the denoisers"),
])
def test_bad_options_exit_2(tmp_path, capsys, args, message):
    out = tmp_path / "bad"
    assert main(["train", "--data", SLICE, "--out", str(out), "--no-progress",
                 "--backend", "numpy", *args]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()  # refused before anything was written


def test_denoiser_ctrl_c_finishes_the_epoch_saves_and_resumes(tmp_path, monkeypatch, capsys):
    import signal

    from cnnfast.nn import training as T

    assert _train(tmp_path / "straight", model="autoencoder", epochs=2, limit=32) == 0
    original = T.Trainer.train_step
    calls = {"n": 0}

    def interrupted(self, x, y):
        calls["n"] += 1
        if calls["n"] == 1:  # the first batch of the first epoch (2 per epoch)
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, x, y)

    monkeypatch.setattr(T.Trainer, "train_step", interrupted)
    handler = signal.getsignal(signal.SIGINT)
    assert _train(tmp_path / "stopped", model="autoencoder", epochs=2, limit=32) == 130
    assert "stopping after this epoch" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is handler  # restored
    assert calls["n"] == 2  # the epoch was finished, the second one never began
    assert [m["epoch"] for m in _metrics(tmp_path / "stopped")] == [1]
    monkeypatch.setattr(T.Trainer, "train_step", original)
    assert _train(tmp_path / "stopped", "--resume", model="autoencoder", epochs=2,
                  limit=32) == 0
    _assert_same_arrays(tmp_path / "straight", tmp_path / "stopped")


def test_evaluate_reports_psnr_for_a_denoiser(tmp_path, capsys):
    out = tmp_path / "ae"
    assert _train(out, model="autoencoder") == 0
    capsys.readouterr()
    assert main(["evaluate", str(out / "checkpoint.npz"), "--data", SLICE, "--limit", "32",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) >= {"psnr_noisy", "psnr_denoised", "noise_std"}
    assert math.isfinite(result["psnr_denoised"]) and result["noise_std"] == 0.3
