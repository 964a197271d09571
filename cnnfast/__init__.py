"""cnnfast: fast, correct convolution and pooling kernels for numpy and cupy arrays.

The public contract is ``API.md`` (torch.nn.functional semantics, ONNX where torch
cannot express a case). Four backends sit behind one dispatcher: ``numpy`` (the
reference), ``numba``, ``cpp`` and ``cupy`` (plus the opt-in ``cuda-emu``).

The package is typed (``py.typed``): the public functions carry annotations, and
their docstrings Parameters / Returns / Raises / Examples sections (see
``help(cnnfast.max_pool2d)``); the examples run as doctests (tests/test_doctests.py).
"""

from ._version import __version__
from .api import (
    avg_pool, avg_pool1d, avg_pool2d, avg_pool3d, avg_pool_backward,
    conv, conv1d, conv2d, conv3d, conv_backward,
    conv_transpose, conv_transpose1d, conv_transpose2d, conv_transpose3d,
    conv_transpose_backward, explain,
    max_pool, max_pool1d, max_pool2d, max_pool3d, max_pool_backward,
)
from .registry import (
    BackendUnavailable, available_backends, register_backend, set_backend, use_backend,
)
from .autotune import get_autotune, set_algorithm, set_autotune, use_algorithm
from .fpmode import get_flush_denormal, set_flush_denormal
from .threads import get_num_threads, set_num_threads

__all__ = [
    "__version__",
    "conv", "conv1d", "conv2d", "conv3d", "conv_backward",
    "conv_transpose", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
    "conv_transpose_backward",
    "max_pool", "max_pool1d", "max_pool2d", "max_pool3d", "max_pool_backward",
    "avg_pool", "avg_pool1d", "avg_pool2d", "avg_pool3d", "avg_pool_backward",
    "available_backends", "set_backend", "use_backend", "register_backend",
    "BackendUnavailable", "set_num_threads", "get_num_threads",
    "set_flush_denormal", "get_flush_denormal", "explain",
    "set_autotune", "get_autotune", "set_algorithm", "use_algorithm",
]
