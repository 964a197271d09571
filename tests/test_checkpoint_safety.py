"""Checkpoints are untrusted input: a crafted file is rejected with a clear
``CheckpointError`` before anything of its declared size is allocated (memory
stays bounded by the file's own size), and pickle is never loaded."""

from __future__ import annotations

import io
import json
import os
import time
import tracemalloc
import zipfile

import numpy as np
import pytest

from cnnfast import nn
from cnnfast.cli import main
from cnnfast.nn import encdec
from cnnfast.nn import training as T
from cnnfast.nn.checkpoint import CheckpointError, remove_stale_temporaries

SLICE = os.path.join(os.path.dirname(__file__), "data", "fashion-mnist-slice")
BOUND = 32 * 2 ** 20  # bytes: far below what the crafted configurations declare


def _arrays(model, optimizer=None):
    """The arrays save_checkpoint writes, ``__meta__`` decoded, to tamper with."""
    arrays = {"__meta__": {"format": 1, "model": model.config(),
                           "optimizer": optimizer.config() if optimizer else None,
                           "extra": {}}}
    arrays.update(model.state_dict())
    if optimizer is not None:
        arrays.update({f"optim/{k}": np.asarray(v)
                       for k, v in optimizer.state_dict().items()})
    return arrays


def _write(path, arrays, compress=False):
    arrays = dict(arrays)
    arrays["__meta__"] = np.array(json.dumps(arrays["__meta__"]))
    (np.savez_compressed if compress else np.savez)(path, **arrays)
    return path


def _peak_bytes(fn):
    """``(exception raised by fn, peak traced bytes, seconds)``."""
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - the caller checks it
        raised = exc
    else:
        raised = None
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return raised, peak, seconds


def test_huge_config_is_rejected_before_allocating(tmp_path, capsys):
    """10**6 output features: the model would take 3 GB (evaluate allocated 19 GB
    before the shape check); the stored arrays are ~0.8 MB."""
    arrays = _arrays(T.dense_model(seed=0), nn.Adam())
    arrays["__meta__"]["model"]["layers"][1]["config"]["out_features"] = 10 ** 6
    path = _write(tmp_path / "huge.npz", arrays)
    exc, peak, seconds = _peak_bytes(lambda: nn.load_checkpoint(path))
    assert isinstance(exc, CheckpointError), exc
    assert "param/dense.weight has shape (128, 784), the configuration gives " \
           "(1000000, 784)" in str(exc)
    assert peak < BOUND and seconds < 5
    # The command line: one line on stderr, status 2, the same bound.
    rc = {}
    exc, peak, _ = _peak_bytes(lambda: rc.setdefault(
        "rc", main(["evaluate", str(path), "--data", SLICE, "--limit", "8"])))
    err = capsys.readouterr().err
    assert rc["rc"] == 2 and exc is None and peak < BOUND
    assert err.count("\n") == 1 and "do not match the stored model configuration" in err


def test_huge_conv_and_input_shape_are_rejected_before_allocating(tmp_path):
    model = T.cnn_model(seed=0)
    arrays = _arrays(model)
    arrays["__meta__"]["model"]["layers"][0]["config"]["out_channels"] = 10 ** 5
    path = _write(tmp_path / "conv.npz", arrays)
    exc, peak, _ = _peak_bytes(lambda: nn.load_checkpoint(path))
    assert isinstance(exc, CheckpointError) and peak < BOUND
    arrays = _arrays(T.dense_model(seed=0))
    arrays["__meta__"]["model"]["input_shape"] = [1, 100000, 100000]
    path = _write(tmp_path / "input.npz", arrays)
    exc, peak, _ = _peak_bytes(lambda: nn.load_checkpoint(path))
    assert isinstance(exc, CheckpointError) and peak < BOUND
    assert "the configuration gives (128, 10000000000)" in str(exc)


def test_npy_header_that_lies_about_its_shape(tmp_path):
    """A member whose .npy header declares 10**10 elements but holds a few bytes."""
    path = tmp_path / "lie.npz"
    good = _write(tmp_path / "good.npz", _arrays(T.dense_model(seed=0)))
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (10 ** 10,)})
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(path, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, src.read(name))
        dst.writestr("param/x.npy", header.getvalue() + b"\0" * 64)
    exc, peak, _ = _peak_bytes(lambda: nn.read_arrays(path))
    assert isinstance(exc, CheckpointError) and peak < BOUND
    assert "declares shape (10000000000,)" in str(exc)


def test_compressed_members_cannot_expand_past_the_file(tmp_path):
    """A zip bomb: 16 MB of zeros compress to a few KB."""
    arrays = _arrays(T.dense_model(seed=0))
    arrays["param/dense.weight"] = np.zeros((128, 784), np.float32)
    arrays["padding"] = np.zeros(4 * 2 ** 20, np.float32)
    path = _write(tmp_path / "bomb.npz", arrays, compress=True)
    assert path.stat().st_size < 2 ** 20
    exc, peak, _ = _peak_bytes(lambda: nn.read_arrays(path))
    assert isinstance(exc, CheckpointError) and peak < 4 * 2 ** 20
    assert "compressed or crafted" in str(exc)


