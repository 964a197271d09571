"""Weights exchanged with torch (cnnfast.nn.interchange): a cnnfast model's weights load
into the same model written in torch (strict) and give its outputs, and back; the
safetensors files are checked against the format read independently here, and corrupt
files are refused before anything is allocated."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from cnnfast import nn
from cnnfast.nn import interchange
from cnnfast.nn.training import cnn_model

torch = pytest.importorskip("torch")


def _torch_cnn():
    t = torch.nn
    return t.Sequential(t.Conv2d(1, 64, 3), t.ReLU(), t.MaxPool2d(2), t.Conv2d(64, 64, 3),
                        t.ReLU(), t.MaxPool2d(2), t.Flatten(), t.Linear(1600, 128), t.ReLU(),
                        t.Linear(128, 10))


def _torch_out(model, x):
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_cnnfast_weights_run_in_torch_and_back(tmp_path, suffix):
    ours = cnn_model(seed=1)
    x = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype(np.float32)
    path = tmp_path / f"w{suffix}"
    nn.save_torch_weights(ours, path)
    theirs = _torch_cnn()
    if suffix == ".pt":
        theirs.load_state_dict(torch.load(path, weights_only=True), strict=True)
    else:
        state = interchange.read_safetensors(path)
        theirs.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    np.testing.assert_allclose(_torch_out(theirs, x), ours.forward(x), rtol=1e-5, atol=1e-5)

    # torch's weights (changed by a step) into a fresh cnnfast model
    with torch.no_grad():
        for p in theirs.parameters():
            p.mul_(1.5)
    back = tmp_path / f"torch{suffix}"
    if suffix == ".pt":
        torch.save(theirs.state_dict(), back)
    else:
        with open(back, "wb") as f:
            interchange.write_safetensors(
                f, {k: v.numpy() for k, v in theirs.state_dict().items()})
    fresh = cnn_model(seed=2)
    loaded = nn.load_torch_weights(fresh, back)
    assert sorted(loaded) == sorted(theirs.state_dict())
    np.testing.assert_allclose(fresh.forward(x), _torch_out(theirs, x), rtol=1e-5, atol=1e-5)


def test_batchnorm_buffers_and_blocks_follow_torch_names():
    model = nn.Sequential([nn.Conv2d(4, 3, padding=1), nn.BatchNorm(), nn.ReLU(),
                           nn.Residual([nn.Conv2d(4, 3, padding=1), nn.ReLU()])],
                          input_shape=(2, 5, 5), seed=0)
    state = nn.torch_state_dict(model)
    assert state["1.num_batches_tracked"].shape == ()
    assert set(state) == {"0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
                          "1.running_var", "1.num_batches_tracked", "3.0.weight", "3.0.bias"}
    state["1.running_mean"] = np.arange(4.0)
    other = nn.Sequential.from_config(model.config(), seed=5)
    nn.load_torch_state_dict(other, state)
    np.testing.assert_array_equal(nn.torch_state_dict(other)["1.running_mean"], np.arange(4.0))
    with pytest.raises(ValueError, match="5.weight unexpected"):
        nn.load_torch_state_dict(other, {**state, "5.weight": np.zeros(1)})
    with pytest.raises(ValueError, match="missing"):
        nn.load_torch_state_dict(other, {"0.weight": state["0.weight"]})


def test_safetensors_layout(tmp_path):
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array(7, np.int64),
              "c": np.ones((0, 4), np.float64)}
    path = tmp_path / "x.safetensors"
    with open(path, "wb") as f:
        interchange.write_safetensors(f, arrays)
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    assert header["a"] == {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}
    assert header["b"] == {"dtype": "I64", "shape": [], "data_offsets": [24, 32]}
    assert np.array_equal(np.frombuffer(raw[8 + n:8 + n + 24], "<f4"), np.arange(6))
    back = interchange.read_safetensors(path)
    for k, v in arrays.items():
        assert back[k].dtype == v.dtype and np.array_equal(back[k], v)


def _file(tmp_path, header, data=b"", length=None):
    text = json.dumps(header).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(text) if length is None else length) + text + data)
    return path


@pytest.mark.parametrize("header, data, length, match", [
    ({}, b"", 1 << 62, "header claims"),
    ({"a": {"dtype": "F32", "shape": [1 << 40], "data_offsets": [0, 4]}}, b"xxxx", None,
     "needs"),
    ({"a": {"dtype": "Q9", "shape": [1], "data_offsets": [0, 4]}}, b"xxxx", None, "malformed"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"xxxx", None, "spans"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
      "b": {"dtype": "F32", "shape": [1], "data_offsets": [2, 6]}}, b"x" * 8, None, "overlap"),
    ([1, 2], b"", None, "not a JSON object"),
])
def test_corrupt_safetensors_are_refused(tmp_path, header, data, length, match):
    with pytest.raises(ValueError, match=match):
        interchange.read_safetensors(_file(tmp_path, header, data, length))
    (tmp_path / "short.safetensors").write_bytes(b"abc")
    with pytest.raises(ValueError, match="shorter than 8 bytes"):
        interchange.read_safetensors(tmp_path / "short.safetensors")
