"""Opt-in autotuning of the convolution algorithm, and the algorithm pin.

Two ways to choose a convolution algorithm beyond the backend's own choice (the
``algorithm=`` argument of one call comes first, then these):

* **The pin**: ``set_algorithm(name)`` (process-wide) or ``use_algorithm(name)`` (a
  context manager, per thread and asyncio task, over the global one) makes every
  convolution call that leaves ``algorithm="auto"`` behave as if it passed
  ``algorithm=name``: the name pins the backend that knows it when no backend is named,
  a backend without it is a ``ValueError`` and a case it cannot run a
  ``NotImplementedError``, as for ``algorithm=``. ``None`` or ``"auto"`` removes it.

* **Autotuning**: ``set_autotune(True)`` (or ``CNNFAST_AUTOTUNE=1`` in the environment
  at import) makes a convolution call left to the automatic choice, on a backend with
  several algorithms, time its candidates once per *key* and remember the fastest,
  like ``torch.backends.cudnn.benchmark``. The candidates are ``"auto"`` (the backend's
  own choice, which may mix paths across the kernels of a backward call) and every
  name of the backend's ``ALGORITHMS`` that can run the case (its ``explain`` does not
  refuse it). Each runs once untimed (numba compiles there), then ``REPEATS`` timed
  runs on the call's own arrays, median kept; a candidate whose first timed run is
  over ``SLOW_FACTOR`` times the best median so far is not repeated. ``"auto"`` is kept
  unless another is faster by ``KEEP_AUTO_WITHIN``. The call then runs the winner
  exactly as ``algorithm=winner`` would (inputs untouched, the same result).

  The key: the op, backend, dtype, ``x`` and ``weight`` shapes, ``needs``, every
  convolution parameter (stride, padding, dilation, groups, output_padding), the
  thread count, the flush-denormal setting, the backend's SIMD path (cpp), the CPU
  model (or GPU name and compute capability for cupy) and the cnnfast version.

  Not timed (the backend's choice runs, ``explain`` says why): backends with fewer than
  two algorithms (numpy), ``cuda-emu`` (an emulator's timings say nothing about a GPU),
  backward calls with no convolution kernel (``needs=("bias",)``), and CPU calls of more
  than ``MAX_WORK`` multiply-adds (one run would take seconds; timing them all, minutes).

The cache: ``$CNNFAST_CACHE_DIR/autotune.json``, else the user cache directory
(``$XDG_CACHE_HOME/cnnfast`` or ``~/.cache/cnnfast`` on Linux, ``~/Library/Caches/
cnnfast`` on macOS, ``%LOCALAPPDATA%\\cnnfast\\Cache`` on Windows). A JSON object
``{"format": "cnnfast-autotune", "version": 1, "cnnfast": <version>, "entries": {key:
{"algorithm": name, "seconds": {candidate: median}, "time": unix time}}}`` whose keys
are the key above as compact JSON. It is read once per process, and written after each
new choice: under a lock file where the platform has ``fcntl``, merged with what is on
disk then, at most ``MAX_ENTRIES`` entries (the oldest dropped), to a temporary file
renamed over the old one (``os.replace``: readers see the old or the new file, never a
torn one). An unreadable, corrupt or other-version file gives one
``AutotuneCacheWarning`` and is treated as empty (then replaced); a cache that cannot be
written gives one warning and the choices live for the process only.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import math
import os
import platform
import statistics
import sys
import threading
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from . import registry
from .atomic_file import write_atomic
from ._version import __version__
from .fpmode import get_flush_denormal
from .threads import get_num_threads

FORMAT = "cnnfast-autotune"
FORMAT_VERSION = 1
FILE_NAME = "autotune.json"
MAX_ENTRIES = 4096
REPEATS = 3  # timed runs per candidate (after one untimed)
SLOW_FACTOR = 2.0
KEEP_AUTO_WITHIN = 1.03  # another candidate must be 3% faster than "auto" to win
MAX_WORK = 3e10  # multiply-adds of a CPU call above which nothing is timed
NOT_TUNED = {"cuda-emu": "cuda-emu is an emulator: its timings say nothing about a GPU"}
CONV_OPS = ("conv", "conv_backward", "conv_transpose", "conv_transpose_backward")


class AutotuneCacheWarning(RuntimeWarning):
    """The autotune cache file could not be read or written (results are unaffected)."""


# ----------------------------------------------------------------------------- switches

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def _env_flag() -> bool:
    """``CNNFAST_AUTOTUNE``: 1/true/yes/on turns autotuning on, 0/false/no/off or unset
    leaves it off; anything else warns and leaves it off (never an import error)."""
    raw = os.environ.get("CNNFAST_AUTOTUNE", "")
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value not in _FALSE:
        warnings.warn(f"CNNFAST_AUTOTUNE={raw!r} is not one of 1, 0, true, false, yes, "
                      f"no, on, off; autotuning stays off (cnnfast.set_autotune(True) "
                      f"turns it on)", RuntimeWarning, stacklevel=2)
    return False


_enabled = _env_flag()


def set_autotune(flag: bool) -> None:
    """Turn autotuning of the convolution algorithm on (``True``) or off (``False``,
    the default unless ``CNNFAST_AUTOTUNE=1``). Process-wide.

    Parameters
    ----------
    flag : bool
        On or off.

    Raises
    ------
    TypeError
        ``flag`` is not a bool.

    Examples
    --------
    >>> import cnnfast
    >>> before = cnnfast.get_autotune()
    >>> cnnfast.set_autotune(True)
    >>> cnnfast.get_autotune()
    True
    >>> cnnfast.set_autotune(before)
    """
    global _enabled
    if not isinstance(flag, (bool, np.bool_)):
        raise TypeError(f"set_autotune(flag={flag!r}): flag must be a bool")
    _enabled = bool(flag)


def get_autotune() -> bool:
    """Whether autotuning is on (``set_autotune``, else ``CNNFAST_AUTOTUNE`` at import).

    Returns
    -------
    bool
        ``True`` when convolution calls left to ``algorithm="auto"`` are autotuned.
    """
    return _enabled


_global_pin: Optional[str] = None
# None: not set in this context (the global pin applies); "auto": no pin in the block.
_context_pin: contextvars.ContextVar = contextvars.ContextVar("cnnfast_algorithm",
                                                              default=None)


def _checked_pin(name) -> str:
    if name is None or name == "auto":
        return "auto"
    if not isinstance(name, str):
        raise TypeError(f"algorithm={name!r} must be an algorithm name (str) or None")
    vocabularies = {b: registry.get_backend(b).algorithms for b in registry.backend_names()}
    if not any(name in v for v in vocabularies.values()):
        known = "; ".join(f"{b}: {', '.join(v) or '(unavailable)'}"
                          for b, v in vocabularies.items())
        raise ValueError(f"algorithm={name!r} is unknown; expected None, 'auto' or one of "
                         f"({known})")
    return name


def set_algorithm(name: Optional[str]) -> None:
    """Pin the convolution algorithm ``name`` for every call that leaves
    ``algorithm="auto"`` (``None`` or ``"auto"`` removes the pin). The name must be in
    some backend's vocabulary (``ValueError`` otherwise); each call then checks it as
    ``algorithm=name`` would.

    Parameters
    ----------
    name : str or None
        An algorithm name of some backend's ``ALGORITHMS`` (``cnnfast.explain`` names
        them); ``None`` or ``"auto"`` removes the pin.

    Raises
    ------
    TypeError
        ``name`` is not a str or None.
    ValueError
        ``name`` is in no backend's vocabulary.

    Examples
    --------
    >>> import numpy as np, cnnfast
    >>> cnnfast.set_algorithm("tap-matmul")
    >>> cnnfast.explain("conv1d", np.ones((1, 1, 4)), np.ones((1, 1, 2))).split(":")[0]
    'numpy'
    >>> cnnfast.set_algorithm(None)
    """
    global _global_pin
    name = _checked_pin(name)
    _global_pin = None if name == "auto" else name


@contextlib.contextmanager
def use_algorithm(name: Optional[str]) -> Iterator[None]:
    """Context manager: pin ``name`` inside the ``with`` block (per thread and per
    asyncio task; ``None`` or ``"auto"``: no pin in the block, whatever
    ``set_algorithm`` says).

    Parameters
    ----------
    name : str or None
        An algorithm name of some backend's ``ALGORITHMS``; ``None`` or ``"auto"``
        for no pin inside the block.

    Raises
    ------
    TypeError
        ``name`` is not a str or None.
    ValueError
        ``name`` is in no backend's vocabulary.

    Examples
    --------
    >>> import numpy as np, cnnfast
    >>> with cnnfast.use_algorithm("tap-matmul"):
    ...     y = cnnfast.conv2d(np.ones((1, 1, 3, 3)), np.ones((1, 1, 2, 2)))
    >>> y[0, 0]
    array([[4., 4.],
           [4., 4.]])
    """
    token = _context_pin.set(_checked_pin(name))
    try:
        yield
    finally:
        _context_pin.reset(token)


def pinned() -> Optional[str]:
    """The pinned algorithm (context, else global), or ``None``."""
    name = _context_pin.get()
    if name is None:
        name = _global_pin
    return None if name in (None, "auto") else name


# ----------------------------------------------------------------------------- the key


@functools.lru_cache(maxsize=None)
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else ``platform``) and architecture."""
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                field, _, value = line.partition(":")
                if field.strip().lower() in ("model name", "hardware", "cpu model"):
                    model = value.strip()
                    break
    except OSError:
        pass
    if not model:
        model = platform.processor() or "unknown"
    return f"{model} ({platform.machine() or 'unknown'})"


