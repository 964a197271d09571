"""The results document: what was run, where, with what, and every measurement.

Layout (``SCHEMA`` below is the machine-checked version; ``validate`` checks a
document against it with no dependency)::

    {"schema": "cnnfast-bench/1", "created": ISO-8601 UTC, "command": [argv...],
     "machine": {"cpu", "cores", "threads", "platform", "gpu",
                 ["cpu_vendor", "cpu_family", "cpu_model_number", "cpu_stepping",
                  "cpu_flags": {flag: present}]},
     "versions": {"cnnfast", "python", "numpy", "numba", "torch", "cupy",
                  ["cpp_simd_path", "cpp_compiler", "cpp_cpu_features"], ...},
     "settings": {"suite", "quick", "repeat", "min_time_s", "pause_s", "threads",
                  "peak_gflops", "peak_gbs", "gpu_peak_gflops", "gpu_peak_gbs", "seed",
                  ["peak_source": {peak key: "measured: <probe>" or "given (--option)"}]},
     "backends": {"run": [names], "skipped": {name: reason}},
     "cases": [case descriptions], "results": [one row per (case, op, impl)]}

Keys in [brackets] are optional: files written before they existed still validate.
Each row may carry ``"algorithm"``: the path(s) the cnnfast backend ran for the timed
calls (its ``last_paths()``: ``"gemm-s1"``, or ``"grad_x=gemm, grad_weight=direct"``
for several results), and ``"paths"``, the same as ``{result: path}``; both are null
for torch rows, poolings and backends that record no path. ``"algorithms_seen"``
(only when the path changed between the timed samples) lists every one, in order.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional

from ..atomic_file import umask, write_atomic

if TYPE_CHECKING:
    from ..nn.data import PathLike

SCHEMA_ID = "cnnfast-bench/1"

_num = (int, float)
_opt_num = (int, float, type(None))
_opt_str = (str, type(None))
_opt_int = (int, type(None))


class optional:
    """A schema for a key that may be absent (older files) and, when ``nullable``,
    null; present, it must match ``schema``."""

    def __init__(self, schema, nullable=False):
        self.schema, self.nullable = schema, nullable

    def __repr__(self):
        return f"optional({self.schema!r}, nullable={self.nullable})"

ROW_SCHEMA = {
    "case": str, "group": str, "kind": str, "op": str, "impl": str, "device": str,
    "device_name": _opt_str, "status": str, "reason": _opt_str, "reference": _opt_str,
    "flops": (int, type(None)), "bytes": (int, type(None)),
    "times_s": [_num], "number": int, "first_call_s": _opt_num,
    "median_s": _opt_num, "q1_s": _opt_num, "q3_s": _opt_num, "min_s": _opt_num,
    "max_s": _opt_num, "gflops": _opt_num, "gbs": _opt_num, "peak_fraction": _opt_num,
    "vs_reference": _opt_num, "check": str, "max_rel_error": _opt_num,
    "algorithm": optional(_opt_str), "paths": optional({str: str}, nullable=True),
    "algorithms_seen": optional([str]),
}
SCHEMA = {
    "schema": str, "created": str, "command": [str],
    "machine": {"cpu": str, "cores": int, "threads": int, "platform": str,
                "gpu": _opt_str, "cpu_vendor": optional(_opt_str),
                "cpu_family": optional(_opt_int), "cpu_model_number": optional(_opt_int),
                "cpu_stepping": optional(_opt_int),
                "cpu_flags": optional({str: bool}, nullable=True)},
    "versions": {"cnnfast": str, "python": str, "numpy": str, "numba": _opt_str,
                 "torch": _opt_str, "cupy": _opt_str, "cpp_simd_path": optional(str),
                 "cpp_compiler": optional(str),
                 "cpp_cpu_features": optional({str: bool})},
    "settings": {"suite": str, "quick": bool, "repeat": int, "min_time_s": _num,
                 "pause_s": _num, "threads": int, "peak_gflops": _opt_num,
                 "peak_gbs": _opt_num, "gpu_peak_gflops": _opt_num,
                 "gpu_peak_gbs": _opt_num, "seed": int,
                 "peak_source": optional({str: str}, nullable=True)},
    "backends": {"run": [str], "skipped": {str: str}},
    "cases": [{"name": str, "group": str, "kind": str, "x": [int]}],
    "results": [ROW_SCHEMA],
}
STATUSES = ("ok", "n/a", "error")
CHECKS = ("ok", "mismatch", "unchecked", "oracle")


class ResultsError(ValueError):
    """A results file that is not a valid cnnfast benchmark document."""


def validate(doc: Any, schema: Any = SCHEMA, path: str = "$") -> List[str]:
    """Every way ``doc`` departs from ``schema``, as ``"path: message"`` strings
    (empty when valid). A schema is a type or tuple of types; a one-item list (every
    element matches it); a dict of required keys (extra keys are allowed, for newer
    writers; a key whose schema is ``optional(...)`` may be absent); or
    ``{str: schema}`` (a mapping from any string to values matching)."""
    errors = []
    if isinstance(schema, optional):  # present (absence is checked by the dict)
        if doc is None and schema.nullable:
            return []
        return validate(doc, schema.schema, path)
    if isinstance(schema, dict):
        if not isinstance(doc, dict):
            return [f"{path}: expected an object, got {type(doc).__name__}"]
        if len(schema) == 1 and next(iter(schema)) is str:
            sub = schema[str]
            for key, value in doc.items():
                if not isinstance(key, str):
                    errors.append(f"{path}: key {key!r} is not a string")
                errors += validate(value, sub, f"{path}.{key}")
            return errors
        for key, sub in schema.items():
            if key not in doc:
                if not isinstance(sub, optional):
                    errors.append(f"{path}: missing key {key!r}")
            else:
                errors += validate(doc[key], sub, f"{path}.{key}")
        return errors
    if isinstance(schema, list):
        if not isinstance(doc, list):
            return [f"{path}: expected a list, got {type(doc).__name__}"]
        for i, item in enumerate(doc):
            errors += validate(item, schema[0], f"{path}[{i}]")
        return errors
    types = schema if isinstance(schema, tuple) else (schema,)
    # bool is an int subclass in Python; a JSON true is never a number here.
    if isinstance(doc, bool) and bool not in types:
        return [f"{path}: expected {_names(types)}, got bool"]
    if not isinstance(doc, types):
        return [f"{path}: expected {_names(types)}, got {type(doc).__name__}"]
    return []


def _names(types):
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


def check_document(doc: Any) -> List[str]:
    """``validate`` plus the constraints a type cannot say."""
    errors = validate(doc)
    if errors:
        return errors
    if doc["schema"] != SCHEMA_ID:
        errors.append(f"$.schema: {doc['schema']!r} is not {SCHEMA_ID!r}")
    for i, row in enumerate(doc["results"]):
        where = f"$.results[{i}]"
        if row["status"] not in STATUSES:
            errors.append(f"{where}.status: {row['status']!r} not in {STATUSES}")
        if row["check"] not in CHECKS:
            errors.append(f"{where}.check: {row['check']!r} not in {CHECKS}")
        if row["device"] not in ("cpu", "gpu"):
            errors.append(f"{where}.device: {row['device']!r} is not cpu or gpu")
        if row["status"] == "ok":
            if not row["times_s"] or row["median_s"] is None or row["number"] < 1:
                errors.append(f"{where}: status ok but no timings")
            elif not row["q1_s"] <= row["median_s"] <= row["q3_s"]:
                errors.append(f"{where}: median outside [q1, q3]")
        elif not row["reason"]:
            errors.append(f"{where}: status {row['status']!r} needs a reason")
    return errors


# ----------------------------------------------------------------------------- machine


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


# The SIMD features the kernels' choice depends on (x86-64: the cpp backend runs its
# avx2 path with AVX2+FMA; numba's LLVM uses what the CPU has), recorded present or not.
X86_FLAGS = ("sse4_2", "avx", "f16c", "fma", "avx2", "avx512f", "avx512cd", "avx512dq",
             "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16")
ARM_FLAGS = ("asimd", "asimdhp", "asimddp", "sve", "sve2", "bf16", "i8mm")


def cpu_details(cpuinfo_text=None) -> dict:
    """The CPU's vendor, family, model number and stepping (x86: ``cpu family``,
    ``model``, ``stepping`` of ``/proc/cpuinfo``; Arm: implementer, architecture and
    part), and ``cpu_flags``: each SIMD feature of ``X86_FLAGS`` (or ``ARM_FLAGS``),
    True or False. Keys whose value cannot be read are None (``cpu_flags`` too)."""
    out: Dict[str, Any] = {"cpu_vendor": None, "cpu_family": None,
                           "cpu_model_number": None, "cpu_stepping": None,
                           "cpu_flags": None}
    if cpuinfo_text is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
                cpuinfo_text = fh.read()
        except OSError:
            return out
    fields: Dict[str, str] = {}
    for line in cpuinfo_text.splitlines():
        if not line.strip():
            if fields.get("flags") or fields.get("features"):
                break  # the first processor's block is enough
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())

    def number(*keys):
        for key in keys:
            text = fields.get(key)
            if text:
                try:
                    return int(text, 0)  # Arm writes hex: 0x41
                except ValueError:
                    pass
        return None

    out["cpu_vendor"] = fields.get("vendor_id") or fields.get("cpu implementer") or None
    out["cpu_family"] = number("cpu family", "cpu architecture")
    out["cpu_model_number"] = number("model", "cpu part")
    out["cpu_stepping"] = number("stepping", "cpu revision")
    if "flags" in fields:
        have = set(fields["flags"].split())
        out["cpu_flags"] = {f: f in have for f in X86_FLAGS}
    elif "features" in fields:
        have = set(fields["features"].split())
        out["cpu_flags"] = {f: f in have for f in ARM_FLAGS}
    return out


def gpu_name():
    """The CUDA device's name (CuPy, else torch), or None without one."""
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
            return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:  # noqa: BLE001 - no GPU is a normal answer
        pass
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001
        pass
    return None


