"""``cnnfast bench`` end to end on a tiny suite (one repetition, no pauses): the
outputs it writes, skipped backends with their reasons, n/a cells, wrong results and
errors. Fake backends are registered for the duration of a test only."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from cnnfast import registry
from cnnfast.bench.results import check_document
from cnnfast.cli import main

TINY_SUITE = """
[[case]]
name = "t.conv"
kind = "conv"
batch = [2, 3]
x = [3, 8, 8]
weight = [4, 3, 3, 3]
padding = 1
ops = ["forward", "backward_input", "backward_weight"]
quick = [2]

[[case]]
name = "t.convT"
kind = "conv_transpose"
batch = 2
x = [4, 5, 5]
weight = [4, 2, 4, 4]
stride = 2
padding = 1
bias = true
ops = ["forward", "backward_input"]
quick = true

[[case]]
name = "t.maxpool"
kind = "max_pool"
batch = 2
x = [3, 9, 9]
kernel = 3
stride = 2
padding = 1
ops = ["forward", "backward"]

[[case]]
name = "t.avgpool1d"
kind = "avg_pool"
batch = 2
x = [3, 9]
kernel = 3
stride = 2
padding = 1
count_include_pad = false
ops = ["forward", "backward"]
quick = true
"""

FAST = ["--repeat", "1", "--min-time", "0", "--pause", "0", "--quiet"]

# Fake backends, written as modules into a temporary folder on sys.path.
FAKE_MODULES = {
    # Installed nowhere: availability() gives the reason.
    "fakemissing": """
        ARRAY = "numpy"
        OPS = {}
        def availability():
            return "needs the imaginary FooCore accelerator"
    """,
    # The numpy kernels, but no transposed convolution: n/a cells with the reason.
    "fakepartial": """
        from cnnfast.backends.numpy.backend import OPS as _OPS
        ARRAY = "numpy"
        DTYPES = ("float32", "float64")
        OPS = dict(_OPS)
        def unsupported(op, params, dtype):
            if op.startswith("conv_transpose"):
                return "fakepartial has no transposed convolution"
            return None
    """,
    # A fast wrong answer (conv only), and a kernel that crashes (avg_pool).
    "fakewrong": """
        from cnnfast.backends.numpy.backend import OPS as _OPS
        ARRAY = "numpy"
        OPS = dict(_OPS)
        def _conv(x, w, b, p):
            return _OPS["conv"](x, w, b, p) + 1
        def _boom(x, p):
            raise RuntimeError("kaboom")
        def _declines(*args):
            raise NotImplementedError("declined at run time")
        OPS["conv"] = _conv
        OPS["avg_pool"] = _boom
        OPS["max_pool"] = _declines
    """,
    # A path record that alternates between calls (as autotuning might).
    "fakepaths": """
        from cnnfast.backends.numpy.backend import OPS as _OPS
        ARRAY = "numpy"
        OPS = dict(_OPS)
        _calls = [0]
        _last = {}
        def _conv(x, w, b, p):
            _last.clear()
            _last["y"] = "even" if _calls[0] % 2 == 0 else "odd"
            _calls[0] += 1
            return _OPS["conv"](x, w, b, p)
        OPS["conv"] = _conv
        def last_paths():
            return dict(_last)
    """,
    # Ctrl-C in the middle of a run.
    "fakeinterrupt": """
        from cnnfast.backends.numpy.backend import OPS as _OPS
        ARRAY = "numpy"
        OPS = dict(_OPS)
        def _stop(x, p):
            raise KeyboardInterrupt
        OPS["avg_pool"] = _stop
    """,
}


@pytest.fixture
def suite(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_SUITE)
    return path


@pytest.fixture
def fake_backends(tmp_path, monkeypatch):
    folder = tmp_path / "fakes"
    folder.mkdir()
    for name, source in FAKE_MODULES.items():
        (folder / f"{name}_bench_backend.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(folder))
    saved_modules = dict(registry._MODULES)
    for name in FAKE_MODULES:
        registry.register_backend(name, f"{name}_bench_backend")
    yield list(FAKE_MODULES)
    # Leave the registry exactly as it was for the other tests.
    with registry._lock:
        registry._MODULES.clear()
        registry._MODULES.update(saved_modules)
        for name in FAKE_MODULES:
            registry._loaded.pop(name, None)
    for name in FAKE_MODULES:
        sys.modules.pop(f"{name}_bench_backend", None)


def _rows(doc, **match):
    return [r for r in doc["results"] if all(r[k] == v for k, v in match.items())]


def test_cli_writes_json_markdown_and_table(suite, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["bench", "--suite", str(suite), "--backend", "numpy", "--no-reference",
               "--json", str(out / "r.json"), "--markdown", str(out / "r.md"), *FAST])
    assert rc == 0
    doc = json.loads((out / "r.json").read_text())
    assert check_document(doc) == []
    # Every case of the suite, each of its ops, once per implementation.
    assert {(r["case"], r["op"]) for r in doc["results"]} == {
        (c, op) for c in ("t.conv.n2", "t.conv.n3")
        for op in ("forward", "backward_input", "backward_weight")} | {
        ("t.convT", "forward"), ("t.convT", "backward_input"),
        ("t.maxpool", "forward"), ("t.maxpool", "backward"),
        ("t.avgpool1d", "forward"), ("t.avgpool1d", "backward")}
    assert doc["backends"]["run"] == ["numpy"]
    assert all(r["status"] == "ok" and len(r["times_s"]) == 1 for r in doc["results"])
    conv = _rows(doc, case="t.conv.n2", op="forward")[0]
    # 2 * N * C_out * prod(out) * C_in * prod(k)
    assert conv["flops"] == 2 * 2 * 4 * 64 * 3 * 9
    assert conv["gflops"] == pytest.approx(conv["flops"] / conv["median_s"] / 1e9)
    pool = _rows(doc, case="t.maxpool", op="forward")[0]
    assert pool["bytes"] == (2 * 3 * 81 + 2 * 3 * 25) * 4 + 2 * 3 * 25 * 8
    assert doc["machine"]["threads"] == doc["settings"]["threads"] >= 1
    assert doc["command"][:2] == ["cnnfast", "bench"] and "--no-reference" in doc["command"]
    md = (out / "r.md").read_text()
    assert "| t.conv.n2 | forward |" in md and "| numpy |" in md
    table = capsys.readouterr().out
    assert "t.avgpool1d" in table and "GFLOP/s" in table and "GB/s" in table
    assert not list(out.glob("*.tmp"))  # the atomic write left nothing behind


def test_quick_shape_and_op_filters(suite, tmp_path):
    path = tmp_path / "q.json"
    rc = main(["bench", "--suite", str(suite), "--backend", "numpy", "--no-reference",
               "--quick", "--shape", "t.conv", "--op", "forward,backward_weight",
               "--json", str(path), *FAST])
    assert rc == 0
    doc = json.loads(path.read_text())
    # quick keeps batch 2 of t.conv (not 3) and t.convT; backward_weight is not an op
    # of t.convT in this suite.
    assert sorted({(r["case"], r["op"]) for r in doc["results"]}) == [
        ("t.conv.n2", "backward_weight"), ("t.conv.n2", "forward"), ("t.convT", "forward")]


def test_torch_reference_ratio_and_check(suite, tmp_path):
    pytest.importorskip("torch")
    path = tmp_path / "t.json"
    rc = main(["bench", "--suite", str(suite), "--backend", "numpy", "--json", str(path),
               *FAST])
    assert rc == 0
    doc = json.loads(path.read_text())
    assert "torch" in doc["backends"]["run"]
    for row in _rows(doc, impl="torch"):
        # torch agrees with the numpy oracle on every case, 1-d pooling included.
        assert row["status"] == "ok" and row["check"] == "ok", row
    for row in _rows(doc, impl="numpy"):
        assert row["check"] == "oracle" and row["reference"] == "torch"
        ref = _rows(doc, impl="torch", case=row["case"], op=row["op"])[0]
        assert row["vs_reference"] == pytest.approx(ref["median_s"] / row["median_s"])


def test_missing_backends_are_skipped_with_reason(suite, tmp_path, fake_backends, capsys):
    path = tmp_path / "s.json"
    rc = main(["bench", "--suite", str(suite), "--backend", "numpy,fakemissing",
               "--shape", "t.conv.n2", "--op", "forward", "--json", str(path), *FAST])
    assert rc == 0
    doc = json.loads(path.read_text())
    skipped = doc["backends"]["skipped"]
    assert skipped["fakemissing"] == "needs the imaginary FooCore accelerator"
    assert "fakemissing" not in {r["impl"] for r in doc["results"]}
    out = capsys.readouterr().out
    assert "skipped fakemissing: needs the imaginary FooCore accelerator" in out
    try:
        import torch
    except ImportError:
        assert skipped["torch"].startswith("torch is not installed")
    else:
        assert "torch" in doc["backends"]["run"]
        if not torch.cuda.is_available():  # no GPU backend asked for: no torch-cuda row
            assert "torch-cuda" not in doc["backends"]["run"]


def test_default_backends_exclude_cuda_emu_with_reason():
    # make_impls(None) is what the CLI uses without --backend (not run here: the
    # JIT backends would spend the CI budget compiling).
    from cnnfast.bench.impls import make_impls

    impls, skipped = make_impls(None)
    run = [i.name for i in impls]
    assert "cuda-emu" not in run
    assert "slow debugging backend" in skipped["cuda-emu"]
    # Every registered backend and both references are run or skipped with a reason.
    assert set(run) | set(skipped) == set(registry.backend_names()) | {"torch",
                                                                       "torch-cuda"}
    assert all(isinstance(r, str) and r for r in skipped.values())
    assert "numpy" in run


def test_unsupported_case_is_na_with_reason(suite, tmp_path, fake_backends):
    path = tmp_path / "n.json"
    md = tmp_path / "n.md"
    rc = main(["bench", "--suite", str(suite), "--backend", "numpy,fakepartial",
               "--no-reference", "--shape", "t.convT,t.conv.n2", "--op", "forward",
               "--json", str(path), "--markdown", str(md), *FAST])
    assert rc == 0
    doc = json.loads(path.read_text())
    assert check_document(doc) == []
    na = _rows(doc, impl="fakepartial", case="t.convT")[0]
    assert na["status"] == "n/a" and "no transposed convolution" in na["reason"]
    assert na["median_s"] is None
    ok = _rows(doc, impl="fakepartial", case="t.conv.n2")[0]
    assert ok["status"] == "ok" and ok["check"] == "ok"
    assert "n/a: fakepartial has no transposed convolution" in md.read_text()


def test_wrong_results_and_errors_fail_the_run(suite, tmp_path, fake_backends, capsys):
    path = tmp_path / "w.json"
    rc = main(["bench", "--suite", str(suite), "--backend", "numpy,fakewrong",
               "--no-reference", "--shape", "t.conv.n2,t.maxpool,t.avgpool1d",
               "--op", "forward", "--json", str(path), *FAST])
    assert rc == 1  # the outputs are still written
    doc = json.loads(path.read_text())
    assert check_document(doc) == []
    wrong = _rows(doc, impl="fakewrong", case="t.conv.n2")[0]
    assert wrong["status"] == "ok" and wrong["check"] == "mismatch"
    assert wrong["max_rel_error"] > 1e-3
    crash = _rows(doc, impl="fakewrong", case="t.avgpool1d")[0]
    assert crash["status"] == "error" and "kaboom" in crash["reason"]
    declined = _rows(doc, impl="fakewrong", case="t.maxpool")[0]
    assert declined["status"] == "n/a" and declined["reason"] == "declined at run time"
    err = capsys.readouterr().err
    assert "FAILED t.conv.n2 forward fakewrong" in err
    assert "FAILED t.avgpool1d forward fakewrong: RuntimeError: kaboom" in err


@pytest.mark.parametrize("argv, message", [
    (["--backend", "nosuch"], "--backend 'nosuch'"),
    (["--op", "sideways"], "--op 'sideways'"),
    (["--shape", "zzz-no-case"], "no case of the suite matches"),
    (["--repeat", "0"], "argument --repeat: expected an int >= 1"),
])
def test_bad_usage_exits_2(suite, argv, message, capsys):
    assert main(["bench", "--suite", str(suite), *FAST, *argv]) == 2
    assert message in capsys.readouterr().err


def test_bad_suite_file_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[case]]\nname = "x"\nkind = "conv"\nx = [3, 8]\nops = ["forward"]\n')
    assert main(["bench", "--suite", str(bad)]) == 2
    assert "missing key 'weight'" in capsys.readouterr().err


def test_list_shows_the_packaged_quick_subset(capsys):
    assert main(["bench", "--quick", "--list"]) == 0
    listed = capsys.readouterr().out.split("\n")
    names = [line.split()[0] for line in listed if line.strip()]
    assert "resnet.conv3x3.c64" in names and "fmnist.conv1.n64" in names
    assert "fmnist.conv1.n128" not in names  # not in the quick subset


def test_load_renders_saved_runs_side_by_side(suite, tmp_path, capsys):
    path = tmp_path / "a.json"
    assert main(["bench", "--suite", str(suite), "--backend", "numpy", "--no-reference",
                 "--op", "forward", "--json", str(path), *FAST]) == 0
    # A "GPU" run: the same document with its rows relabelled as another device.
    doc = json.loads(path.read_text())
    doc["machine"]["gpu"] = "NVIDIA Testla T1"
    for row in doc["results"]:
        row.update(impl="cupy", device="gpu", device_name="NVIDIA Testla T1")
    gpu = tmp_path / "g.json"
    gpu.write_text(json.dumps(doc))
    md = tmp_path / "both.md"
    capsys.readouterr()
    assert main(["bench", "--load", str(path), str(gpu), "--markdown", str(md)]) == 0
    text = md.read_text()
    assert "| numpy (CPU) | cupy (Testla T1) |" in text
    assert "GPU: NVIDIA Testla T1" in text
    assert main(["bench", "--load", str(tmp_path / "missing.json")]) == 2


def test_plot(suite, tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "p.json"
    png = tmp_path / "p.png"
    assert main(["bench", "--suite", str(suite), "--backend", "numpy", "--no-reference",
                 "--json", str(path), "--plot", str(png), *FAST]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pytest_benchmark_suite_collects_and_runs(suite, tmp_path):
    """``pytest benchmarks/`` on the tiny suite, benchmarks disabled (each call runs
    once): the parametrisation, the warm-up and the skips with reasons work."""
    pytest.importorskip("pytest_benchmark")
    import subprocess
    from pathlib import Path

    from cnnfast.bench.impls import make_impls

    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(root / "benchmarks"), "-q", "-rs",
         "-p", "no:cacheprovider", "--benchmark-disable", "--bench-suite", str(suite),
         "--bench-backend", "numpy,cupy", "--bench-shape", "t.conv.n2,t.avgpool1d",
         "--bench-threads", "1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # 3 conv ops + 2 pool ops for each implementation that runs here.
    impls, skipped = make_impls(["numpy", "cupy"])
    assert f"{5 * len(impls)} passed" in proc.stdout, proc.stdout
    for name, reason in skipped.items():
        assert f"{name} skipped: {reason}"[:60] in proc.stdout, proc.stdout


def test_interrupt_keeps_the_finished_results(suite, tmp_path, fake_backends):
    path = tmp_path / "i.json"
    rc = main(["bench", "--suite", str(suite), "--backend", "numpy,fakeinterrupt",
               "--no-reference", "--shape", "t.conv.n2,t.maxpool,t.avgpool1d",
               "--op", "forward", "--json", str(path), *FAST])
    assert rc == 130
    doc = json.loads(path.read_text())
    assert check_document(doc) == []
    assert doc["settings"]["interrupted"] is True
    # Suite order: t.conv.n2 and t.maxpool finished, the run stopped in t.avgpool1d.
    assert {r["case"] for r in doc["results"]} == {"t.conv.n2", "t.maxpool"}


def test_only_unavailable_backends_is_not_an_error(suite, tmp_path, fake_backends, capsys):
    path, png = tmp_path / "u.json", tmp_path / "u.png"
    rc = main(["bench", "--suite", str(suite), "--backend", "fakemissing",
               "--json", str(path), "--plot", str(png), *FAST])
    assert rc == 0
    doc = json.loads(path.read_text())
    assert check_document(doc) == [] and doc["results"] == []
    assert doc["backends"] == {"run": [], "skipped": {
        "fakemissing": "needs the imaginary FooCore accelerator"}}
    assert not png.exists()
    assert "nothing was timed" in capsys.readouterr().err


FAKE_CUPY = """
    # Just enough of CuPy for the benchmark's GPU path: a wrapper around a numpy
    # array whose class lives in module "cupy" (so cnnfast sees a cupy array).
    import time
    import types

    import numpy as np

    class ndarray:
        def __init__(self, a):
            self.a = np.ascontiguousarray(a)
            self.shape, self.dtype, self.ndim, self.size = (
                self.a.shape, self.a.dtype, self.a.ndim, self.a.size)
        def __array__(self, dtype=None, copy=None):
            return self.a
        def min(self):
            return self.a.min()
        def max(self):
            return self.a.max()

    ndarray.__module__ = "cupy"

    def asarray(a):
        return a if isinstance(a, ndarray) else ndarray(a)

    ascontiguousarray = asarray

    def asnumpy(a):
        return np.array(a.a)

    zeros = lambda shape, dtype: ndarray(np.zeros(shape, dtype))

    class Event:
        recorded = 0
        def record(self):
            Event.recorded += 1
            self.t = time.perf_counter()
        def synchronize(self):
            pass

    class _Stream:
        def synchronize(self):
            pass

    class _Runtime:
        @staticmethod
        def getDeviceCount():
            return 1
        @staticmethod
        def getDeviceProperties(i):
            return {"name": b"Fake GPU 9000"}
        @staticmethod
        def runtimeGetVersion():
            return 12000

    cuda = types.SimpleNamespace(
        Event=Event, runtime=_Runtime,
        get_elapsed_time=lambda a, b: (b.t - a.t) * 1e3,
        get_current_stream=lambda: _Stream())
    __version__ = "0.0-fake"
