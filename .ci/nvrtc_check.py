#!/usr/bin/env python3
"""Compile every CUDA kernel of cnnfast with NVRTC, without a GPU.

Uses the exact source text (``cnnfast.backends.cuda.conv_launch.source_text``: local headers
inlined), options (``NVRTC_OPTIONS``) and template instantiations
(``name_expressions``) that the cupy backend hands to ``cupy.RawModule``, for each
target architecture (default sm_80 and sm_90), and checks that NVRTC lowers every
name expression. With ``--ptxas-verbose`` it prints ptxas' register / spill report.

Needs the pip packages ``cuda-bindings`` and ``nvidia-cuda-nvrtc-cu12`` (no driver,
no device). Exit status 0 when everything compiles, 1 otherwise, 2 when NVRTC is
missing.

    python .ci/nvrtc_check.py [--arch sm_80 --arch sm_90] [--ptxas-verbose]
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cnnfast.backends.cuda import conv_launch


def _check(result, what):
    err, *rest = result if isinstance(result, tuple) else (result,)
    from cuda.bindings import nvrtc

    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise RuntimeError(f"{what}: {err}")
    return rest[0] if len(rest) == 1 else rest


def compile_file(file: str, arch: str, ptxas_verbose: bool):
    """(ok, log, lowered names, cubin size) for one file and one architecture."""
    from cuda.bindings import nvrtc

    source = conv_launch.source_text(file)
    names = conv_launch.name_expressions(file)
    prog = _check(nvrtc.nvrtcCreateProgram(source.encode(), file.encode(), 0, [], []),
                  "nvrtcCreateProgram")
    try:
        for name in names:
            _check(nvrtc.nvrtcAddNameExpression(prog, name.encode()), f"add {name}")
        options = [o.encode() for o in conv_launch.NVRTC_OPTIONS]
        options.append(f"--gpu-architecture={arch}".encode())
        if ptxas_verbose:
            options.append(b"--ptxas-options=-v")
        (err,) = nvrtc.nvrtcCompileProgram(prog, len(options), options)
        size = _check(nvrtc.nvrtcGetProgramLogSize(prog), "log size")
        buf = b" " * size
        _check(nvrtc.nvrtcGetProgramLog(prog, buf), "log")
        log = buf.decode(errors="replace").rstrip("\x00").strip()
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            return False, log, {}, 0
        lowered = {}
        for name in names:
            lowered[name] = _check(nvrtc.nvrtcGetLoweredName(prog, name.encode()),
                                   f"lowered name of {name}").decode()
        cubin = _check(nvrtc.nvrtcGetCUBINSize(prog), "cubin size")
        return True, log, lowered, cubin
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


def ptxas_summary(log: str, lowered: dict):
    """Per kernel: registers, spill stores/loads, shared memory, from ptxas -v."""
    demangled = {v: k for k, v in lowered.items()}
    rows, current = [], None
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '([^']+)'", line)
        if m:
            current = demangled.get(m.group(1), m.group(1))
            continue
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and current:
            spills = (int(m.group(1)), int(m.group(2)))
            rows.append([current, None, spills, None])
        m = re.search(r"Used (\d+) registers.*?(?:(\d+) bytes smem)?", line)
        if m and current and rows and rows[-1][0] == current:
            rows[-1][1] = int(m.group(1))
            sm = re.search(r"(\d+) bytes smem", line)
            rows[-1][3] = int(sm.group(1)) if sm else 0
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", action="append", help="e.g. sm_80 (repeatable)")
    ap.add_argument("--ptxas-verbose", action="store_true",
                    help="print registers and spills per kernel")
    args = ap.parse_args(argv)
    archs = args.arch or ["sm_80", "sm_90"]
    try:
        from cuda.bindings import nvrtc

        version = _check(nvrtc.nvrtcVersion(), "nvrtcVersion")
    except Exception as exc:  # ImportError, or the library cannot be loaded
        print(f"NVRTC unavailable: {type(exc).__name__}: {exc}\n(pip install "
              f"cuda-bindings nvidia-cuda-nvrtc-cu12)", file=sys.stderr)
        return 2
    print(f"NVRTC {version[0]}.{version[1]}, options {' '.join(conv_launch.NVRTC_OPTIONS)}")
    failed = 0
    for arch in archs:
        for file in conv_launch.SOURCE_FILES:
            t0 = time.perf_counter()
            ok, log, lowered, cubin = compile_file(file, arch, args.ptxas_verbose)
            dt = time.perf_counter() - t0
            status = "ok" if ok else "FAILED"
            print(f"[{arch}] {file}: {status} ({len(lowered)} kernels, cubin {cubin} bytes, "
                  f"{dt:.1f} s)")
            if not ok:
                failed += 1
                print(log)
                continue
            warnings = [l for l in log.splitlines() if "warning" in l.lower()]
            if warnings:
                print("  warnings:\n  " + "\n  ".join(warnings))
            if args.ptxas_verbose:
                for name, regs, (st, ld), smem in ptxas_summary(log, lowered):
                    print(f"  {name:28s} {regs:4d} registers  {smem:6d} B smem  "
                          f"spills {st}/{ld} B")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