@functools.lru_cache(maxsize=None)
def _gpu_model(device_id: int) -> str:
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(device_id)
    name = props.get("name", b"unknown")
    name = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
    return f"{name} (sm_{props.get('major', 0)}{props.get('minor', 0)})"


def _device(kind) -> str:
    if kind == "cupy":
        import cupy

        return _gpu_model(cupy.cuda.Device().id)
    return cpu_model()


def _isa(backend_name) -> Optional[str]:
    """The SIMD path the backend's kernels run now, where it has several (cpp)."""
    ext = getattr(registry.get_backend(backend_name).module, "_cpp", None)
    fn = getattr(ext, "kernel_path", None)  # simd_path, or the test switch's choice
    return fn() if fn is not None else None


_key_memo: dict = {}


def make_key(op, kind, dtype, p, backend_name, shapes) -> str:
    """The cache key of a call, as compact JSON (see the module docstring)."""
    needs = shapes.get("needs")
    threads, isa, flush = get_num_threads(), _isa(backend_name), get_flush_denormal()
    memo_key = (op, kind, dtype, p, backend_name, tuple(shapes["x_shape"]),
                tuple(shapes["w_shape"]), needs, threads, isa, flush)
    key = _key_memo.get(memo_key)
    if key is None:
        key = json.dumps({
            "op": op, "backend": backend_name, "dtype": dtype,
            "x": [int(v) for v in shapes["x_shape"]],
            "w": [int(v) for v in shapes["w_shape"]],
            "needs": sorted(needs) if needs is not None else None,
            "stride": list(p.stride), "padding": [list(v) for v in p.padding],
            "dilation": list(p.dilation), "groups": p.groups,
            "output_padding": list(p.output_padding), "transposed": p.transposed,
            "threads": threads, "flush_denormal": flush, "isa": isa,
            "device": _device(kind), "version": __version__,
        }, sort_keys=True, separators=(",", ":"))
        if len(_key_memo) >= MAX_ENTRIES:
            _key_memo.clear()
        _key_memo[memo_key] = key
    return key


