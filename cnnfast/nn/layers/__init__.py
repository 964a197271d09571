"""The built-in layers, one module per family:

* ``conv``: ``Conv``/``Conv1d``/``Conv2d``/``Conv3d``, ``ConvTranspose`` and its 1-3 d
  forms;
* ``pool``: ``MaxPool*``, ``AvgPool*``, ``GlobalAvgPool``;
* ``activation``: ``ReLU``, ``LeakyReLU``, ``Sigmoid``, ``Tanh``;
* ``dense``: ``Flatten``, ``Reshape``, ``Linear`` (``Dense``);
* ``dropout``: ``Dropout``; ``norm``: ``BatchNorm``;
* ``_common``: the helpers they share (``tf_same_pads`` and the padding rule, argument
  and input checks).

Convolution and pooling call the public kernel API (``cnnfast.conv``,
``cnnfast.conv_backward``, ``cnnfast.max_pool(..., return_indices=True)``,
``cnnfast.avg_pool``, ...) with the layer's ``backend``; everything else is written
with the array module of the input (numpy or cupy), so one model runs on either.

Every name is re-exported here (``from cnnfast.nn.layers import Conv2d``, ``_Conv``
...). A layer is registered for checkpoints under its class name (``register_layer``),
not its module, so the split does not change saved configs.
"""

from ._common import _check_input, _jsonable, _resolve_padding, _tuple, tf_same_pads
from .activation import LeakyReLU, ReLU, Sigmoid, Tanh
from .conv import (
    Conv, Conv1d, Conv2d, Conv3d, ConvTranspose, ConvTranspose1d, ConvTranspose2d,
    ConvTranspose3d, _Conv, _ConvTranspose,
)
from .dense import Dense, Flatten, Linear, Reshape
from .dropout import Dropout
from .norm import BatchNorm
from .pool import (
    AvgPool, AvgPool1d, AvgPool2d, AvgPool3d, GlobalAvgPool, MaxPool, MaxPool1d, MaxPool2d,
    MaxPool3d, _AvgPool, _MaxPool, _Pool,
)

__all__ = [
    "Conv", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose", "ConvTranspose1d",
    "ConvTranspose2d", "ConvTranspose3d",
    "MaxPool", "MaxPool1d", "MaxPool2d", "MaxPool3d", "AvgPool", "AvgPool1d", "AvgPool2d",
    "AvgPool3d", "GlobalAvgPool",
    "ReLU", "LeakyReLU", "Sigmoid", "Tanh",
    "Flatten", "Reshape", "Linear", "Dense", "Dropout", "BatchNorm", "tf_same_pads",
]
