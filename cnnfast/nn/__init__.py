"""``cnnfast.nn``: layers with explicit forward and backward (no autograd), losses,
optimizers, initializers, checkpoints, data loading and a training loop.

Convolution and pooling layers call the public kernel API with the layer's
``backend`` (``model.set_backend(name)`` sets it for the whole model); everything
else uses the array module of its input, so a model moved with ``model.to("gpu")``
trains on cupy arrays end to end.

>>> import numpy as np
>>> from cnnfast import nn
>>> model = nn.Sequential([nn.Conv2d(4, 3, padding="same"), nn.ReLU(), nn.MaxPool2d(2),
...                        nn.Flatten(), nn.Dense(10)], input_shape=(1, 8, 8), seed=0,
...                       backend="numpy")
>>> x = np.zeros((2, 1, 8, 8), np.float32)
>>> loss, grad = nn.softmax_cross_entropy(model.forward(x, training=True), np.array([1, 2]))
>>> model.backward(grad)
>>> nn.Adam(lr=1e-3).step(model)
"""

from .base import Layer, array_module, layer_class, layer_from_config, register_layer
from .checkpoint import CheckpointError, load_checkpoint, read_arrays, save_checkpoint
from .init import INITIALIZERS, get_initializer
from .interchange import (load_torch_state_dict, load_torch_weights, save_torch_weights,
                          torch_state_dict)
from .layers import (
    AvgPool, AvgPool1d, AvgPool2d, AvgPool3d, BatchNorm, Conv, Conv1d, Conv2d, Conv3d,
    ConvTranspose, ConvTranspose1d, ConvTranspose2d, ConvTranspose3d, Dense, Dropout,
    Flatten, GlobalAvgPool, LeakyReLU, Linear, MaxPool, MaxPool1d, MaxPool2d, MaxPool3d,
    ReLU, Reshape, Sigmoid, Tanh, tf_same_pads,
)
from .losses import log_softmax, mse, softmax_cross_entropy
from .model import Sequential
from .optim import SGD, Adam, AdamW, CosineLR, Schedule, StepLR, make_optimizer, make_schedule
# Imported here so that their layers are registered: load_checkpoint rebuilds U-Nets.
from .resample import Residual, SkipConcat, Upsample
from .encdec import autoencoder, build_encdec, psnr, train_denoiser, unet

__all__ = [
    "Layer", "array_module", "layer_class", "layer_from_config", "register_layer",
    "CheckpointError", "load_checkpoint", "read_arrays", "save_checkpoint", "INITIALIZERS",
    "get_initializer",
    "AvgPool", "AvgPool1d", "AvgPool2d", "AvgPool3d", "BatchNorm", "Conv", "Conv1d",
    "Conv2d", "Conv3d", "ConvTranspose", "ConvTranspose1d", "ConvTranspose2d",
    "ConvTranspose3d", "Dense", "Dropout", "Flatten", "GlobalAvgPool", "LeakyReLU",
    "Linear", "MaxPool", "MaxPool1d", "MaxPool2d", "MaxPool3d", "ReLU", "Reshape", "Sigmoid",
    "Tanh",
    "tf_same_pads", "log_softmax", "mse", "softmax_cross_entropy", "Sequential",
    "SGD", "Adam", "AdamW", "CosineLR", "Schedule", "StepLR", "make_optimizer",
    "make_schedule", "Upsample", "SkipConcat", "Residual", "autoencoder", "unet",
    "build_encdec", "train_denoiser", "psnr", "torch_state_dict", "load_torch_state_dict",
    "save_torch_weights", "load_torch_weights",
]
