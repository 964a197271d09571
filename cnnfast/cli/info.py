"""``cnnfast info``: version, backends (with why any is unavailable), CPU, threads."""

from __future__ import annotations

import argparse
import platform
from typing import Any, Dict

HELP = "show the version, the backends and why any is unavailable, CPU features, threads"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def collect() -> Dict[str, Any]:
    import numpy

    from .. import __version__
    from ..registry import available_backends
    from ..fpmode import get_flush_denormal
    from ..threads import get_num_threads

    info: Dict[str, Any] = {
        "cnnfast": __version__,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "threads": get_num_threads(),
        "denormals": ("flushed to zero in the cpp kernels (set_flush_denormal(True))"
                      if get_flush_denormal() else "kept, IEEE (set_flush_denormal(False))"),
        "backends": available_backends(with_reasons=True),
    }
    try:
        # the compiled extension: no stub for the type checker
        from ..backends.cpp import _cpp  # type: ignore[attr-defined]

        info["cpp_build"] = {"version": _cpp.version(), "compiler": _cpp.compiler(),
                             "openmp": _cpp.openmp()[0], "debug": _cpp.debug_build(),
                             "avx512": "emulated" if _cpp.avx512_emulated() else "native"}
        info["cpu_features"] = {k: v for k, v in _cpp.cpu_features().items() if v}
        info["simd_path"] = _cpp.simd_path()
        info["simd_paths"] = ", ".join(_cpp.simd_paths())  # runnable here, lowest first
    except ImportError as exc:
        info["cpp_build"] = f"not built: {exc}"
    for name in ("numba", "cupy", "torch"):
        try:
            info[name] = __import__(name).__version__
        except Exception as exc:  # noqa: BLE001 - report, never fail
            info[name] = f"not installed ({type(exc).__name__})"
    try:
        import cupy

        info["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
        info["gpu"] = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    except Exception as exc:  # noqa: BLE001
        info["gpu"] = f"none ({type(exc).__name__})"
    return info


def run(args: argparse.Namespace) -> int:
    info = collect()
    backends = info.pop("backends")
    width = max(map(len, info))
    for key, value in info.items():
        print(f"{key:<{width}}  {value}")
    print("backends:")
    for name, reason in backends.items():
        print(f"  {name:<9} {'available' if reason is None else 'unavailable: ' + reason}")
    return 0
