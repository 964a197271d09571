"""Every user error of the command line is one line on stderr and exit status 2,
never a traceback: bad option values (checked when parsed), missing or corrupt
data and checkpoints, an unusable --out, --resume conflicts, unknown backends;
and stale temporary checkpoint files are cleaned up when a run starts."""

from __future__ import annotations

import gzip
import os
import shutil

import numpy as np
import pytest

from cnnfast import nn
from cnnfast.cli import main
from cnnfast.nn import training as T
from helpers.cli import cli_fails as _fails

SLICE = os.path.join(os.path.dirname(__file__), "data", "fashion-mnist-slice")
TRAIN = ["train", "--data", SLICE, "--limit", "32", "--test-limit", "16", "--epochs", "1",
         "--backend", "numpy", "--no-progress"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished one-epoch cnn run (batch 16, seed 0, adam), shared read-only."""
    out = tmp_path_factory.mktemp("trained")
    assert main(TRAIN + ["--batch-size", "16", "--out", str(out)]) == 0
    return out


def _copy_run(trained, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    return out


# ----------------------------------------------------------------------------- parse time


@pytest.mark.parametrize("argv, needle", [
    (["train", "--epochs", "0"], "argument --epochs: expected an int >= 1, got '0'"),
    (["train", "--epochs", "two"], "argument --epochs: expected an int >= 1, got 'two'"),
    (["train", "--batch-size", "-1"], "argument --batch-size: expected an int >= 1"),
    (["train", "--limit", "0"], "argument --limit"),
    (["train", "--test-limit", "0"], "argument --test-limit"),
    (["train", "--threads", "0"], "argument --threads"),
    (["train", "--step-size", "0"], "argument --step-size"),
    (["train", "--lr", "0"], "argument --lr: expected a finite number > 0, got '0'"),
    (["train", "--lr", "nan"], "argument --lr"),
    (["train", "--lr", "inf"], "argument --lr"),
    (["train", "--gamma", "-0.5"], "argument --gamma"),
    (["train", "--momentum", "1"], "argument --momentum: expected a number in [0, 1)"),
    (["train", "--weight-decay", "-1"], "argument --weight-decay"),
    (["train", "--noise", "nan"], "argument --noise"),
    (["train", "--seed", "-1"], "argument --seed: expected an int in [0, 2**63), got '-1'"),
    (["train", "--seed", "1.5"], "argument --seed"),
    (["train", "--freeze", "x"], "argument --freeze"),
    (["train", "--model", "vgg"], "argument --model: invalid choice: 'vgg'"),
    (["train", "--bogus"], "unrecognized arguments: --bogus"),
    (["evaluate", "ck.npz", "--batch-size", "-1"], "argument --batch-size"),
    (["evaluate", "ck.npz", "--limit", "0"], "argument --limit"),
    (["evaluate"], "the following arguments are required: checkpoint"),
    (["visualize", "ck.npz", "--out", "o", "--image", "-1"], "argument --image"),
    (["visualize", "ck.npz", "--out", "o", "--class", "-2"], "argument --class"),
    (["visualize", "ck.npz", "--out", "o", "--noise", "-1"], "argument --noise"),
    (["demo", "--batch", "0"], "argument --batch"),
    (["demo", "--repeat", "0"], "argument --repeat"),
    (["bench", "--threads", "0"], "argument --threads"),
    (["bench", "--min-time", "-1"], "argument --min-time"),
    (["bench", "--seed", "-3"], "argument --seed"),
])
def test_numeric_options_are_checked_when_parsed(capsys, argv, needle):
    _fails(capsys, argv, needle, f"see cnnfast {argv[0]} --help")


def test_no_command_is_a_usage_error(capsys):
    capsys.readouterr()
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cnnfast: ") and err.count("\n") == 1


def test_evaluate_negative_batch_size_is_refused(trained, capsys):
    _fails(capsys, ["evaluate", str(trained / "checkpoint.npz"), "--data", SLICE,
                    "--batch-size", "-1"], "argument --batch-size")
    with pytest.raises(ValueError, match="batch_size=-1"):
        T.evaluate(T.dense_model(), np.zeros((2, 1, 28, 28), np.uint8), np.zeros(2, int),
                   batch_size=-1)


def test_freeze_at_most_the_number_of_layers(tmp_path, capsys):
    for k in ("11", "-11"):
        _fails(capsys, TRAIN + ["--freeze", k, "--out", str(tmp_path / "o")],
               f"--freeze {k}: the model has 10 layers")
    assert not (tmp_path / "o").exists()  # refused before anything was written


@pytest.mark.parametrize("extra, needle", [
    (["--momentum", "0.5"], "--momentum applies to --optimizer sgd, not --optimizer adam"),
    (["--nesterov", "--optimizer", "adamw"], "--nesterov applies to --optimizer sgd"),
    (["--gamma", "0.5"], "--gamma applies to --schedule step, not --schedule constant"),
    (["--step-size", "2", "--schedule", "cosine"], "--step-size applies to --schedule step"),
])
def test_options_that_mean_nothing_with_the_others(tmp_path, capsys, extra, needle):
    _fails(capsys, TRAIN + extra + ["--out", str(tmp_path / "o")], needle)


# ----------------------------------------------------------------------------- files


def test_out_that_is_a_file_or_cannot_be_created(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    _fails(capsys, TRAIN + ["--out", str(afile)], f"--out {afile}: exists and is not a "
                                                  f"folder")
    _fails(capsys, TRAIN + ["--out", str(afile / "sub")], "cannot create the folder")
    _fails(capsys, ["visualize", "ck.npz", "--out", str(afile), "--data", SLICE],
           "exists and is not a folder")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root may write anywhere")
def test_out_not_writable(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        _fails(capsys, TRAIN + ["--out", str(locked)], "not writable")
    finally:
        locked.chmod(0o700)


def _data_copy(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(SLICE, data)
    return data


def test_missing_and_corrupt_data(tmp_path, capsys):
    _fails(capsys, TRAIN[:1] + ["--data", str(tmp_path), "--out", str(tmp_path / "o")],
           "Fashion-MNIST not found", "missing train-images-idx3-ubyte")
    data = _data_copy(tmp_path)
    images = data / "train-images-idx3-ubyte.gz"
    raw = images.read_bytes()
    images.write_bytes(raw[: len(raw) // 2])  # truncated gzip
    _fails(capsys, ["train", "--data", str(data), "--out", str(tmp_path / "o"),
                    "--backend", "numpy"], str(images), "truncated")
    # A header that declares more than the file holds (here 2**32-1 images).
    header = bytes([0, 0, 8, 3]) + (2 ** 32 - 1).to_bytes(4, "big") + bytes([0, 0, 0, 28] * 2)
    images.write_bytes(gzip.compress(header + bytes(100)))
    _fails(capsys, ["evaluate", "x.npz", "--data", str(data)], "x.npz' does not exist")
    _fails(capsys, ["train", "--data", str(data), "--out", str(tmp_path / "o")],
           str(images), "truncated")
    # Images of another size than the model's input.
    other = _data_copy(tmp_path / "other")
    for split in ("train", "t10k"):
        nn.data.write_idx(other / f"{split}-images-idx3-ubyte.gz",
                          np.zeros((512 if split == "train" else 256, 32, 32), np.uint8))
    _fails(capsys, TRAIN[:1] + ["--data", str(other), "--out", str(tmp_path / "o2")],
           "the model takes (1, 28, 28) images, the data has (1, 32, 32)")


def test_bad_resume_checkpoint(trained, tmp_path, capsys):
    out = tmp_path / "fresh"
    _fails(capsys, TRAIN + ["--resume", "--out", str(out)], "--resume: no checkpoint at")
    out = _copy_run(trained, tmp_path)
    ckpt = out / "checkpoint.npz"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    _fails(capsys, TRAIN + ["--resume", "--out", str(out)],
           "--resume:", "not a readable cnnfast checkpoint")
    # A checkpoint without training state (written by the library, not by train).
    nn.save_checkpoint(ckpt, T.cnn_model(seed=0))
    _fails(capsys, TRAIN + ["--resume", "--out", str(out)], "holds no usable training state")


def test_bad_weights_checkpoint(trained, tmp_path, capsys):
    out = str(tmp_path / "o")
    _fails(capsys, TRAIN + ["--weights", str(tmp_path / "nope.npz"), "--out", out],
           "--weights:", "does not exist")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    _fails(capsys, TRAIN + ["--weights", str(tmp_path / "junk.npz"), "--out", out],
           "--weights:", "not a readable cnnfast checkpoint")
    _fails(capsys, TRAIN + ["--weights", str(tmp_path), "--out", out], "is a folder")
    # Weights of another model: nothing matches by name and shape.
    _fails(capsys, TRAIN + ["--model", "unet", "--weights", str(trained / "checkpoint.npz"),
                            "--out", out], "no array matches this model (--model unet)")


def test_bad_evaluate_and_visualize_checkpoints(tmp_path, capsys):
    _fails(capsys, ["evaluate", str(tmp_path / "nope.npz"), "--data", SLICE],
           "nope.npz' does not exist")
    _fails(capsys, ["evaluate", str(tmp_path), "--data", SLICE], "is a folder")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    _fails(capsys, ["visualize", str(tmp_path / "junk.npz"), "--out", str(tmp_path / "v"),
                    "--data", SLICE], "not a readable cnnfast checkpoint")
    # A 5-class model cannot be scored on the 10 Fashion-MNIST classes.
    nn.save_checkpoint(tmp_path / "five.npz", T.dense_model(classes=5, seed=0))
    _fails(capsys, ["evaluate", str(tmp_path / "five.npz"), "--data", SLICE],
           "expected a classifier with 10 outputs")


# ----------------------------------------------------------------------------- --resume


@pytest.mark.parametrize("extra, needle", [
    (["--model", "dense"], "--model dense conflicts with"),
    (["--model", "unet"], "trained with --model cnn"),
    (["--batch-size", "32"], "--batch-size 32 conflicts with"),
    (["--lr", "0.01"], "trained with --lr 0.001"),
    (["--optimizer", "sgd"], "--optimizer sgd conflicts with"),
    (["--dtype", "float64"], "trained with --dtype float32"),
    (["--seed", "1"], "--seed 1 conflicts with"),
    (["--schedule", "cosine"], "trained with --schedule constant"),
    (["--weight-decay", "0.1"], "trained with --weight-decay 0.0"),
    (["--momentum", "0.5"], "whose run does not use --momentum"),
    (["--freeze", "2"], "--freeze 2 conflicts with the layers"),
    (["--augment", "flip"], "--augment 'flip=0.5' conflicts with"),
])
def test_resume_refuses_a_conflicting_option(trained, tmp_path, capsys, extra, needle):
    out = _copy_run(trained, tmp_path)
    before = (out / "checkpoint.npz").read_bytes()
    err = _fails(capsys, TRAIN + ["--epochs", "2", "--resume", "--out", str(out), *extra],
                 needle)
    assert "--resume:" in err
    assert (out / "checkpoint.npz").read_bytes() == before


def test_resume_takes_the_checkpoints_options(trained, tmp_path, capsys):
    """Options left out come from the checkpoint; repeating them is allowed."""
    out = _copy_run(trained, tmp_path)
    assert main(TRAIN + ["--epochs", "2", "--resume", "--out", str(out), "--batch-size",
                         "16", "--seed", "0", "--optimizer", "adam", "--lr", "0.001",
                         "--model", "cnn", "--dtype", "float32"]) == 0
    meta = nn.read_arrays(out / "checkpoint.npz")["__meta__"]
    assert meta["extra"]["trainer"]["batch_size"] == 16 and meta["extra"]["trainer"][
        "epoch"] == 2
    capsys.readouterr()


# ----------------------------------------------------------------------------- backends


def test_unknown_or_unavailable_backend(tmp_path, capsys):
    import cnnfast as cf

    available = ", ".join(cf.available_backends())
    _fails(capsys, ["demo", "--backend", "nope"], "--backend 'nope' is unknown",
           f"available here: {available}")
    _fails(capsys, TRAIN + ["--backend", "nope", "--out", str(tmp_path / "o")],
           "--backend 'nope' is unknown")
    _fails(capsys, ["evaluate", "x.npz", "--backend", "nope"], "'nope' is unknown")
    reasons = cf.available_backends(with_reasons=True)
    missing = [n for n, r in reasons.items() if r is not None]
    if missing:
        _fails(capsys, ["demo", "--backend", missing[0]],
               f"--backend {missing[0]!r} is unavailable")


# ----------------------------------------------------------------------------- stale files


def test_stale_temporary_checkpoints_are_removed_at_start(trained, tmp_path, capsys):
    out = _copy_run(trained, tmp_path)
    (out / ".tmp-k1ll3d.npz").write_bytes(b"half a checkpoint")
    (out / ".tmp-notes.txt").write_text("not ours")
    capsys.readouterr()
    assert main(TRAIN + ["--epochs", "2", "--resume", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"note: removed {out / '.tmp-k1ll3d.npz'}" in err
    assert sorted(os.listdir(out)) == [".tmp-notes.txt", "checkpoint.npz", "metrics.jsonl"]
