"""The one rule that tells numpy arrays from cupy arrays, and the bridge from any
other DLPack array (torch tensors, JAX arrays, array-API objects) to them.

cupy is optional and slow to import, so a cupy array is recognised by the module of
its type, never by ``isinstance`` (which would need ``import cupy``); torch tensors
likewise, by the module of their type.

A DLPack array is imported without a copy: CPU memory as a numpy array
(``numpy.from_dlpack``), CUDA memory as a cupy array (``cupy.from_dlpack``, on the
device that holds it; for torch tensors on torch's current stream, see
``cuda_scope``). ``export`` hands a result back as the caller's array type.
"""

from __future__ import annotations

import contextlib
from typing import Any, Optional, Tuple

import numpy as np

#: An array of numpy or cupy (cupy is optional, so arrays are typed ``Any``).
Array = Any

# DLPack device types (dlpack.h, DLDeviceType).
DLPACK_CPU = 1
DLPACK_CUDA = 2
DLPACK_CUDA_HOST = 3
DLPACK_CUDA_MANAGED = 13
_CPU_DEVICES = (DLPACK_CPU, DLPACK_CUDA_HOST)  # memory numpy reads in place
_CUDA_DEVICES = (DLPACK_CUDA, DLPACK_CUDA_MANAGED)  # memory cupy reads in place
#: ``(DLPack device type, device id)``.
Device = Tuple[int, int]
_DEVICE_NAMES = {1: "CPU", 2: "CUDA", 3: "CUDAHost", 4: "OpenCL", 7: "Vulkan", 8: "Metal",
                 9: "VPI", 10: "ROCM", 11: "ROCMHost", 12: "ExtDev", 13: "CUDAManaged",
                 14: "OneAPI", 15: "WebGPU", 16: "Hexagon", 17: "MAIA"}


FLOAT_DTYPES = ("float16", "float32", "float64")
# dtype -> name without str(dtype), which costs microseconds per call (as much as a
# small GPU kernel); cupy arrays carry numpy dtypes too.
_DTYPE_NAME = {np.dtype(n): n for n in FLOAT_DTYPES + ("int64",)}


def dtype_name(dtype: Any) -> str:
    """The dtype's name ("float32", ...), fast for the dtypes the kernels take."""
    name = _DTYPE_NAME.get(dtype)
    return name if name is not None else str(dtype)


def is_cupy_array(a: Any) -> bool:
    """True when ``a`` is a cupy array (without importing cupy)."""
    return type(a).__module__.split(".")[0] == "cupy"


def is_torch_tensor(a: Any) -> bool:
    """True when ``a`` is a torch tensor (``torch.nn.Parameter`` too), without
    importing torch."""
    module = type(a).__module__
    return (module == "torch" or module.startswith("torch.")) and hasattr(a, "data_ptr")


def is_native(a: Any) -> bool:
    """True for the arrays the backends take as they are: numpy and cupy arrays."""
    return isinstance(a, np.ndarray) or is_cupy_array(a)


def is_dlpack_array(a: Any) -> bool:
    """True for an array that is not numpy or cupy but exports ``__dlpack__``."""
    return not is_native(a) and hasattr(a, "__dlpack__")


def array_kind(a: Any, name: str) -> str:
    """``"numpy"`` or ``"cupy"``; a TypeError naming argument ``name`` for anything else."""
    if isinstance(a, np.ndarray):
        return "numpy"
    if is_cupy_array(a):
        return "cupy"
    raise TypeError(f"{name} must be a numpy or cupy array or a DLPack array (an object "
                    f"with __dlpack__: a torch tensor, a JAX array, ...), got "
                    f"{type(a).__name__} (convert it with numpy.asarray first)")


def array_module(x: Any) -> Any:
    """``numpy`` or ``cupy``: the module that owns array ``x``."""
    if is_cupy_array(x):
        import cupy

        return cupy
    return np


# ----------------------------------------------------------------------------- DLPack


def dlpack_device(a: Any, name: str) -> Device:
    """``(device type, device id)`` of DLPack array ``a`` (``__dlpack_device__``;
    read from a torch tensor's own flags, which cost a twentieth of that)."""
    if is_torch_tensor(a):
        if a.is_cpu:
            return DLPACK_CPU, 0
        if a.is_cuda:
            return DLPACK_CUDA, a.get_device()
    try:
        device_type, device_id = a.__dlpack_device__()
        return int(device_type), int(device_id)
    except Exception as exc:
        raise TypeError(f"{name} is a {type(a).__name__} with __dlpack__ but no usable "
                        f"__dlpack_device__ ({type(exc).__name__}: {exc}); cnnfast needs "
                        f"both to read it in place") from exc


