"""Tiny models and data shared by the MPI scripts and the tests that launch them
(importable both under mpiexec and from pytest)."""

from __future__ import annotations

import numpy as np

from cnnfast import nn


def tiny_model(kind: str = "conv", seed: int = 0, dtype: str = "float64"):
    """A model of a few hundred parameters on 1x8x8 inputs, numpy backend."""
    if kind == "conv":
        layers = [nn.Conv2d(4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Dense(10)]
    elif kind == "dense":
        layers = [nn.Flatten(), nn.Dense(16), nn.ReLU(), nn.Dense(10)]
    elif kind == "bn":
        layers = [nn.Conv2d(4, 3), nn.BatchNorm(), nn.ReLU(), nn.Flatten(), nn.Dense(10)]
    else:
        raise ValueError(kind)
    return nn.Sequential(layers, input_shape=(1, 8, 8), seed=seed, dtype=dtype,
                         backend="numpy")


def tiny_data(n: int = 21, seed: int = 7):
    """uint8 images (n, 1, 8, 8) and int labels (n,), as the Trainer takes them."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n, 1, 8, 8), dtype=np.uint8),
            rng.integers(0, 10, n).astype(np.int64))


def make_optimizer(name: str):
    if name == "sgd":
        return nn.SGD(0.1, momentum=0.9)
    return nn.Adam(1e-2)


def params(model) -> dict:
    return {k: np.array(v) for k, v in model.state_dict().items()}