def test_pickle_is_never_loaded(tmp_path):
    path = tmp_path / "pickle.npz"
    good = _write(tmp_path / "good.npz", _arrays(T.dense_model(seed=0)))
    obj = io.BytesIO()
    np.save(obj, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(path, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, src.read(name))
        dst.writestr("extra.npy", obj.getvalue())
    with pytest.raises(CheckpointError, match="Python objects"):
        nn.read_arrays(path)


@pytest.mark.parametrize("tamper, match", [
    (lambda a: a["__meta__"]["model"]["layers"][0].update({"class": "Evil"}),
     "unknown layer class 'Evil'"),
    (lambda a: a["__meta__"]["model"].pop("input_shape"), "invalid model configuration"),
    (lambda a: a["__meta__"]["model"].update(dtype="float16"), "invalid model"),
    (lambda a: a["__meta__"]["model"].update(layers="x"), "invalid model"),
    (lambda a: a["__meta__"]["model"]["layers"][1]["config"].update(bogus=1), "bogus"),
    (lambda a: a["__meta__"].update(optimizer={"name": "rmsprop"}), "invalid optimizer"),
    (lambda a: a.pop("param/dense.bias"), "param/dense.bias missing"),
    (lambda a: a.update({"param/dense.extra": np.zeros(2)}), "param/dense.extra unexpected"),
    (lambda a: a.update({"param/dense.bias": np.array(["x"] * 128)}), "has dtype <U1"),
    (lambda a: a.update({"optim/m/dense.bias": np.zeros(3)}), "optim/m/dense.bias has shape"),
    (lambda a: a.update({"optim/q/dense.bias": np.zeros(128)}), "does not belong to Adam"),
    (lambda a: a.update({"__meta__": [1]}), "format None is not supported"),
])
def test_bad_configurations_are_checkpoint_errors(tmp_path, tamper, match):
    arrays = _arrays(T.dense_model(seed=0), nn.Adam())
    tamper(arrays)
    path = _write(tmp_path / "bad.npz", arrays)
    with pytest.raises(CheckpointError, match=match):
        nn.load_checkpoint(path)


def test_other_bad_files(tmp_path):
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(CheckpointError, match="not a readable cnnfast checkpoint"):
        nn.read_arrays(tmp_path / "text.npz")
    with pytest.raises(CheckpointError, match="is a folder"):
        nn.read_arrays(tmp_path)
    good = _write(tmp_path / "good.npz", _arrays(T.dense_model(seed=0)))
    data = good.read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        nn.load_checkpoint(tmp_path / "cut.npz")
    with zipfile.ZipFile(tmp_path / "deep.npz", "w") as z:
        buf = io.BytesIO()
        np.save(buf, np.array("[" * 100000 + "]" * 100000))
        z.writestr("__meta__.npy", buf.getvalue())
    with pytest.raises(CheckpointError, match="unreadable __meta__"):
        nn.read_arrays(tmp_path / "deep.npz")


def test_good_checkpoints_still_load(tmp_path):
    for model in (T.cnn_model(seed=0), encdec.unet(seed=0),
                  nn.Sequential([nn.Conv2d(4, 3), nn.BatchNorm(), nn.ReLU(), nn.Flatten(),
                                 nn.Dense(3, use_bias=False)], input_shape=(2, 8, 8))):
        opt = nn.SGD(0.1, momentum=0.9)
        opt.state["momentum"] = {k: np.ones(layer.params[p].shape, np.float32)
                                 for k, layer, p in model.trainable_params()}
        path = nn.save_checkpoint(tmp_path / "ok.npz", model, opt)
        loaded, opt2, _ = nn.load_checkpoint(path)
        for k, v in model.state_dict().items():
            np.testing.assert_array_equal(v, loaded.state_dict()[k])
        assert sorted(opt2.state["momentum"]) == sorted(opt.state["momentum"])


def test_state_shapes_are_what_build_allocates():
    """``state_shapes`` (the check) and ``build`` (the allocation) agree for every
    layer with parameters or buffers, nested blocks included."""
    models = [T.cnn_model(), encdec.unet(), encdec.unet(up="bilinear"), encdec.autoencoder(),
              nn.Sequential([nn.Conv1d(3, 2, groups=1), nn.BatchNorm(),
                             nn.ConvTranspose1d(4, 3, stride=2), nn.Residual(
                                 [nn.Conv1d(4, 3, padding=1), nn.BatchNorm()]),
                             nn.Flatten(), nn.Dense(2)], input_shape=(2, 9))]
    for model in models:
        assert model.state_shapes() == {k: v.shape for k, v in model.state_dict().items()}
    unbuilt = nn.Sequential.from_config(models[0].config(), build=False)
    assert unbuilt.input_shape is None and unbuilt.state_shapes((1, 28, 28)) == \
        models[0].state_shapes()


def test_remove_stale_temporaries_only_touches_its_pattern(tmp_path):
    for name in (".tmp-abc123.npz", ".tmp-x.npz", "checkpoint.npz", ".tmp-notes.txt",
                 "tmp-abc.npz"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / ".tmp-dir.npz").mkdir()
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(os.path.basename(p) for p in removed) == [".tmp-abc123.npz", ".tmp-x.npz"]
    assert sorted(os.listdir(tmp_path)) == [".tmp-dir.npz", ".tmp-notes.txt",
                                            "checkpoint.npz", "tmp-abc.npz"]
