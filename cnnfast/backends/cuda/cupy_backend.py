"""The ``cupy`` backend: cnnfast's CUDA kernels on cupy arrays.

The kernels are the CUDA C++ files of ``cnnfast/backends/cuda/kernels`` (package data),
compiled at run time by NVRTC through ``cupy.RawModule`` with the template
instantiations of ``conv_launch.name_expressions`` -- one module per source file and C
type, memoized per device. The source string handed to CuPy has its headers inlined
(``conv_launch.source_text``) and is the same in every process, so CuPy's on-disk
kernel cache (``~/.cupy/kernel_cache``, ``CUPY_CACHE_DIR``) is hit from the second run
on. The operations themselves are those of ``cnnfast.backends.cuda.conv_launch`` and
``pool_launch``, shared with the ``cuda-emu`` backend that runs the same kernels on the
CPU for testing; ``last_paths()`` records the paths of this thread's last convolution
call.

Install with ``pip install cnnfast[cuda12]`` or ``cnnfast[cuda13]`` (CuPy with NVRTC,
for the CUDA major of the driver); this module imports without CuPy and
``availability()`` then says why it cannot run.
"""

from __future__ import annotations

import threading

import numpy as np

from . import conv_launch

ARRAY = "cupy"
DTYPES = conv_launch.DTYPES

try:  # CuPy is optional: the registry reports availability() instead.
    import cupy
except ImportError as exc:  # pragma: no cover - depends on the environment
    cupy = None
    _IMPORT_ERROR = exc
else:
    _IMPORT_ERROR = None


def availability():
    if cupy is None:
        return (f"CuPy is not installed ({_IMPORT_ERROR}); pip install cnnfast[cuda12] or "
                f"cnnfast[cuda13]")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no driver, no device, broken installation
        return f"CuPy cannot reach a CUDA device: {type(exc).__name__}: {exc}"
    if count < 1:
        return "CuPy found no CUDA device"
    return None


def unsupported(op, params, dtype):
    return conv_launch.unsupported(op, params, dtype)


ALGORITHMS = conv_launch.ALGORITHMS
explain = conv_launch.explain


def last_paths() -> dict:
    """The paths of this thread's last convolution call, by result (``"y"``,
    ``"grad_x"``, ``"grad_weight"``): the names ``explain`` gives and ``algorithm=``
    takes."""
    return conv_launch.last_paths(_runtime)


class CupyRuntime:
    """The runtime of the CUDA launchers (``cnnfast.backends.cuda.common``) on the
    current CuPy device."""

    def __init__(self):
        self.xp = cupy
        self.record = conv_launch.PathRecord()
        self._modules = {}  # (device id, file, C type, options) -> RawModule
        self._functions = {}  # (device id, name) -> RawKernel
        self._geo = {}  # (device id, geometry) -> device int32 array
        self._tables = {}  # (device id, table key) -> device int32 arrays
        self._memo = {}  # (device id, key) -> a launch resolved on that device
        self._lock = threading.Lock()

    def module(self, file, ctype, device=None):
        """The compiled module of ``file``'s kernels for one C type: compiling per
        dtype keeps a first call's NVRTC time to the kernels it can use."""
        dev = cupy.cuda.Device().id if device is None else device
        key = (dev, file, ctype, conv_launch.NVRTC_OPTIONS)
        with self._lock:
            mod = self._modules.get(key)
            if mod is None:
                with cupy.cuda.Device(dev):
                    mod = cupy.RawModule(code=conv_launch.source_text(file),
                                         options=conv_launch.NVRTC_OPTIONS,
                                         name_expressions=conv_launch.name_expressions(
                                             file, ctype))
                    mod.compile()
                self._modules[key] = mod
            return mod

    def function(self, file, name):
        dev = cupy.cuda.Device().id
        k = self._functions.get((dev, name))
        if k is None:
            ctype = conv_launch.template_ctype(name)
            k = self._functions[(dev, name)] = self.module(file, ctype, dev).get_function(name)
        return k

    def int32_array(self, values):
        # Geometry arrays are tiny and repeat across calls: keep them on the device
        # (bounded) instead of copying them at every launch.
        key = (cupy.cuda.Device().id, tuple(values))
        arr = self._geo.get(key)
        if arr is None:
            if len(self._geo) > 1024:
                self._geo.clear()
            arr = self._geo[key] = cupy.asarray(np.asarray(values, np.int32))
        return arr

    def cached(self, key, build):
        # Index tables of a geometry (up to a few MB for big weight gradients): built
        # once with numpy, kept on the device (bounded).
        key = (cupy.cuda.Device().id, key)
        hit = self._tables.get(key)
        if hit is None:
            if len(self._tables) > 256:
                self._tables.clear()
            hit = self._tables[key] = tuple(cupy.asarray(np.ascontiguousarray(a, np.int32))
                                            for a in build())
        return hit

    def memo(self, key, build):
        # Resolved launches (kernels, grids, device tables) of this device: bounded as
        # the tables are (a launch holds its tables).
        key = (cupy.cuda.Device().id, key)
        hit = self._memo.get(key)
        if hit is None:
            if len(self._memo) > 256:
                self._memo.clear()
            hit = self._memo[key] = build()
        return hit


_runtime = None
_runtime_lock = threading.Lock()


def runtime() -> CupyRuntime:
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            if cupy is None:
                raise RuntimeError(availability())
            _runtime = CupyRuntime()
        return _runtime


def warmup(devices=None, dtypes=None):
    """Compile (or load from CuPy's cache) the kernel modules of ``dtypes`` (default:
    all) on ``devices`` (default: the current device); returns the seconds it took."""
    import time

    rt = runtime()
    t0 = time.perf_counter()
    ctypes = [conv_launch.ctype(np.dtype(d)) for d in dtypes] if dtypes else \
        list(conv_launch.CTYPES.values())
    for dev in devices if devices is not None else [cupy.cuda.Device().id]:
        for file in conv_launch.SOURCE_FILES:
            for ctype in ctypes:
                rt.module(file, ctype, dev)
    return time.perf_counter() - t0


# The kernels allocate their results; an out= is filled by the dispatcher's copy.
OPS = conv_launch.make_ops(runtime)
