"""cnnfast.nn.layers is a package (one module per family) that still answers every
import the single module answered, and registers every layer under the same class
name, so configurations and checkpoints saved before the split load unchanged."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest

from cnnfast import nn, params
from cnnfast.nn import layers as L
from cnnfast.nn.base import layer_class

# What `cnnfast.nn.layers` defined when it was one module (private helpers included:
# cnnfast.viz uses _Conv and _ConvTranspose).
FORMER_NAMES = [
    "AvgPool", "AvgPool1d", "AvgPool2d", "AvgPool3d", "BatchNorm", "Conv", "Conv1d",
    "Conv2d", "Conv3d", "ConvTranspose", "ConvTranspose1d", "ConvTranspose2d",
    "ConvTranspose3d", "Dense", "Dropout", "Flatten", "GlobalAvgPool", "LeakyReLU",
    "Linear", "MaxPool", "MaxPool1d", "MaxPool2d", "MaxPool3d", "ReLU", "Sigmoid", "Tanh",
    "_AvgPool", "_Conv", "_ConvTranspose", "_MaxPool", "_Pool", "_check_input",
    "_jsonable", "_resolve_padding", "_tuple", "tf_same_pads",
]

FAMILIES = {
    "conv": ["Conv", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose", "ConvTranspose1d",
             "ConvTranspose2d", "ConvTranspose3d", "_Conv", "_ConvTranspose"],
    "pool": ["MaxPool", "MaxPool1d", "MaxPool2d", "MaxPool3d", "AvgPool", "AvgPool1d",
             "AvgPool2d", "AvgPool3d", "GlobalAvgPool", "_Pool", "_MaxPool", "_AvgPool"],
    "activation": ["ReLU", "LeakyReLU", "Sigmoid", "Tanh"],
    "dense": ["Flatten", "Linear"],
    "dropout": ["Dropout"],
    "norm": ["BatchNorm"],
    "_common": ["_tuple", "_jsonable", "_resolve_padding", "_check_input"],
}


@pytest.mark.parametrize("name", FORMER_NAMES)
def test_every_former_name_is_importable_from_the_package(name):
    assert hasattr(L, name)
    exec(f"from cnnfast.nn.layers import {name}", {})


def test_each_family_lives_in_its_module():
    for module, names in FAMILIES.items():
        mod = importlib.import_module(f"cnnfast.nn.layers.{module}")
        for name in names:
            assert getattr(L, name) is getattr(mod, name), (module, name)
            assert getattr(mod, name).__module__ == mod.__name__, (module, name)
    assert L.Dense is L.Linear
    assert L.tf_same_pads is params.same_pads_tensorflow


def test_public_names_match_cnnfast_nn():
    for name in L.__all__:
        assert getattr(nn, name) is getattr(L, name), name


def test_layers_register_under_their_former_class_names():
    for name in FORMER_NAMES:
        obj = getattr(L, name)
        if isinstance(obj, type) and not name.startswith("_") and name != "Dense":
            assert layer_class(name) is obj
    with pytest.raises(ValueError, match="unknown layer class"):
        layer_class("_Conv")  # the bases stay unregistered, as before


def _every_family_model():
    return nn.Sequential([
        nn.Conv2d(4, 3, padding="same"), nn.BatchNorm(), nn.LeakyReLU(0.1), nn.MaxPool2d(2),
        nn.ConvTranspose2d(4, 2, stride=2), nn.Sigmoid(),
        nn.AvgPool2d(2, count_include_pad=False), nn.Conv(3, 1), nn.Tanh(), nn.Dropout(0.2),
        nn.GlobalAvgPool(), nn.Dense(5), nn.ReLU(), nn.Linear(2),
    ], input_shape=(2, 8, 8), seed=0, dtype="float64", backend="numpy")


# The layer entries a model of every family saved before the split (class, name).
SAVED_LAYERS = [
    ("Conv2d", "conv2d"), ("BatchNorm", "batch_norm"), ("LeakyReLU", "leaky_relu"),
    ("MaxPool2d", "max_pool2d"), ("ConvTranspose2d", "conv_transpose2d"),
    ("Sigmoid", "sigmoid"), ("AvgPool2d", "avg_pool2d"), ("Conv", "conv"), ("Tanh", "tanh"),
    ("Dropout", "dropout"), ("GlobalAvgPool", "global_avg_pool"), ("Linear", "dense"),
    ("ReLU", "relu"), ("Linear", "dense_1"),
]


def test_saved_configs_and_checkpoints_are_unchanged(tmp_path):
    model = _every_family_model()
    cfg = json.loads(json.dumps(model.config()))
    assert [(e["class"], e["config"]["name"]) for e in cfg["layers"]] == SAVED_LAYERS
    assert cfg["layers"][0]["config"] == {
        "out_channels": 4, "kernel_size": 3, "stride": 1, "padding": "same", "dilation": 1,
        "groups": 1, "use_bias": True, "kernel_initializer": "glorot_uniform",
        "bias_initializer": "zeros", "name": "conv2d"}
    x = np.random.default_rng(0).standard_normal((3, 2, 8, 8))
    y = model.forward(x)
    path = nn.save_checkpoint(tmp_path / "m.npz", model)
    again, _, _ = nn.load_checkpoint(path, backend="numpy")
    assert again.config() == model.config()
    np.testing.assert_array_equal(again.forward(x), y)
