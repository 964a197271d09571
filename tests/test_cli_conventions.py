"""The ecosystem's conventions in the command line and the tools: ``--version``,
progress through tqdm when it is installed (the built-in bar otherwise,
``TQDM_DISABLE`` honoured by both), library messages through ``logging``, pictures
drawn without touching matplotlib's backend, ``cnnfast bench``'s measured peaks,
its ratio chart and its early ``--plot`` check, and ``cnnfast demo`` on the GPU
backend (a stand-in cupy here)."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from cnnfast import registry
from cnnfast.bench import report
from cnnfast.bench.results import check_document
from cnnfast.cli import main
from cnnfast.nn.training import Progress
from test_bench_cli import FAKE_CUPY, FAKE_GPU_BACKEND, FAST, TINY_SUITE

ROOT = Path(__file__).resolve().parent.parent


def _python(code, *args, env=None, timeout=180):
    """Run ``code`` in a fresh interpreter from the repository root."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def suite(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_SUITE)
    return path


@pytest.fixture
def no_tqdm(monkeypatch):
    """tqdm made unimportable (``import tqdm`` raises ImportError)."""
    for name in ("tqdm", "tqdm.auto", "tqdm.std", "tqdm.autonotebook"):
        monkeypatch.setitem(sys.modules, name, None)


# ----------------------------------------------------------------------------- version