"""

FAKE_GPU_BACKEND = """
    # The numpy kernels behind the fake cupy arrays: unwrap, compute, wrap.
    import cupy
    import numpy as np
    from cnnfast.backends.numpy.backend import OPS as _OPS

    ARRAY = "cupy"

    def _wrap(r):
        if isinstance(r, tuple):
            return tuple(_wrap(v) for v in r)
        return cupy.ndarray(r) if isinstance(r, np.ndarray) else r

    def _gpu(kernel):
        def run(*args):
            args = [np.asarray(a) if isinstance(a, cupy.ndarray) else a for a in args]
            return _wrap(kernel(*args))
        return run

    OPS = {name: _gpu(kernel) for name, kernel in _OPS.items()}
"""


def test_gpu_path_with_a_fake_cupy(suite, tmp_path, monkeypatch):
    """The GPU branch (CUDA-event timing, transfers, device naming, torch-cuda as the
    reference) on a CPU-only machine, with a stand-in cupy module."""
    folder = tmp_path / "fakegpu"
    folder.mkdir()
    (folder / "cupy.py").write_text(textwrap.dedent(FAKE_CUPY))
    (folder / "fakegpu_bench_backend.py").write_text(textwrap.dedent(FAKE_GPU_BACKEND))
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, "cupy", raising=False)
    saved = dict(registry._MODULES)
    registry.register_backend("fakegpu", "fakegpu_bench_backend")
    try:
        path = tmp_path / "g.json"
        rc = main(["bench", "--suite", str(suite), "--backend", "numpy,fakegpu",
                   "--shape", "t.conv.n2,t.maxpool", "--json", str(path),
                   "--markdown", str(tmp_path / "g.md"), *FAST])
        import cupy
        events = cupy.Event.recorded
    finally:
        with registry._lock:
            registry._MODULES.clear()
            registry._MODULES.update(saved)
            registry._loaded.pop("fakegpu", None)
        sys.modules.pop("cupy", None)
        sys.modules.pop("fakegpu_bench_backend", None)
    assert rc == 0
    doc = json.loads(path.read_text())
    assert check_document(doc) == []
    assert doc["machine"]["gpu"] == "Fake GPU 9000"
    gpu_rows = _rows(doc, impl="fakegpu")
    assert len(gpu_rows) == 5 and all(r["device"] == "gpu" for r in gpu_rows)
    assert all(r["status"] == "ok" and r["check"] == "ok" for r in gpu_rows), gpu_rows
    assert all(r["device_name"] == "Fake GPU 9000" for r in gpu_rows)
    assert events >= 2 * 2 * 5  # start and end events around every timed sample
    # The GPU's reference is torch-cuda: where it cannot run, skipped with a reason,
    # and the GPU rows then have no ratio (never a ratio to the CPU torch).
    if "torch-cuda" in doc["backends"]["run"]:  # a real GPU and a CUDA torch here
        assert all(r["vs_reference"] is not None for r in gpu_rows)
    elif "torch" in doc["backends"]["run"]:
        assert "torch-cuda" in doc["backends"]["skipped"]
        assert all(r["vs_reference"] is None for r in gpu_rows)
        assert all(r["vs_reference"] is not None for r in _rows(doc, impl="numpy"))


# ----------------------------------------------------------------- CPU and algorithm


def test_fresh_run_records_cpu_isa_and_algorithm_keys(suite, tmp_path):
    path = tmp_path / "k.json"
    assert main(["bench", "--suite", str(suite), "--backend", "numpy", "--no-reference",
                 "--shape", "t.conv.n2,t.maxpool", "--json", str(path), *FAST]) == 0
    doc = json.loads(path.read_text())
    assert check_document(doc) == []
    m = doc["machine"]
    for key in ("cpu_vendor", "cpu_family", "cpu_model_number", "cpu_stepping",
                "cpu_flags"):
        assert key in m, key
    assert m["cpu_vendor"] is None or isinstance(m["cpu_vendor"], str)
    for key in ("cpu_family", "cpu_model_number", "cpu_stepping"):
        assert m[key] is None or (isinstance(m[key], int) and not isinstance(m[key], bool))
    assert m["cpu_flags"] is None or all(
        isinstance(k, str) and isinstance(v, bool) for k, v in m["cpu_flags"].items())
    import platform
    from pathlib import Path

    if platform.machine() in ("x86_64", "AMD64") and Path("/proc/cpuinfo").exists():
        assert isinstance(m["cpu_family"], int) and isinstance(m["cpu_model_number"], int)
        assert {"avx2", "fma", "avx512f", "avx512vl", "avx512bw"} <= set(m["cpu_flags"])
    if registry.get_backend("cpp").available:
        assert doc["versions"]["cpp_simd_path"] in ("avx2", "portable")
    # numpy records no path; every row says so explicitly.
    assert all("algorithm" in r and r["algorithm"] is None and r["paths"] is None
               for r in doc["results"])


def test_cpp_rows_record_the_path_explain_and_last_paths_give(suite, tmp_path):
    import numpy as np

    import cnnfast

    cpp = registry.get_backend("cpp")
    if not cpp.available:
        pytest.skip(f"cpp backend unavailable: {cpp.reason}")
    path = tmp_path / "c.json"
    assert main(["bench", "--suite", str(suite), "--backend", "numpy,cpp",
                 "--no-reference", "--shape", "t.conv.n2,t.maxpool", "--json", str(path),
                 "--markdown", str(tmp_path / "c.md"), *FAST]) == 0
    doc = json.loads(path.read_text())
    assert check_document(doc) == []
    # The same case called directly: x (2, 3, 8, 8), weight (4, 3, 3, 3), padding 1.
    x = np.ones((2, 3, 8, 8), np.float32)
    w = np.ones((4, 3, 3, 3), np.float32)
    gy = np.ones((2, 4, 8, 8), np.float32)
    calls = {
        "forward": (("y",), lambda: cnnfast.conv(x, w, padding=1, backend="cpp"),
                    lambda: cnnfast.explain("conv", x, w, padding=1, backend="cpp")),
        "backward_input": (("grad_x",), lambda: cnnfast.conv_backward(
            gy, x, w, padding=1, needs=("x",), backend="cpp"), lambda: cnnfast.explain(
            "conv_backward", gy, x, w, padding=1, needs=("x",), backend="cpp")),
        "backward_weight": (("grad_weight",), lambda: cnnfast.conv_backward(
            gy, x, w, padding=1, needs=("weight",), backend="cpp"), lambda: cnnfast.explain(
            "conv_backward", gy, x, w, padding=1, needs=("weight",), backend="cpp")),
    }
    md = (tmp_path / "c.md").read_text()
    for op, (results, run, explain) in calls.items():
        r = _rows(doc, impl="cpp", case="t.conv.n2", op=op)[0]
        assert r["status"] == "ok", r
        run()
        assert r["paths"] == cpp.module.last_paths()
        assert set(r["paths"]) == set(results)
        assert r["algorithm"] == r["paths"][results[0]]
        # explain names the result (except y) and then the path it would run.
        said = explain()
        prefix = "cpp: " + ("" if results[0] == "y" else results[0] + " ")
        assert said.startswith(prefix + r["algorithm"] + " "), (said, r["algorithm"])
        assert f"`{r['algorithm']}`" in next(
            l for l in md.splitlines() if l.startswith(f"| t.conv.n2 | {op} |"))
    # Poolings record no path (not the previous convolution's).
    pool = _rows(doc, impl="cpp", case="t.maxpool")[0]
    assert pool["algorithm"] is None and pool["paths"] is None


def test_a_path_that_changes_between_samples_is_listed(suite, tmp_path, fake_backends):
    path = tmp_path / "v.json"
    assert main(["bench", "--suite", str(suite), "--backend", "fakepaths",
                 "--no-reference", "--shape", "t.conv.n2", "--op", "forward",
                 "--json", str(path), *FAST, "--repeat", "3"]) == 0
    doc = json.loads(path.read_text())
    assert check_document(doc) == []
    r = _rows(doc, impl="fakepaths")[0]
    # Calls: warm-up (even), calibration (odd), then three samples of one call each:
    # even, odd, even; the row's algorithm is the last timed call's.
    assert r["number"] == 1 and len(r["times_s"]) == 3
    assert r["algorithm"] == "even" and r["paths"] == {"y": "even"}
    assert r["algorithms_seen"] == ["even", "odd"]