def _work(op, p, shapes) -> float:
    """Multiply-adds of the call's convolution kernels."""
    x_shape, w_shape = shapes["x_shape"], shapes["w_shape"]
    spatial = x_shape[2:] if p.transposed else p.out_shape
    one = float(x_shape[0]) * float(math.prod(w_shape)) * float(math.prod(spatial))
    needs = shapes.get("needs")
    return one * (1 if needs is None else len({"x", "weight"} & set(needs)))


# ----------------------------------------------------------------------------- cache file


def cache_path() -> Optional[Path]:
    """Where the cache lives (see the module docstring); ``None`` without a home."""
    env = os.environ.get("CNNFAST_CACHE_DIR", "").strip()
    memo_key = (env, os.environ.get("XDG_CACHE_HOME", ""), os.environ.get("HOME", ""))
    if memo_key not in _path_memo:
        _path_memo.clear()
        _path_memo[memo_key] = _cache_path(env)
    return _path_memo[memo_key]


_path_memo: dict = {}


def _cache_path(env) -> Optional[Path]:
    try:
        if env:
            base = Path(env).expanduser()
        elif sys.platform == "win32":
            local = os.environ.get("LOCALAPPDATA")
            base = (Path(local) if local else Path.home() / "AppData" / "Local") / \
                "cnnfast" / "Cache"
        elif sys.platform == "darwin":
            base = Path.home() / "Library" / "Caches" / "cnnfast"
        else:
            xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
            base = (Path(xdg) if xdg else Path.home() / ".cache") / "cnnfast"
    except RuntimeError:  # no home directory: the choices live for the process only
        return None
    return base / FILE_NAME