def machine(threads: int) -> dict:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:  # a busy machine explains noisy timings
        load = [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        load = None
    return {"cpu": cpu_model(), **cpu_details(), "cores": cores,
            "logical_cpus": os.cpu_count() or cores, "threads": threads,
            "platform": platform.platform(), "gpu": gpu_name(),
            "load_average_at_start": load}


def versions() -> dict:
    import numpy

    from .. import __version__

    out: Dict[str, Any] = {"cnnfast": __version__, "python": platform.python_version(),
                           "numpy": numpy.__version__}
    for name in ("numba", "torch", "cupy"):
        try:
            out[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - absent is a normal answer
            out[name] = None
    try:
        from ..backends.cpp import _cpp  # type: ignore[attr-defined]

        out["cpp_simd_path"] = _cpp.simd_path()
        out["cpp_compiler"] = _cpp.compiler()
        # What the extension itself detected (it also checks the OS saves AVX state).
        out["cpp_cpu_features"] = {str(k): bool(v) for k, v in _cpp.cpu_features().items()}
    except Exception:  # noqa: BLE001
        pass
    if out.get("cupy"):
        try:
            import cupy

            out["cuda_runtime"] = str(cupy.cuda.runtime.runtimeGetVersion())
        except Exception:  # noqa: BLE001
            pass
    return out


def make_document(rows: List[Dict[str, Any]], *, cases: List[Any], settings: Any,
                  impls: List[Any], skipped: Dict[str, str], command: Iterable[Any],
                  suite: PathLike,
                  quick: bool, machine_info: Optional[Dict[str, Any]] = None
                  ) -> Dict[str, Any]:
    """The results document; ``machine_info`` is ``machine()`` taken before the run
    (its load average is then the one the timings started under)."""
    from dataclasses import asdict

    s = asdict(settings)
    machine_info = dict(machine_info or machine(settings.threads))
    try:
        machine_info["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        machine_info["load_average_at_end"] = None
    return {
        "schema": SCHEMA_ID,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": [str(a) for a in command],
        "machine": machine_info,
        "versions": versions(),
        "settings": {"suite": str(suite), "quick": bool(quick), "repeat": s["repeat"],
                     "min_time_s": s["min_time"], "pause_s": s["pause"],
                     "threads": s["threads"], "peak_gflops": s["peak_gflops"],
                     "peak_gbs": s["peak_gbs"], "gpu_peak_gflops": s["gpu_peak_gflops"],
                     "gpu_peak_gbs": s["gpu_peak_gbs"], "seed": s["seed"],
                     "peak_source": s.get("peak_source")},
        "backends": {"run": [i.name for i in impls], "skipped": dict(skipped)},
        "cases": [dict(c.to_json(), description=c.describe(), ops=list(c.ops))
                  for c in cases],
        "results": rows,
    }


def write_json(doc: Dict[str, Any], path: PathLike) -> None:
    """Write atomically: a temporary file in the same folder, then ``os.replace``,
    so a reader never sees half a file and a crash never leaves one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, indent=1, allow_nan=False) + "\n"
    write_text_atomic(path, text)


def write_text_atomic(path, text: str) -> None:
    path = Path(path)
    data = text.encode("utf-8")
    write_atomic(path, lambda f: f.write(data), prefix=f".{path.name}.",
                 mode=_file_mode(path))


def _file_mode(path) -> int:
    try:
        return os.stat(path).st_mode & 0o7777  # keep an existing file's mode
    except OSError:
        return 0o666 & ~umask()


def load_json(path: PathLike) -> Dict[str, Any]:
    """Read a results file and check it; ``ResultsError`` says what is wrong."""
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except FileNotFoundError:
        raise ResultsError(f"results file {str(path)!r} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ResultsError(f"results file {str(path)!r} is not JSON: {exc}") from None
    errors = check_document(doc)
    if errors:
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        raise ResultsError(f"results file {str(path)!r} is not a {SCHEMA_ID} document: "
                           + "; ".join(errors[:5]) + more)
    return doc
