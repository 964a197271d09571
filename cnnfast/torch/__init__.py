"""cnnfast as a drop-in for PyTorch (needs torch: ``pip install cnnfast[torch]``).

* ``cnnfast::*`` custom operators (``torch.ops.cnnfast.conv``, ...) with fake
  implementations and autograd, usable in eager mode and under ``torch.compile``
  (``cnnfast.torch.ops``), and functional wrappers with ``torch.nn.functional``'s
  signatures: ``conv2d``, ``conv_transpose3d``, ``max_pool1d``, ``avg_pool2d``, ...
* ``cnnfast.torch.nn``: ``Conv1d`` ... ``AvgPool3d``, subclasses of the ``torch.nn``
  modules (same constructors, parameters, initialisation and ``state_dict``).
* ``replace(model, ops=...)``: swap a model's modules for those, in place;
  ``restore(model)`` undoes it.

See docs/interop.md, section "cnnfast.torch".
"""

try:
    import torch as _torch  # noqa: F401  (absolute: PyTorch, not this package)
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("cnnfast.torch needs PyTorch: pip install 'cnnfast[torch]'") from exc

from . import nn, ops
from .nn import CnnfastFallbackWarning
from .ops import (
    avg_pool, avg_pool1d, avg_pool2d, avg_pool3d,
    conv, conv1d, conv2d, conv3d,
    conv_transpose, conv_transpose1d, conv_transpose2d, conv_transpose3d,
    max_pool, max_pool1d, max_pool2d, max_pool3d,
)
from .replace import OPS, ReplaceWarning, replace, restore

__all__ = [
    "nn", "ops", "replace", "restore", "OPS", "ReplaceWarning", "CnnfastFallbackWarning",
    "conv", "conv1d", "conv2d", "conv3d",
    "conv_transpose", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
    "max_pool", "max_pool1d", "max_pool2d", "max_pool3d",
    "avg_pool", "avg_pool1d", "avg_pool2d", "avg_pool3d",
]