_lock = threading.RLock()
_loaded: dict = {}  # path -> {key: entry}, what this process knows
_mine: dict = {}  # path -> {key: entry}, what this process timed (merged on write)
_warned: set = set()
_candidates_memo: dict = {}


def _reset() -> None:
    """Forget everything held in memory (as a new process would); for tests."""
    with _lock:
        _loaded.clear()
        _mine.clear()
        _warned.clear()
        _candidates_memo.clear()
        _key_memo.clear()
        _params_memo.clear()
        _path_memo.clear()


def _warn_once(path, what, message) -> None:
    if (str(path), what) not in _warned:
        _warned.add((str(path), what))
        warnings.warn(message, AutotuneCacheWarning, stacklevel=3)


def _valid_entry(entry) -> bool:
    return (isinstance(entry, dict) and isinstance(entry.get("algorithm"), str)
            and isinstance(entry.get("time"), (int, float))
            and isinstance(entry.get("seconds", {}), dict))


def _read(path: Path) -> dict:
    """The entries of the file at ``path``; ``{}`` (with one warning) when it is
    missing, unreadable, corrupt or of another format version."""
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):  # written on the first choice
        return {}
    except (OSError, ValueError) as exc:  # ValueError: not UTF-8
        _warn_once(path, "read", f"cannot read the autotune cache {path} ({exc}); "
                                 f"ignoring it")
        return {}
    why: Optional[str]
    try:
        data = json.loads(text)
    except ValueError as exc:
        data, why = None, f"not valid JSON: {exc}"
    else:
        why = None
    if why is None and (not isinstance(data, dict) or data.get("format") != FORMAT):
        why = f"not a {FORMAT} file"
    if why is None and data.get("version") != FORMAT_VERSION:
        why = (f"format version {data.get('version')!r}, this cnnfast reads version "
               f"{FORMAT_VERSION}")
    if why is None and not isinstance(data.get("entries"), dict):
        why = "no entries object"
    if why is not None:
        _warn_once(path, "read", f"the autotune cache {path} is ignored ({why}); it will "
                                 f"be replaced when a new choice is timed")
        return {}
    entries = {k: v for k, v in data["entries"].items() if _valid_entry(v)}
    if len(entries) != len(data["entries"]):
        _warn_once(path, "read", f"the autotune cache {path} has "
                                 f"{len(data['entries']) - len(entries)} malformed "
                                 f"entries; they are ignored")
    return entries