def device_name(device: Device) -> str:
    device_type, device_id = device
    return f"{_DEVICE_NAMES.get(device_type, f'type {device_type}')}:{device_id}"


def is_cuda_device(device: Device) -> bool:
    return device[0] in _CUDA_DEVICES


def import_dlpack(a: Any, name: str, device: Optional[Device] = None) -> Any:
    """DLPack array ``a`` as a numpy array (CPU memory) or a cupy array (CUDA memory),
    sharing its memory (strides kept: a non-contiguous array stays a view). The
    caller runs CUDA imports inside ``cuda_scope``. TypeError/ValueError naming
    ``name`` when it cannot be read in place."""
    torch_tensor = is_torch_tensor(a)
    if torch_tensor:
        if a.requires_grad:
            raise TypeError(f"{name} is a torch tensor that requires grad; cnnfast's "
                            f"functions do not record autograd: use cnnfast.torch for "
                            f"autograd, or pass {name}.detach()")
        if a.is_neg():  # torch exports a negative-bit view without its sign
            a = a.resolve_neg()
    if device is None:
        device = dlpack_device(a, name)
    if device[0] in _CPU_DEVICES:
        # Tensor.numpy() is numpy.from_dlpack's zero-copy view at a third of the cost.
        convert = _torch_numpy if torch_tensor else np.from_dlpack
    elif device[0] in _CUDA_DEVICES:
        convert = _cupy_module(name, device).from_dlpack
    else:
        raise TypeError(f"{name} lives on DLPack device {device_name(device)}; cnnfast "
                        f"runs on CPU memory (numpy backends) and CUDA memory (the cupy "
                        f"backend) only")
    try:
        return convert(a)
    except Exception as exc:  # BufferError, RuntimeError: a dtype or export refused
        dtype = getattr(a, "dtype", "?")
        raise TypeError(f"{name} ({type(a).__name__} of dtype {dtype}) cannot be read "
                        f"through DLPack: {type(exc).__name__}: {exc}; cnnfast computes "
                        f"in float32 and float64 (float16 on the CUDA backends)") from exc


def _torch_numpy(t: Any) -> np.ndarray:
    return t.numpy()


def _cupy_module(name: str, device: Device) -> Any:
    """``cupy``, or ``BackendUnavailable`` naming ``name`` when it is missing: CUDA
    memory runs on the cupy backend, and there is no silent transfer to the CPU."""
    try:
        import cupy
    except ImportError as exc:
        from .registry import BackendUnavailable

        raise BackendUnavailable(
            f"{name} lives in CUDA memory (DLPack device {device_name(device)}), which "
            f"runs on the cupy backend, but CuPy cannot be imported ({exc}); pip install "
            f"cnnfast[cuda12] or cnnfast[cuda13], or move {name} to the CPU") from exc
    return cupy


def cuda_scope(a: Any, name: str, device: Device) -> contextlib.ExitStack:
    """The context a call on CUDA DLPack array ``a`` runs in: its device current and,
    for a torch tensor, torch's current stream on that device as cupy's current stream
    (the contract: "on the producer's current stream"); other producers order their
    work with cupy's current stream through the DLPack ``stream`` handshake."""
    cupy = _cupy_module(name, device)
    stack = contextlib.ExitStack()
    stack.enter_context(cupy.cuda.Device(device[1]))
    if is_torch_tensor(a):
        import torch

        ptr = torch.cuda.current_stream(device[1]).cuda_stream
        stream = cupy.cuda.Stream.null if ptr == 0 else cupy.cuda.ExternalStream(ptr)
        stack.enter_context(stream)
    return stack


def export(result: Any, like: Any) -> Any:
    """``result`` (a numpy or cupy array, or None) as the array type of ``like``, the
    caller's array: a torch tensor through ``torch.from_dlpack``, an array-API object
    through its namespace's ``from_dlpack`` (both without a copy), else as it is."""
    if result is None or is_native(like):
        return result
    if is_torch_tensor(like):
        import torch

        if isinstance(result, np.ndarray):  # torch.from_dlpack's view, a third of the cost
            return torch.from_numpy(result)
        return torch.from_dlpack(result)
    namespace = getattr(like, "__array_namespace__", None)
    if namespace is not None:
        return namespace().from_dlpack(result)
    return result