def test_version_option_prints_the_package_version():
    from cnnfast import __version__

    proc = _python("import sys; from cnnfast.cli import main; sys.exit(main())", "--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"cnnfast {__version__}"


# ----------------------------------------------------------------------------- progress


def _drive(bar, steps=20, text="loss 0.5"):
    for i in range(1, steps + 1):
        bar.update(i, text, final=i == steps)


def test_progress_uses_tqdm_when_installed(monkeypatch):
    pytest.importorskip("tqdm")
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    stream = io.StringIO()
    bar = Progress(20, "epoch 1", stream)
    assert bar.kind == "tqdm"
    _drive(bar)
    out = stream.getvalue()
    # tqdm's format: percentage, count, elapsed<remaining (the ETA), rate with the unit.
    assert "epoch 1: 100%" in out and "20/20 [" in out and "batch/s" in out, out
    assert "loss 0.5" in out


def test_progress_builtin_bar_without_tqdm(no_tqdm, monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    stream = io.StringIO()
    bar = Progress(20, "epoch 1", stream)
    assert bar.kind == "builtin"
    _drive(bar)
    lines = stream.getvalue().splitlines()
    # Not a terminal: a line per tenth of the epoch, the last one at 20/20.
    assert lines[-1] == "epoch 1 20/20 loss 0.5"
    assert 10 <= len(lines) <= 11
    with pytest.raises(ImportError, match="needs tqdm"):
        Progress(3, bar="tqdm")


def test_progress_builtin_bar_on_a_terminal_keeps_messages_above_it(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    bar = Progress(4, "bench", stream, bar="builtin")
    bar.update(1, "a", final=False)
    bar.write("a message")
    bar.update(4, "b", final=True)
    out = stream.getvalue()
    assert "\rbench [######..................] 1/4 a" in out
    # The message clears the bar's line, then the bar is redrawn below it.
    assert "\r\x1b[Ka message\nbench [######" in out
    assert out.endswith("4/4 b\x1b[K\n")


@pytest.mark.parametrize("kind", ["tqdm", "builtin"])
def test_tqdm_disable_silences_either_bar(kind, monkeypatch):
    if kind == "tqdm":
        pytest.importorskip("tqdm")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    stream = io.StringIO()
    bar = Progress(20, "epoch 1", stream, bar=kind)
    _drive(bar)
    bar.close()
    assert stream.getvalue() == ""
    bar.write("still shown")  # messages are not progress
    assert "still shown" in stream.getvalue()


def _tiny_trainer():
    from cnnfast.nn.optim import SGD
    from cnnfast.nn.training import Trainer, dense_model

    model = dense_model((1, 4, 4), classes=3, seed=0, backend="numpy")
    return Trainer(model, SGD(0.1), batch_size=4, seed=0)


def _tiny_data():
    rng = np.random.default_rng(0)
    return (rng.integers(0, 256, (16, 1, 4, 4), dtype=np.uint8),
            rng.integers(0, 3, 16))


def test_trainer_progress_through_tqdm_when_installed(monkeypatch):
    pytest.importorskip("tqdm")
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    stream = io.StringIO()
    _tiny_trainer().train_epoch(*_tiny_data(), stream=stream)
    out = stream.getvalue()
    assert "epoch 1: 100%" in out and "4/4 [" in out and "img/s" in out, out


def test_trainer_progress_builtin_without_tqdm(no_tqdm, monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    stream = io.StringIO()
    _tiny_trainer().train_epoch(*_tiny_data(), stream=stream)
    lines = stream.getvalue().splitlines()
    assert lines and lines[-1].startswith("epoch 1 4/4 ") and "%" not in lines[-1]


# ----------------------------------------------------------------------------- logging


def test_visualize_reports_skipped_pictures_through_logging(tmp_path, caplog):
    pytest.importorskip("matplotlib")
    from cnnfast.nn.training import dense_model
    from cnnfast.viz import visualize

    model = dense_model((1, 4, 4), classes=3, seed=0, backend="numpy")
    images = np.zeros((2, 1, 4, 4), np.uint8)
    with caplog.at_level(logging.INFO, logger="cnnfast"):
        assert visualize(model, images, tmp_path / "pics") == []
    messages = [(r.name, r.getMessage()) for r in caplog.records]
    assert ("cnnfast.viz", "no metrics history: curves.png skipped") in messages
    assert ("cnnfast.viz", "no top-level convolution: gradcam.png skipped") in messages


def test_bench_runner_reports_progress_through_logging(suite, caplog):
    from cnnfast.bench.impls import make_impls
    from cnnfast.bench.runner import Settings, run_cases
    from cnnfast.bench.suite import load_suite, select_cases

    cases = select_cases(load_suite(suite), shapes=["t.maxpool"])
    impls, _ = make_impls(["numpy"], reference=False)
    with caplog.at_level(logging.INFO, logger="cnnfast"):
        rows = run_cases(cases, ["forward"], impls,
                         Settings(repeat=1, min_time=0.0, pause=0.0, threads=1))
    assert len(rows) == 1
    messages = [r.getMessage() for r in caplog.records if r.name == "cnnfast.bench"]
    assert messages[0].startswith("[1/1] t.maxpool forward")
    assert messages[1].lstrip().startswith("numpy ")


# ----------------------------------------------------------------------------- matplotlib


def test_pictures_leave_matplotlib_backend_and_pyplot_alone(tmp_path):
    """The drawing code uses Figure + FigureCanvasAgg: the user's backend stays
    selected and pyplot (with its global figure manager) is never imported."""
    pytest.importorskip("matplotlib")
    proc = _python("""
        import sys
        import matplotlib
        before = matplotlib.get_backend()
        from cnnfast import viz
        from cnnfast.bench import report
        sys.path.insert(0, "tests")
        from test_bench_results import document, row
        out = sys.argv[1]
        viz.plot_curves([{"epoch": 1, "train_loss": 1.0}, {"epoch": 2, "train_loss": 0.5}],
                        out + "/curves.png")
        viz.plot_confusion([[3, 1], [0, 4]], ["a", "b"], out + "/confusion.png")
        report.plot([document([row(), row(impl="torch")])], out + "/bench.png")
        assert matplotlib.get_backend() == before, (before, matplotlib.get_backend())
        assert "matplotlib.pyplot" not in sys.modules
        print("ok", before)
    """, str(tmp_path), env={"MPLBACKEND": "svg"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["ok", "svg"]
    for name in ("curves.png", "confusion.png", "bench.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


# ----------------------------------------------------------------------------- bench


def _ratio_docs():
    from test_bench_results import document, row

    def with_ref(r, ref="torch"):
        r.update(reference=ref, vs_reference=0.05 / r["median_s"])
        return r

    return [document([row(case="a", median=0.1, iqr=0.02),
                      row(case="a", impl="torch", median=0.05, iqr=0.01),
                      with_ref(row(case="a", impl="cpp", median=0.025, iqr=0.005)),
                      row(case="b", median=0.2)])]


def test_ratio_bars_span_the_interquartile_ranges():
    docs = _ratio_docs()
    for r in docs[0]["results"]:
        if r["impl"] == "numpy" and r["case"] == "a":
            r.update(reference="torch", vs_reference=0.5)
    bars = report.ratio_bars(docs)
    assert [(c, op) for c, op, _ in bars] == [("a", "forward")]  # b has no reference
    (numpy, r, lo, hi), (cpp, r2, lo2, hi2) = bars[0][2]
    assert (numpy, cpp) == ("numpy", "cpp")
    # ref q1 / q3 <= ratio <= ref q3 / q1
    assert r == pytest.approx(0.5) and lo == pytest.approx(0.045 / 0.11)
    assert hi == pytest.approx(0.055 / 0.09)
    assert r2 == pytest.approx(2.0) and lo2 == pytest.approx(0.045 / 0.0275)
    assert hi2 == pytest.approx(0.055 / 0.0225)


def test_plot_is_the_ratio_chart_when_there_is_a_reference(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "ratio.svg"
    assert report.plot(_ratio_docs(), path) == ["speed relative to torch"]
    text = path.read_text()
    assert text.startswith("<?xml") and "reference time / time" in text


def test_bench_cli_plot_writes_the_ratio_chart(suite, tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("torch")
    path, png = tmp_path / "r.json", tmp_path / "r.png"
    assert main(["bench", "--suite", str(suite), "--backend", "numpy",
                 "--shape", "t.maxpool", "--op", "forward", "--peak-gflops", "100",
                 "--peak-gbs", "10", "--json", str(path), "--plot", str(png), *FAST]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads(path.read_text())
    assert report.ratio_bars([doc])  # what the chart drew: numpy against torch


def test_plot_without_matplotlib_fails_before_the_run(suite, tmp_path):
    path = tmp_path / "never.json"
    proc = _python("""
        import sys
        sys.modules["matplotlib"] = None  # as if matplotlib were not installed
        from cnnfast.cli import main
        sys.exit(main(sys.argv[1:]))
    """, "bench", "--suite", str(suite), "--backend", "numpy", "--json", str(path),
        "--plot", str(tmp_path / "p.png"), *FAST)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "--plot needs matplotlib" in proc.stderr
    assert "cnnfast[bench]" in proc.stderr
    assert not path.exists()  # nothing ran


def test_plot_with_an_unknown_format_fails_before_the_run(suite, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = tmp_path / "never.json"
    assert main(["bench", "--suite", str(suite), "--backend", "numpy", "--json",
                 str(path), "--plot", str(tmp_path / "p.docx"), *FAST]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not 'docx'" in err and "png" in err
    assert not path.exists()


def test_peaks_are_measured_unless_given(suite, tmp_path, capsys):
    measured, given = tmp_path / "m.json", tmp_path / "g.json"
    common = ["bench", "--suite", str(suite), "--backend", "numpy", "--no-reference",
              "--shape", "t.conv.n2,t.maxpool", "--op", "forward", "--threads", "1"]
    assert main([*common, "--json", str(measured), *FAST]) == 0
    assert main([*common, "--json", str(given), "--peak-gflops", "123.5", *FAST]) == 0
    m, g = json.loads(measured.read_text()), json.loads(given.read_text())
    assert check_document(m) == [] and check_document(g) == []
    sm, sg = m["settings"], g["settings"]
    assert sm["peak_gflops"] > 0 and sm["peak_gbs"] > 0
    assert sm["peak_source"]["peak_gflops"].startswith("measured: float32 matmul")
    assert "on 1 threads" in sm["peak_source"]["peak_gflops"]
    assert sm["peak_source"]["peak_gbs"].startswith("measured: copy")
    assert sg["peak_gflops"] == 123.5
    assert sg["peak_source"]["peak_gflops"] == "given (--peak-gflops)"
    assert sg["peak_source"]["peak_gbs"].startswith("measured")
    conv = next(r for r in g["results"] if r["case"] == "t.conv.n2")
    assert conv["peak_fraction"] == pytest.approx(conv["gflops"] / 123.5)
    lines = report.summary_lines(g)
    assert any("a measured and given CPU peak of 123.5 GFLOP/s" in line for line in lines)
    assert "(given)" in report.markdown([g]) and "(measured)" in report.markdown([g])
    assert "--peak-gflops 123.5" in " ".join(g["command"])


def test_peak_probes():
    from cnnfast.bench import peak

    gflops, what = peak.cpu_gflops(1, n=256, min_time=0.0)
    assert gflops > 0.1 and what.startswith("measured: float32 matmul 256x256x256")
    gbs, what = peak.cpu_gbs(2, nbytes=8 << 20, min_time=0.0)
    assert gbs > 0.1 and "copy of 8 MiB on 2 threads" in what


# ----------------------------------------------------------------------------- demo


def test_demo_includes_the_gpu_backend(tmp_path, monkeypatch, capsys):
    """``cnnfast demo`` runs the cupy-array backend by default (inputs copied to the
    device, results copied back for the check); only the CUDA emulator is left out."""
    from cnnfast.cli.demo import default_backends

    assert default_backends(["numpy", "cpp", "cupy", "cuda-emu"]) == ["numpy", "cpp", "cupy"]
    folder = tmp_path / "fakegpu"
    folder.mkdir()
    (folder / "cupy.py").write_text(textwrap.dedent(FAKE_CUPY))
    (folder / "fakegpu_demo_backend.py").write_text(textwrap.dedent(FAKE_GPU_BACKEND))
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, "cupy", raising=False)
    saved, loaded, modules = dict(registry._MODULES), dict(registry._loaded), set(sys.modules)
    registry.register_backend("fakegpu", "fakegpu_demo_backend")
    try:
        assert main(["demo", "--backend", "numpy", "--backend", "fakegpu", "--batch", "2",
                     "--repeat", "1"]) == 0
    finally:
        # Forget whatever saw the stand-in cupy (the real cupy backend's availability
        # included), so that the other tests see this machine as it is.
        with registry._lock:
            registry._MODULES.clear()
            registry._MODULES.update(saved)
            registry._loaded.clear()
            registry._loaded.update(loaded)
        for name in set(sys.modules) - modules:
            if name.split(".")[0] in ("cupy", "fakegpu_demo_backend") or name.startswith(
                    "cnnfast.backends.cuda"):
                sys.modules.pop(name, None)
    out = capsys.readouterr().out
    assert "fakegpu" in out.splitlines()[1]
    rows = [line for line in out.splitlines() if line.startswith(("conv", "max_", "avg_"))]
    assert len(rows) == 8
    assert all(line.count("(0e+00)") == 2 for line in rows), out  # the same results


def test_bench_matplotlib_check_after_matplotlib_was_imported(monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib.figure  # noqa: F401  (loaded, then made unimportable)

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(RuntimeError, match=r"--plot needs matplotlib .*cnnfast\[bench\]"):
        report.require_matplotlib()
