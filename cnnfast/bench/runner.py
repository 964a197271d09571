"""Timing: every implementation of one (case, op) measured in one process, interleaved.

For each (case, op):

1. every implementation prepares its call (inputs converted once) and runs it once
   (the warm-up: JIT compilation, kernel caches, first-touch allocation; its time is
   kept as ``first_call_s``), then once more to calibrate ``number``, the calls per
   sample, so that a sample lasts at least ``min_time`` seconds;
2. ``repeat`` rounds follow; each round times one sample of every implementation in
   turn (A B C A B C ...), so slow drift (turbo, thermal, a neighbour process) hits
   all of them alike, with a short sleep before each sample so that the spinning
   worker threads of the previous implementation (OpenMP, TBB, numba) have gone idle,
   and then one untimed call: it wakes this implementation's own workers, which the
   sleep put to sleep too (no sleep, no such call). Otherwise the first timed call of
   a sample waits for them to get a core again, milliseconds on a loaded machine, and
   that cost, paid once per sample, weighs by 1/``number``: an implementation timed
   one call per sample would be charged all of it and another timed ten calls a tenth;
3. the result of the warm-up call is checked against the numpy reference backend (or
   torch when numpy is not run), so a fast wrong kernel cannot go unnoticed.

The API allocates its outputs, so there is nothing to reuse between calls; the
warm-up pre-faults the allocator's pages instead. GPU samples are timed with CUDA
events around the ``number`` calls (CuPy's or torch's).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np

from .impls import Inputs, algorithm_name, pick_output
from .suite import Case

MISMATCH_TOL = {"float16": 2e-2, "float32": 1e-4, "float64": 1e-10}

logger = logging.getLogger("cnnfast.bench")


@dataclass
class Settings:
    repeat: int = 7
    min_time: float = 0.02  # seconds per sample, at least
    pause: float = 0.02  # seconds of sleep before each sample
    threads: Optional[int] = None
    peak_gflops: Optional[float] = None  # CPU
    peak_gbs: Optional[float] = None
    gpu_peak_gflops: Optional[float] = None
    gpu_peak_gbs: Optional[float] = None
    max_number: int = 10000
    seed: int = 0
    # Where each peak came from: {"peak_gflops": "measured: ..." or "given ...", ...}
    peak_source: Optional[dict] = None


def stats(samples) -> dict:
    a = np.asarray(samples, dtype=float)
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    return {"median_s": float(med), "q1_s": float(q1), "q3_s": float(q3),
            "min_s": float(a.min()), "max_s": float(a.max())}


class Interrupted(Exception):
    """Raised by ``run_cases`` on Ctrl-C (or SIGTERM, via the CLI): ``rows`` holds the
    (case, op) measurements that completed, so they can still be saved."""

    def __init__(self, rows):
        super().__init__(f"interrupted after {len(rows)} results")
        self.rows = rows


def run_cases(cases: List[Case], ops: Optional[Iterable[str]], impls: List[Any],
              settings: Settings, *, progress: Optional[Callable[[str], Any]] = None,
              device_names: Optional[Dict[str, str]] = None,
              advance: Optional[Callable[[int, int, str], Any]] = None
              ) -> List[Dict[str, Any]]:
    """Measure every (case, op) of ``cases`` (ops filtered by ``ops`` when given) on
    every implementation of ``impls``; returns one result row per (case, op, impl).

    ``progress(msg)`` gets a line per (case, op) before it runs and one with its
    times after (default: the ``cnnfast.bench`` logger, at INFO). With
    ``advance(done, total, label)`` (a progress bar), the line before is replaced by
    a call ``advance(i - 1, total, "case op")``, and ``advance(total, total, "")``
    ends the run."""
    progress = progress or logger.info
    device_names = device_names or {}
    work = [(c, op) for c in cases for op in c.ops if not ops or op in ops] if impls else []
    rows: List[Dict[str, Any]] = []
    for i, (case, op) in enumerate(work, 1):
        if advance is not None:
            advance(i - 1, len(work), f"{case.name} {op}")
        else:
            progress(f"[{i}/{len(work)}] {case.name} {op} ({case.describe()})")
        try:
            inputs = Inputs(case, settings.seed)
            case_rows = measure(case, op, impls, inputs, settings)
        except KeyboardInterrupt:
            raise Interrupted(rows) from None
        for row in case_rows:
            row["device_name"] = device_names.get(row["device"])
        rows.extend(case_rows)
        times = "  ".join(_short(r) for r in case_rows)
        # Under a bar the line before is not printed: name the case here.
        progress(f"{case.name} {op}: {times}" if advance is not None else f"    {times}")
    if advance is not None and work:
        advance(len(work), len(work), "")
    return rows


def _short(row) -> str:
    if row["status"] != "ok":
        return f"{row['impl']}: {row['status']}"
    flag = " MISMATCH" if row["check"] == "mismatch" else ""
    return f"{row['impl']} {format_time(row['median_s'])}{flag}"


def format_time(seconds: Optional[float]) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale or unit == "us":
            value = seconds / scale
            return f"{value:.3g} {unit}" if value < 1000 else f"{value:.0f} {unit}"
    return f"{seconds} s"  # pragma: no cover


def measure(case: Case, op: str, impls, inputs: Inputs, settings: Settings) -> list:
    flops, nbytes = case.flops(op), case.bytes(op)
    base = {"case": case.name, "group": case.group, "kind": case.kind, "op": op,
            "flops": flops, "bytes": nbytes}
    rows: List[Dict[str, Any]] = []
    live: List[Tuple[Any, ...]] = []  # (impl, row, fn, timer[, result])
    for impl in impls:
        row = dict(base, impl=impl.name, device=impl.device, status="ok", reason=None,
                   reference=None, times_s=[], number=0, first_call_s=None,
                   median_s=None, q1_s=None, q3_s=None, min_s=None, max_s=None,
                   gflops=None, gbs=None, peak_fraction=None, vs_reference=None,
                   check="unchecked", max_rel_error=None, algorithm=None, paths=None)
        rows.append(row)
        try:
            fn = impl.prepare(case, op, inputs)
            timer = impl.timer()
            t0 = time.perf_counter()
            out = fn()
            impl.synchronize()
            row["first_call_s"] = time.perf_counter() - t0
            result = impl.to_numpy(pick_output(case, op, out))
            del out
            t = timer(fn, 1)
            if 0 < settings.min_time <= t:
                # A second look before settling for one call per sample: a single
                # slow call (a preempted worker thread) must not decide it.
                t = min(t, timer(fn, 1))
        except NotImplementedError as exc:
            row.update(status="n/a", reason=str(exc) or "not implemented")
            continue
        except Exception as exc:  # noqa: BLE001 - one broken kernel must not stop a run
            row.update(status="error", reason=f"{type(exc).__name__}: {exc}")
            continue
        number = 1 if t >= settings.min_time else min(
            settings.max_number, math.ceil(settings.min_time / max(t, 1e-9)))
        row["number"] = number
        live.append((impl, row, fn, timer, result))
    _check(case, live)
    # Drop the checked outputs before timing (large arrays would crowd the caches).
    live = [(impl, row, fn, timer) for impl, row, fn, timer, _ in live]
    for _ in range(settings.repeat):
        for impl, row, fn, timer in live:
            if settings.pause > 0:
                time.sleep(settings.pause)
                fn()  # untimed: wakes the workers the sleep put to sleep (see 2.)
                impl.synchronize()
            row["times_s"].append(timer(fn, row["number"]) / row["number"])
            _note_paths(impl, case, row)
    for impl, row, _, _ in live:
        seen = row.pop("_algorithms", [])
        if len(seen) > 1:  # the path changed between samples (autotuning, ...)
            row["algorithms_seen"] = seen
        row.update(stats(row["times_s"]))
        gpu = row["device"] == "gpu"
        if flops:
            row["gflops"] = flops / row["median_s"] / 1e9
            peak = settings.gpu_peak_gflops if gpu else settings.peak_gflops
            if peak:
                row["peak_fraction"] = row["gflops"] / peak
        if nbytes:
            row["gbs"] = nbytes / row["median_s"] / 1e9
            peak = settings.gpu_peak_gbs if gpu else settings.peak_gbs
            if peak:
                row["peak_fraction"] = row["gbs"] / peak
    refs = {impl.device: row for impl, row, _, _ in live if impl.is_reference}
    for impl, row, _, _ in live:
        ref = refs.get(impl.device)
        if ref is not None and not impl.is_reference:
            row["reference"] = ref["impl"]
            row["vs_reference"] = ref["median_s"] / row["median_s"]
    return rows


def _note_paths(impl, case, row):
    """Record the paths of the sample just timed (read outside the timed region):
    ``algorithm`` and ``paths`` are those of the last timed call; every distinct
    algorithm seen is kept in ``_algorithms``."""
    try:
        paths = impl.last_paths(case)
    except Exception:  # noqa: BLE001 - a record we cannot read is no timing failure
        paths = None
    name = algorithm_name(paths)
    row["paths"], row["algorithm"] = paths, name
    seen = row.setdefault("_algorithms", [])
    if name is not None and name not in seen:
        seen.append(name)


def _check(case, live):
    """Compare each output with the oracle's: the numpy backend when it ran, else the
    first reference (torch). The error is relative to the oracle's largest value."""
    source = next((e for e in live if e[0].name == "numpy"), None)
    if source is None:
        source = next((e for e in live if e[0].is_reference), None)
    if source is None:
        return
    oracle = source[4]
    scale = float(np.max(np.abs(oracle))) if oracle.size else 0.0
    tol = MISMATCH_TOL.get(case.dtype, 1e-4)
    for impl, row, _, _, result in live:
        if row is source[1]:
            row["check"] = "oracle"
            continue
        if result.shape != oracle.shape:
            row.update(check="mismatch", max_rel_error=None)
            continue
        err = float(np.max(np.abs(result.astype(np.float64) - oracle))) if result.size else 0.0
        rel = err / scale if scale > 0 else err
        # NaN/inf (a kernel writing garbage) is a mismatch; JSON keeps it as null.
        row["max_rel_error"] = rel if math.isfinite(rel) else None
        row["check"] = "ok" if rel <= tol else "mismatch"


def stderr_progress(msg: str) -> None:
    """A ``progress`` that prints each line on stderr."""
    print(msg, file=sys.stderr, flush=True)