def _newest(entries: dict) -> dict:
    if len(entries) <= MAX_ENTRIES:
        return entries
    keep = sorted(entries, key=lambda k: entries[k]["time"])[-MAX_ENTRIES:]
    return {k: entries[k] for k in keep}


def _entries(path) -> dict:
    """What this process knows of the cache at ``path`` (read on first use)."""
    entries = _loaded.get(path)
    if entries is None:
        with _lock:
            entries = _loaded.get(path)
            if entries is None:
                entries = _loaded[path] = _newest(_read(path)) if path is not None else {}
    return entries


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive lock on ``<path>.lock`` where the platform has ``fcntl`` (so that
    two processes' read-merge-writes do not drop each other's entries); no lock
    elsewhere or when it cannot be taken."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    try:
        handle = open(str(path) + ".lock", "a")
    except OSError:
        yield
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:
            pass
        yield


def _write(path: Path, entries: dict) -> None:
    data = json.dumps({"format": FORMAT, "version": FORMAT_VERSION,
                       "cnnfast": __version__, "entries": entries}, indent=1,
                      sort_keys=True).encode("utf-8")
    write_atomic(path, lambda f: f.write(data), prefix=".autotune-", mode=0o644,
                 fsync=True)


def _record(path, key, entry) -> None:
    """Remember ``entry`` for ``key`` in memory and in the file (merged with it)."""
    with _lock:
        mine = _mine.setdefault(path, {})
        mine[key] = entry
        _mine[path] = mine = _newest(mine)
        if path is None:
            _loaded[path] = _newest({**_entries(path), key: entry})
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with _file_lock(path):
                merged = _newest({**_read(path), **mine})
                _write(path, merged)
        except OSError as exc:
            _warn_once(path, "write", f"cannot write the autotune cache {path} ({exc}); "
                                      f"the autotuned choices last for this process only")
            merged = _newest({**_entries(path), **mine})
        _loaded[path] = merged


# ----------------------------------------------------------------------------- tuning


def _measure(run, algorithm) -> float:
    """Seconds one ``run()`` of ``algorithm`` takes (the timer hook tests replace)."""
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def _synchronizer(kind):
    if kind != "cupy":
        return lambda: None
    import cupy

    return lambda: cupy.cuda.get_current_stream().synchronize()


