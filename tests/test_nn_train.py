"""`cnnfast train` / `cnnfast evaluate` end to end on the shipped Fashion-MNIST slice,
checkpoints, bit-exact resume (also after Ctrl-C mid-epoch) and fine-tuning."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest

from cnnfast import nn
from cnnfast.cli import main
from cnnfast.nn import training as T

SLICE = os.path.join(os.path.dirname(__file__), "data", "fashion-mnist-slice")
TIMING = ("images_per_s", "train_time_s", "eval_time_s", "peak_rss_mb")


def _train(out, *extra, epochs=2, limit=96):
    return main(["train", "--data", SLICE, "--limit", str(limit), "--test-limit", "64",
                 "--epochs", str(epochs), "--batch-size", "32", "--backend", "numpy",
                 "--out", str(out), "--no-progress", *extra])


def _metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in f]


def _arrays(out):
    arrays = nn.read_arrays(os.path.join(out, "checkpoint.npz"))
    meta = arrays.pop("__meta__")
    for m in meta["extra"]["trainer"]["history"]:
        for k in TIMING:
            m.pop(k)
    meta["extra"]["trainer"]["running"].pop("time")
    return arrays, meta


def _assert_same_run(a, b):
    arrays_a, meta_a = _arrays(a)
    arrays_b, meta_b = _arrays(b)
    assert sorted(arrays_a) == sorted(arrays_b)
    for k in arrays_a:
        np.testing.assert_array_equal(arrays_a[k], arrays_b[k], err_msg=k)
    assert meta_a == meta_b
    assert _metrics(a) == _metrics(b)


def test_cli_train_and_evaluate_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out, limit=256, epochs=2) == 0
    stdout = capsys.readouterr().out
    assert "Total params: 243,786" in stdout and "epoch 2/2" in stdout
    metrics = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert metrics[1]["train_loss"] < metrics[0]["train_loss"]
    assert metrics[1]["test_acc"] > 0.3  # chance is 0.1
    assert all(m["images_per_s"] > 0 for m in metrics)
    assert sorted(os.listdir(out)) == ["checkpoint.npz", "metrics.jsonl"]  # no temp files

    assert main(["evaluate", str(out / "checkpoint.npz"), "--data", SLICE, "--limit", "64",
                 "--backend", "numpy"]) == 0
    report = capsys.readouterr().out
    assert f"accuracy: {metrics[1]['test_acc']:.4f}" in report
    assert "Ankle boot" in report and "confusion matrix" in report
    assert main(["evaluate", str(out / "checkpoint.npz"), "--data", SLICE, "--limit", "64",
                 "--backend", "numpy", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["accuracy"] == pytest.approx(metrics[1]["test_acc"])
    assert np.array(result["confusion"]).sum() == 64 and result["epochs"] == 2


def test_resume_is_bit_exact(tmp_path, capsys):
    assert _train(tmp_path / "straight", epochs=2) == 0
    assert _train(tmp_path / "resumed", epochs=1) == 0
    assert _train(tmp_path / "resumed", "--resume", epochs=2) == 0
    assert "resuming from" in capsys.readouterr().out
    _assert_same_run(tmp_path / "straight", tmp_path / "resumed")
    # Nothing left to do: resuming a finished run changes nothing.
    assert _train(tmp_path / "resumed", "--resume", epochs=2) == 0
    _assert_same_run(tmp_path / "straight", tmp_path / "resumed")


def test_ctrl_c_saves_and_resume_continues_mid_epoch(tmp_path, monkeypatch, capsys):
    assert _train(tmp_path / "straight", epochs=2) == 0
    calls = {"n": 0}
    original = T.Trainer.train_step

    def step_then_interrupt(self, x, y):
        result = original(self, x, y)
        calls["n"] += 1
        if calls["n"] == 5:  # the 2nd batch of the 2nd epoch (3 batches per epoch)
            os.kill(os.getpid(), signal.SIGINT)
        return result

    monkeypatch.setattr(T.Trainer, "train_step", step_then_interrupt)
    handler = signal.getsignal(signal.SIGINT)
    assert _train(tmp_path / "stopped", epochs=2) == 130
    assert "stopping after this batch" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is handler  # restored
    _, meta = _arrays(tmp_path / "stopped")
    assert (meta["extra"]["trainer"]["epoch"], meta["extra"]["trainer"]["batch"]) == (1, 2)
    monkeypatch.setattr(T.Trainer, "train_step", original)
    assert _train(tmp_path / "stopped", "--resume", epochs=2) == 0
    _assert_same_run(tmp_path / "straight", tmp_path / "stopped")


def test_trainer_resume_with_dropout_and_batchnorm(tmp_path):
    """Mid-epoch checkpoint of a model whose forward draws random numbers."""
    x, y = nn.data.load_fashion_mnist("train", SLICE, limit=40)

    def make():
        model = nn.Sequential([nn.Conv2d(4, 3, stride=2), nn.BatchNorm(), nn.ReLU(),
                               nn.Flatten(), nn.Dropout(0.3), nn.Dense(10)],
                              input_shape=(1, 28, 28), seed=4, backend="numpy")
        return T.Trainer(model, nn.SGD(0.05, momentum=0.9), nn.CosineLR(0.05, 2),
                         batch_size=16, seed=9)

    straight = make()
    for _ in range(2):
        straight.train_epoch(x, y, progress=False)

    first = make()
    first.train_epoch(x, y, progress=False)
    orig = first.train_step
    first.train_step = lambda a, b: (setattr(first, "stop_requested", True), orig(a, b))[1]
    assert first.train_epoch(x, y, progress=False) == {"interrupted": True}
    assert (first.epoch, first.batch) == (1, 1)
    path = tmp_path / "ck.npz"
    nn.save_checkpoint(path, first.model, first.optimizer, {"trainer": first.state()})
    model, opt, extra = nn.load_checkpoint(path, backend="numpy")
    second = T.Trainer(model, opt, nn.make_schedule(extra["trainer"]["schedule"]),
                       batch_size=16, seed=9)
    second.restore(extra["trainer"])
    second.train_epoch(x, y, progress=False)
    assert second.epoch == 2
    a, b = straight.model.state_dict(), second.model.state_dict()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert straight.model.rng.random() == second.model.rng.random()


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    model = T.dense_model(seed=0)
    path = tmp_path / "ck.npz"
    nn.save_checkpoint(path, model)
    before = path.read_bytes()
    assert oct(path.stat().st_mode & 0o777) != oct(0o600)

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken)
    with pytest.raises(OSError, match="disk full"):
        nn.save_checkpoint(path, model)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ck.npz"]


def test_bad_checkpoints(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable"):
        nn.load_checkpoint(tmp_path / "junk.npz")
    np.savez(tmp_path / "plain.npz", a=np.zeros(2))
    with pytest.raises(ValueError, match="no __meta__"):
        nn.load_checkpoint(tmp_path / "plain.npz")
    with pytest.raises(FileNotFoundError):
        nn.load_checkpoint(tmp_path / "missing.npz")


def test_fine_tune_last_layer_from_checkpoint(tmp_path):
    base = T.cnn_model(seed=0, backend="numpy")
    path = tmp_path / "base.npz"
    nn.save_checkpoint(path, base)
    # Same body, a new 5-class head: load what matches, train only the head.
    model = T.cnn_model(classes=5, seed=1, backend="numpy")
    with pytest.raises(ValueError, match="dense_1.weight has shape"):
        model.load_weights(path)
    loaded = model.load_weights(path, strict=False)
    assert "param/dense_1.weight" not in loaded and "param/conv2d.weight" in loaded
    model.freeze(-1)
    before = model.state_dict()
    x, y = nn.data.load_fashion_mnist("train", SLICE, limit=16)
    trainer = T.Trainer(model, nn.Adam(1e-2), batch_size=16)
    trainer.train_epoch(x, y % 5, progress=False)
    after = model.state_dict()
    for k in before:
        same = np.array_equal(before[k], after[k])
        assert same == (not k.startswith("param/dense_1.")), k
        if k.startswith("param/conv2d."):
            np.testing.assert_array_equal(after[k], base.state_dict()[k])


def test_cli_errors(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "Fashion-MNIST not found" in capsys.readouterr().err
    assert main(["train", "--data", SLICE, "--backend", "nope", "--out",
                 str(tmp_path / "o")]) == 2
    assert "unknown" in capsys.readouterr().err
    assert _train(tmp_path / "fresh", "--resume") == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "missing.npz"), "--data", SLICE]) == 2


def test_resume_refuses_other_data(tmp_path, capsys):
    assert _train(tmp_path / "r", epochs=1, limit=64) == 0
    assert _train(tmp_path / "r", "--resume", epochs=2, limit=96) == 2
    assert "same --limit" in capsys.readouterr().err


def test_cli_fine_tune_from_weights(tmp_path, capsys):
    assert _train(tmp_path / "base", epochs=1, limit=64) == 0
    base, _ = _arrays(tmp_path / "base")
    assert _train(tmp_path / "tuned", "--weights", str(tmp_path / "base" / "checkpoint.npz"),
                  "--freeze", "-1", epochs=1, limit=64, ) == 0
    out = capsys.readouterr().out
    assert "loaded 8 arrays" in out and "[frozen]" in out
    tuned, meta = _arrays(tmp_path / "tuned")
    for k in base:
        if k.startswith("param/"):
            same = np.array_equal(base[k], tuned[k])
            assert same == (not k.startswith("param/dense_1.")), k
    assert meta["model"]["trainable"] == [False] * 9 + [True]
