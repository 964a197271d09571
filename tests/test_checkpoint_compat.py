"""One checkpoint schema for classifiers and denoisers (``cnnfast.nn.runs``), and
checkpoints of the former code (``tests/data/checkpoints-legacy``: classifiers
without a ``task`` field, a denoiser written by the former denoiser loop) still
evaluate and resume to the numbers the former code gave."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from cnnfast import nn
from cnnfast.cli import main
from cnnfast.nn import runs
from cnnfast.nn.tasks import ClassificationTask, DenoisingTask
from cnnfast.nn.training import Trainer, dense_model

HERE = os.path.dirname(__file__)
SLICE = os.path.join(HERE, "data", "fashion-mnist-slice")
LEGACY = os.path.join(HERE, "data", "checkpoints-legacy")
TIMING = ("images_per_s", "train_time_s", "eval_time_s", "peak_rss_mb")
NAMES = ("classifier", "classifier-interrupted", "denoiser")

with open(os.path.join(LEGACY, "expected.json")) as _f:
    EXPECTED = json.load(_f)


def _close(actual, expected, path="result"):
    """Equal, floats to 1e-9 relative (the former numbers, on any BLAS)."""
    if isinstance(expected, dict):
        assert sorted(actual) == sorted(expected), path
        for k in expected:
            _close(actual[k], expected[k], f"{path}.{k}")
    elif isinstance(expected, list):
        assert len(actual) == len(expected), path
        for i, (a, e) in enumerate(zip(actual, expected)):
            _close(a, e, f"{path}[{i}]")
    elif isinstance(expected, float):
        assert actual == pytest.approx(expected, rel=1e-9, abs=1e-12), path
    else:
        assert actual == expected, path


def _metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
                for line in f]


@pytest.mark.parametrize("name", NAMES)
def test_legacy_checkpoints_are_small_and_legacy(name):
    path = os.path.join(LEGACY, f"{name}.npz")
    assert os.path.getsize(path) < 200_000
    extra = nn.read_arrays(path)["__meta__"]["extra"]
    assert "schema" not in extra  # written by the former code
    assert ("task" in extra) == (name == "denoiser")


@pytest.mark.parametrize("name", NAMES)
def test_legacy_checkpoint_evaluates_to_the_former_numbers(name, capsys):
    assert main(["evaluate", os.path.join(LEGACY, f"{name}.npz"), "--data", SLICE,
                 "--limit", "64", "--backend", "numpy", "--json"]) == 0
    _close(json.loads(capsys.readouterr().out), EXPECTED[name]["evaluate_limit_64"])


@pytest.mark.parametrize("name", NAMES)
def test_legacy_checkpoint_resumes_to_the_former_numbers(name, tmp_path, capsys):
    exp = EXPECTED[name]
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(os.path.join(LEGACY, f"{name}.npz"), out / "checkpoint.npz")
    assert main(["train", "--resume", "--epochs", "2", "--limit", str(exp["limit"]),
                 "--test-limit", str(exp["test_limit"]), "--data", SLICE, "--backend",
                 "numpy", "--out", str(out), "--no-progress"]) == 0
    assert "resuming from" in capsys.readouterr().out
    _close(_metrics(out), exp["metrics_after_resume_to_2_epochs"])
    # The run's checkpoint is in the current schema now, and evaluates.
    meta = nn.read_arrays(out / "checkpoint.npz")["__meta__"]
    extra = meta["extra"]
    assert extra["schema"] == runs.SCHEMA
    assert extra["task"] == ("denoise" if name == "denoiser" else "classify")
    assert extra["model"] == ("autoencoder" if name == "denoiser" else "cnn")
    assert (extra["trainer"]["epoch"], extra["trainer"]["batch"]) == (2, 0)


@pytest.mark.parametrize("name", NAMES)
def test_upgrade_extra_fills_the_current_schema(name):
    model, opt, extra = nn.load_checkpoint(os.path.join(LEGACY, f"{name}.npz"),
                                           backend="numpy")
    info = runs.upgrade_extra(extra, model)
    assert info["schema"] == runs.SCHEMA
    run = runs.TrainingRun.resume(model, opt, extra)
    assert set(run.trainer.state()) == set(info["trainer"])
    if name == "denoiser":
        assert isinstance(run.task, DenoisingTask) and run.task.noise_std == 0.25
        assert (info["task"], info["model"], info["seed"]) == ("denoise", "autoencoder", 2)
    else:
        assert isinstance(run.task, ClassificationTask) and "noise_std" not in info
        assert (info["task"], info["model"]) == ("classify", "cnn")
    position = (0, 4) if name == "classifier-interrupted" else (1, 0)
    assert (run.trainer.epoch, run.trainer.batch) == position
    assert run.extra().keys() == info.keys()


def _fresh_run(task, tmp_path):
    model = (nn.autoencoder(seed=0, backend="numpy") if task == "denoise"
             else nn.Sequential([nn.Flatten(), nn.Dense(10)], (1, 28, 28), seed=0,
                                backend="numpy", name="dense"))
    task_obj = DenoisingTask(0.2) if task == "denoise" else ClassificationTask()
    trainer = Trainer(model, nn.Adam(1e-3), batch_size=16, seed=1, task=task_obj)
    return runs.TrainingRun(trainer, data={"train_size": 32, "limit": 32})


def test_one_schema_for_both_tasks(tmp_path):
    x, y = nn.data.load_fashion_mnist("train", SLICE, limit=32)
    extras = {}
    for task in ("classify", "denoise"):
        run = _fresh_run(task, tmp_path)
        run.trainer.train_epoch(x, y, progress=False)
        path = run.save(tmp_path / f"{task}.npz")
        model, opt, extra = nn.load_checkpoint(path, backend="numpy")
        assert runs.upgrade_extra(extra, model) == extra  # nothing to upgrade
        resumed = runs.TrainingRun.resume(model, opt, extra)
        assert resumed.task.name == task and resumed.trainer.epoch == 1
        assert resumed.extra() == extra
        extras[task] = extra
    # The same fields, the same training state; the task's config on top.
    assert set(extras["denoise"]) - set(extras["classify"]) == {"noise_std"}
    assert set(extras["denoise"]["trainer"]) == set(extras["classify"]["trainer"])
    assert extras["denoise"]["trainer"]["epoch_rng_state"] is None  # seeded per epoch


def test_denoiser_state_refuses_a_mid_epoch_position(tmp_path):
    run = _fresh_run("denoise", tmp_path)
    state = run.trainer.state()
    state["batch"] = 1
    with pytest.raises(ValueError, match="epoch boundaries"):
        run.trainer.restore(state)


def test_checkpoint_readers():
    dense = nn.Sequential([nn.Flatten(), nn.Dense(10)], (1, 28, 28), seed=0)
    ae = nn.autoencoder(seed=0)
    assert runs.checkpoint_task({}, dense) == "classify"
    assert runs.checkpoint_task({}, ae) == "denoise"  # by its shapes
    assert runs.checkpoint_task({"task": "classify"}, ae) == "classify"
    assert runs.checkpoint_history({"trainer": {"history": [{"epoch": 1}]}}) == [
        {"epoch": 1}]
    assert runs.checkpoint_history({"trainer": "junk"}) == []
    assert runs.checkpoint_noise({}) == 0.3 and runs.checkpoint_noise({"noise_std": 0}) == 0
    for bad in (True, -1, float("nan"), "0.3"):
        with pytest.raises(ValueError, match="corrupt noise_std"):
            runs.checkpoint_noise({"noise_std": bad})
    with pytest.raises(KeyError):
        runs.upgrade_extra({}, dense)
    assert runs.task_of_model("unet") == "denoise"
    assert runs.task_of_model("cnn") == "classify"
    with pytest.raises(ValueError, match="expected one of"):
        runs.build_model("resnet")
    key = "param/dense.weight"
    assert np.array_equal(runs.build_model("dense", seed=0).state_dict()[key],
                          dense_model(seed=0).state_dict()[key])