class Plan:
    """What autotuning does for one call: ``reason`` (not timed, and why), ``winner``
    (the cached choice) or ``candidates`` (to time)."""

    def __init__(self, op, kind, dtype, p, backend_name, shapes):
        self.op, self.kind, self.dtype, self.p = op, kind, dtype, p
        self.backend_name, self.shapes = backend_name, shapes
        self.reason: Optional[str] = None
        self.winner: Optional[str] = None
        self.key: Optional[str] = None
        self.path: Optional[Path] = None
        self.candidates: tuple = ()
        backend = registry.get_backend(backend_name)
        if backend_name in NOT_TUNED:
            self.reason = NOT_TUNED[backend_name]
            return
        if len(backend.algorithms) < 2:
            self.reason = f"backend {backend_name!r} has one algorithm"
            return
        needs = shapes.get("needs")
        if needs is not None and not {"x", "weight"} & set(needs):
            self.reason = "no convolution kernel in this call"
            return
        self.key = make_key(op, kind, dtype, p, backend_name, shapes)
        self.path = cache_path()
        entry = _entries(self.path).get(self.key)
        if entry is not None and (entry["algorithm"] == "auto"
                                  or entry["algorithm"] in backend.algorithms):
            self.winner = entry["algorithm"]
            return
        if kind != "cupy" and _work(op, p, shapes) > MAX_WORK:
            self.reason = (f"over {MAX_WORK:.0e} multiply-adds, too long to time every "
                           f"candidate")
            return
        candidates = _candidates_memo.get(self.key)
        if candidates is None:
            candidates = _candidates(op, dtype, p, backend, shapes)
            if len(_candidates_memo) >= MAX_ENTRIES:
                _candidates_memo.clear()
            _candidates_memo[self.key] = candidates
        if len(candidates) < 2:
            self.reason = "only the backend's own choice can run this case"
            return
        self.candidates = candidates

    def params(self, algorithm):
        return _with_algorithm(self.p, algorithm)

    def describe(self) -> str:
        """``explain``'s line on autotuning."""
        if self.reason is not None:
            return f"autotune: not timed ({self.reason})"
        if self.winner is not None:
            return f"autotuned: {self.winner} (cached)"
        return f"autotune: would time candidates {', '.join(self.candidates)}"

    def apply(self, kernel):
        """``(kernel, params)`` of the call: ``kernel`` with the cached winner, or a
        kernel that times the candidates on its arguments first and then runs the
        winner. The kernels take the params at position 3 (``conv(x, w, b, p)``,
        ``conv_backward(gy, x, w, p, needs)``)."""
        if self.winner is not None:
            return kernel, self.params(self.winner)
        if not self.candidates:
            return kernel, self.p

        def tune_and_run(*args):
            winner = self.tune(kernel, args)
            return kernel(*args[:3], self.params(winner), *args[4:])

        return tune_and_run, self.p

    def tune(self, kernel, args) -> str:
        """Time the candidates on ``args``, record and return the winner."""
        sync = _synchronizer(self.kind)
        seconds: dict[str, float] = {}
        best: Optional[float] = None
        for algorithm in self.candidates:
            call_args = args[:3] + (self.params(algorithm),) + args[4:]

            def run(call_args=call_args):
                kernel(*call_args)
                sync()

            try:
                run()  # untimed: numba compiles, caches warm up
            except (NotImplementedError, MemoryError):
                if algorithm == "auto":
                    raise  # what the call itself would raise
                continue
            samples = [_measure(run, algorithm)]
            if best is None or samples[0] <= SLOW_FACTOR * best:
                samples += [_measure(run, algorithm) for _ in range(REPEATS - 1)]
            seconds[algorithm] = float(statistics.median(samples))
            best = seconds[algorithm] if best is None else min(best, seconds[algorithm])
        winner = min(seconds, key=seconds.__getitem__)
        if "auto" in seconds and seconds["auto"] <= seconds[winner] * KEEP_AUTO_WITHIN:
            winner = "auto"
        _record(self.path, self.key, {"algorithm": winner, "seconds": seconds,
                                      "time": time.time()})
        return winner


_params_memo: dict = {}


def _with_algorithm(p, algorithm):
    """``p`` with ``algorithm`` (memoised: ``dataclasses.replace`` costs microseconds)."""
    if algorithm == "auto":
        return p
    found = _params_memo.get((p, algorithm))
    if found is None:
        if len(_params_memo) >= MAX_ENTRIES:
            _params_memo.clear()
        found = _params_memo[(p, algorithm)] = replace(p, algorithm=algorithm)
    return found


def _candidates(op, dtype, p, backend, shapes) -> tuple:
    """``"auto"`` and the backend's algorithms that can run the case: those its
    ``explain`` does not refuse (no kernel runs); all of them without an ``explain``
    (the timing then skips those that raise ``NotImplementedError``)."""
    describe = getattr(backend.module, "explain", None)
    fits = ["auto"]
    for algorithm in backend.algorithms:
        if describe is not None:
            try:
                describe(op, replace(p, algorithm=algorithm), dtype, **shapes)
            except NotImplementedError:
                continue
        fits.append(algorithm)
    return tuple(fits)


def plan(op, kind, dtype, p, backend_name, shapes) -> Plan:
    """The autotuning plan of a convolution call left to ``algorithm="auto"``."""
    return Plan(op, kind, dtype, p, backend_name, shapes)
