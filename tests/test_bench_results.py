"""The results document (schema checker, atomic writing) and the comparison of two
runs, on synthetic documents."""

from __future__ import annotations

import json
import os

import pytest

from cnnfast.bench import report
from cnnfast.bench.results import (SCHEMA_ID, ResultsError, check_document, load_json,
                                   validate, write_json)
from cnnfast.cli import main


def row(case="c", op="forward", impl="numpy", median=1.0, iqr=0.0, status="ok",
        device="cpu"):
    ok = status == "ok"
    return {
        "case": case, "group": "g", "kind": "conv", "op": op, "impl": impl,
        "device": device, "device_name": None, "status": status,
        "reason": None if ok else "not here", "reference": None,
        "flops": 1000, "bytes": None, "times_s": [median] * 3 if ok else [],
        "number": 1 if ok else 0, "first_call_s": median if ok else None,
        "median_s": median if ok else None,
        "q1_s": median - iqr / 2 if ok else None, "q3_s": median + iqr / 2 if ok else None,
        "min_s": median - iqr if ok else None, "max_s": median + iqr if ok else None,
        "gflops": 1e-6 / median if ok else None, "gbs": None, "peak_fraction": None,
        "vs_reference": None, "check": "unchecked", "max_rel_error": None,
    }


def document(rows):
    return {
        "schema": SCHEMA_ID, "created": "2026-01-01T00:00:00+00:00",
        "command": ["cnnfast", "bench"],
        "machine": {"cpu": "Test CPU", "cores": 2, "threads": 2, "platform": "Linux",
                    "gpu": None},
        "versions": {"cnnfast": "0", "python": "3.11", "numpy": "2", "numba": None,
                     "torch": None, "cupy": None},
        "settings": {"suite": "s.toml", "quick": False, "repeat": 3, "min_time_s": 0.0,
                     "pause_s": 0.0, "threads": 2, "peak_gflops": 196.0,
                     "peak_gbs": 32.0, "gpu_peak_gflops": None, "gpu_peak_gbs": None,
                     "seed": 0},
        "backends": {"run": ["numpy"], "skipped": {"cupy": "no GPU"}},
        "cases": [{"name": "c", "group": "g", "kind": "conv", "x": [1, 1, 4, 4]}],
        "results": rows,
    }


# ----------------------------------------------------------------------------- schema


def test_synthetic_document_is_valid():
    assert check_document(document([row(), row(impl="cpp", status="n/a")])) == []


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("machine"), "$: missing key 'machine'"),
    (lambda d: d["machine"].update(cores="2"), "$.machine.cores: expected int, got str"),
    (lambda d: d["settings"].update(repeat=True), "$.settings.repeat: expected int, got bool"),
    (lambda d: d["backends"]["skipped"].update(cpp=3), "$.backends.skipped.cpp: expected str"),
    (lambda d: d["results"][0].update(times_s=[1, "x"]), "$.results[0].times_s[1]"),
    (lambda d: d["results"][0].pop("median_s"), "$.results[0]: missing key 'median_s'"),
    (lambda d: d["results"][0].update(gflops="fast"), "$.results[0].gflops: expected int"),
    (lambda d: d.update(results={}), "$.results: expected a list, got dict"),
    (lambda d: d.update(schema="other/9"), "is not 'cnnfast-bench/1'"),
    (lambda d: d["results"][0].update(status="great"), "status: 'great' not in"),
    (lambda d: d["results"][0].update(check="meh"), "check: 'meh' not in"),
    (lambda d: d["results"][0].update(device="tpu"), "is not cpu or gpu"),
    (lambda d: d["results"][0].update(times_s=[]), "status ok but no timings"),
    (lambda d: d["results"][0].update(q1_s=5.0), "median outside [q1, q3]"),
    (lambda d: d["results"][1].update(reason=None), "status 'n/a' needs a reason"),
])
def test_schema_checker_reports_each_defect(mutate, message):
    doc = document([row(), row(impl="cpp", status="n/a")])
    mutate(doc)
    errors = check_document(doc)
    assert any(message in e for e in errors), errors


def test_validate_allows_extra_keys_and_null_where_declared():
    doc = document([row()])
    doc["machine"]["extra"] = {"anything": 1}
    doc["versions"]["torch"] = None
    assert validate(doc) == []


def test_write_is_atomic_and_load_checks(tmp_path):
    path = tmp_path / "deep" / "r.json"
    write_json(document([row()]), path)
    assert load_json(path)["results"][0]["median_s"] == 1.0
    assert os.listdir(path.parent) == ["r.json"]  # no temporary file left
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    # A failed serialisation leaves the old file intact and no temporary file.
    bad = document([row()])
    bad["results"][0]["median_s"] = float("nan")
    with pytest.raises(ValueError):
        write_json(bad, path)
    assert load_json(path)["results"][0]["median_s"] == 1.0
    assert os.listdir(path.parent) == ["r.json"]
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(ResultsError, match="is not JSON"):
        load_json(broken)
    incomplete = tmp_path / "incomplete.json"
    incomplete.write_text(json.dumps({"schema": SCHEMA_ID}))
    with pytest.raises(ResultsError, match="missing key 'created'"):
        load_json(incomplete)


# ----------------------------------------------------------------------------- compare


def _verdicts(a_rows, b_rows, **kw):
    entries = report.compare(document(a_rows), document(b_rows), **kw)
    return {(e["case"], e["op"], e["impl"]): e for e in entries}


def test_compare_flags_only_changes_beyond_the_noise():
    a = [row(case="same", median=1.0, iqr=0.02), row(case="slow", median=1.0, iqr=0.02),
         row(case="fast", median=1.0, iqr=0.02), row(case="noisy", median=1.0, iqr=0.5)]
    b = [row(case="same", median=1.03, iqr=0.02), row(case="slow", median=1.2, iqr=0.02),
         row(case="fast", median=0.8, iqr=0.02), row(case="noisy", median=1.4, iqr=0.5)]
    v = _verdicts(a, b)
    assert v[("same", "forward", "numpy")]["verdict"] == "same"  # 3% < 5% floor
    assert v[("slow", "forward", "numpy")]["verdict"] == "slower"
    assert v[("slow", "forward", "numpy")]["ratio"] == pytest.approx(1.2)
    assert v[("fast", "forward", "numpy")]["verdict"] == "faster"
    # IQR/median 0.5 + 0.5/1.4: t = 0.857, and 1.4 < 1.857: within the noise.
    noisy = v[("noisy", "forward", "numpy")]
    assert noisy["verdict"] == "same"
    assert noisy["threshold"] == pytest.approx(0.5 + 0.5 / 1.4)


def test_compare_threshold_is_symmetric_in_ratio():
    # t = 10%: 1.1x slower sits exactly on the edge, 1/1.1 faster too; beyond flags.
    a = [row(case="x", median=1.0), row(case="y", median=1.0)]
    b = [row(case="x", median=1.11), row(case="y", median=1 / 1.11)]
    v = _verdicts(a, b, floor=0.1)
    assert v[("x", "forward", "numpy")]["verdict"] == "slower"
    assert v[("y", "forward", "numpy")]["verdict"] == "faster"
    v = _verdicts(a, [row(case="x", median=1.09), row(case="y", median=1 / 1.09)],
                  floor=0.1)
    assert {e["verdict"] for e in v.values()} == {"same"}


def test_compare_reports_missing_and_status_changes():
    a = [row(case="gone"), row(case="broke"), row(case="both-na", status="n/a")]
    b = [row(case="new"), row(case="broke", status="error"),
         row(case="both-na", status="n/a")]
    v = _verdicts(a, b)
    assert v[("gone", "forward", "numpy")]["verdict"] == "only A"
    assert v[("new", "forward", "numpy")]["verdict"] == "only B"
    assert v[("broke", "forward", "numpy")]["verdict"] == "status ok -> error"
    assert v[("both-na", "forward", "numpy")]["verdict"] == "same status"
    text = report.compare_text(list(v.values()))
    assert "0 of 0 timings moved" in text


def test_compare_cli(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    write_json(document([row(case="k", median=1.0), row(case="m", median=1.0)]), a)
    write_json(document([row(case="k", median=2.0), row(case="m", median=1.01)]), b)
    md = tmp_path / "cmp.md"
    assert main(["bench", "--compare", str(a), str(b), "--markdown", str(md)]) == 0
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("k "))
    assert "SLOWER" in line and "2.000" in line
    assert "SLOWER" not in next(l for l in out.splitlines() if l.startswith("m "))
    assert "1 of 2 timings moved beyond the noise (0 faster, 1 slower)" in out
    assert "| k | forward | numpy | 1 s | 2 s | 2.000 | ±5% | **slower** |" in md.read_text()
    assert main(["bench", "--compare", str(a), str(tmp_path / "nope.json")]) == 2


def test_markdown_marks_na_and_wrong_results():
    bad = row(impl="cpp")
    bad["check"] = "mismatch"
    md = report.markdown([document([row(), bad, row(impl="numba", status="n/a")])])
    assert "| c | forward | 1 s, 1e-06 GF/s | 1 s, 1e-06 GF/s **(wrong result)** | " \
           "n/a: not here |" in md
    assert "skipped cupy: no GPU" in md


def test_text_table_keeps_status_rows_readable():
    doc = document([row(), row(impl="cpp", status="n/a")])
    doc["results"][1]["reason"] = "x" * 200
    table = report.text_table(doc)
    lines = table.splitlines()
    assert lines[2].split()[:3] == ["forward", "cpp", "n/a:"]
    assert len(lines[1]) < 140  # a long reason does not widen the numeric columns


# ----------------------------------------------------------------------------- README


def _render_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "render_readme_section.py"
    spec = importlib.util.spec_from_file_location("render_readme_section", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_render_readme_section_cpu_and_gpu_side_by_side(tmp_path, capsys):
    render = _render_script()
    cpu = document([row(), row(impl="torch")])
    gpu = document([row(impl="cupy", device="gpu", median=0.01),
                    row(impl="torch-cuda", device="gpu", median=0.02)])
    gpu["machine"]["gpu"] = "NVIDIA H100 80GB HBM3"
    write_json(cpu, tmp_path / "cpu.json")
    write_json(gpu, tmp_path / "gpu.json")
    readme = tmp_path / "README.md"
    readme.write_text("# T\n\nbefore\n<!-- bench:start -->\nold table\n"
                      "<!-- bench:end -->\nafter\n")
    files = [str(tmp_path / "gpu.json"), str(tmp_path / "cpu.json")]
    assert render.main([str(readme), *files]) == 0
    text = readme.read_text()
    assert "old table" not in text and text.startswith("# T\n\nbefore\n<!-- bench:start -->\n")
    assert text.endswith("<!-- bench:end -->\nafter\n")
    header = next(l for l in text.splitlines() if l.startswith("| case |"))
    # CPU columns first, then the GPU's, each named by its device.
    assert header == ("| case | op | numpy (CPU) | torch (CPU) | cupy (H100 80GB HBM3) | "
                      "torch-cuda (H100 80GB HBM3) |")
    assert "GPU: NVIDIA H100 80GB HBM3" in text and "CPU: Test CPU (2 threads)" in text
    assert render.main([str(readme), *files, "--check"]) == 0
    readme.write_text(text.replace("numpy (CPU)", "edited"))
    assert render.main([str(readme), *files, "--check"]) == 1
    readme.write_text("no markers here\n")
    assert render.main([str(readme), *files]) == 2
    assert "needs the markers" in capsys.readouterr().err


def test_plot_with_cpu_and_gpu_runs(tmp_path):
    pytest.importorskip("matplotlib")
    cpu = document([row(case="a", median=0.1), row(case="a", impl="torch", median=0.05),
                    row(case="b", median=0.2)])
    gpu = document([row(case="a", impl="cupy", device="gpu", median=0.001),
                    row(case="b", impl="cupy", device="gpu", status="n/a")])
    gpu["machine"]["gpu"] = "Fake GPU"
    # Best CPU time over best GPU time, only where both ran.
    assert report._gpu_speedups([cpu, gpu], [("a", "forward"), ("b", "forward")]) == [
        ("a", "forward", pytest.approx(50.0))]
    path = tmp_path / "both.svg"
    assert report.plot([cpu, gpu], path) == ["GFLOP/s",
                                             "GPU speed-up over the best CPU time"]
    assert path.read_text().startswith("<?xml")
    assert report.plot([cpu], tmp_path / "cpu.png") == ["GFLOP/s"]
    with pytest.raises(RuntimeError, match="nothing to plot"):
        report.plot([document([row(status="n/a")])], tmp_path / "empty.png")


def test_two_cpu_runs_name_their_cpus():
    a = document([row()])
    b = document([row(), row(impl="cupy", device="gpu")])
    b["machine"].update(cpu="Intel(R) Xeon(R) Gold 6130 CPU @ 2.10GHz", threads=16,
                        gpu="NVIDIA A100")
    header = next(l for l in report.markdown([a, b]).splitlines() if l.startswith("| case"))
    assert header == ("| case | op | numpy (Test, 2 thr) | "
                      "numpy (Intel Xeon Gold 6130, 16 thr) | cupy (A100) |")


# ----------------------------------------------------------------- CPU and algorithm


X86_CPUINFO = """\
processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 85
model name\t: Intel(R) Xeon(R) Gold 6130 CPU @ 2.10GHz
stepping\t: 4
flags\t\t: fpu sse4_2 avx f16c fma avx2 avx512f avx512dq avx512cd avx512bw avx512vl

processor\t: 1
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 85
flags\t\t: fpu
"""

ARM_CPUINFO = """\
processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp asimddp sve
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x1
CPU part\t: 0xd40
CPU revision\t: 1
"""


def test_cpu_details_from_cpuinfo():
    from cnnfast.bench.results import X86_FLAGS, cpu_details

    x86 = cpu_details(X86_CPUINFO)
    assert (x86["cpu_vendor"], x86["cpu_family"], x86["cpu_model_number"],
            x86["cpu_stepping"]) == ("GenuineIntel", 6, 85, 4)
    assert list(x86["cpu_flags"]) == list(X86_FLAGS)  # every flag, present or not
    assert x86["cpu_flags"]["avx2"] and x86["cpu_flags"]["avx512bw"]
    assert x86["cpu_flags"]["avx512_vnni"] is False  # the first processor's flags only
    arm = cpu_details(ARM_CPUINFO)
    assert (arm["cpu_vendor"], arm["cpu_family"], arm["cpu_model_number"],
            arm["cpu_stepping"]) == ("0x41", 8, 0xd40, 1)
    assert arm["cpu_flags"]["sve"] and arm["cpu_flags"]["asimd"]
    assert not arm["cpu_flags"]["sve2"]
    assert cpu_details("") == {"cpu_vendor": None, "cpu_family": None,
                               "cpu_model_number": None, "cpu_stepping": None,
                               "cpu_flags": None}


def new_document():
    """A document with the optional keys of newer writers (CPU numbers and flags,
    the cpp ISA path, each row's algorithm)."""
    cpp = row(impl="cpp")
    cpp.update(algorithm="gemm-s1", paths={"y": "gemm-s1"})
    torch = row(impl="torch")
    torch.update(algorithm=None, paths=None)
    pool = row(case="p", impl="cpp")
    pool.update(kind="max_pool", algorithm=None, paths=None)
    doc = document([row(), cpp, torch, pool])
    doc["machine"].update(cpu_vendor="GenuineIntel", cpu_family=6, cpu_model_number=85,
                          cpu_stepping=4,
                          cpu_flags={"avx2": True, "fma": True, "avx512f": False})
    doc["versions"].update(cpp_simd_path="avx2", cpp_compiler="gcc 12",
                           cpp_cpu_features={"avx2": True, "fma": True})
    return doc


def test_optional_keys_may_be_absent_but_are_typed_when_present():
    assert check_document(document([row()])) == []  # an old file: none of them
    assert check_document(new_document()) == []
    for mutate, message in [
        (lambda d: d["machine"].update(cpu_family="6"), "$.machine.cpu_family: expected int"),
        (lambda d: d["machine"].update(cpu_flags={"avx2": "yes"}),
         "$.machine.cpu_flags.avx2: expected bool"),
        (lambda d: d["machine"].update(cpu_flags=["avx2"]), "$.machine.cpu_flags: expected"),
        (lambda d: d["versions"].update(cpp_simd_path=None), "$.versions.cpp_simd_path"),
        (lambda d: d["results"][1].update(algorithm=3), "$.results[1].algorithm: expected"),
        (lambda d: d["results"][1].update(paths={"y": 1}), "$.results[1].paths.y: expected"),
        (lambda d: d["results"][1].update(algorithms_seen="a"), "algorithms_seen: expected"),
    ]:
        doc = new_document()
        mutate(doc)
        errors = check_document(doc)
        assert any(message in e for e in errors), (message, errors)
    doc = new_document()
    doc["machine"].update(cpu_family=None, cpu_flags=None)  # unreadable: null is valid
    assert check_document(doc) == []


def test_markdown_and_table_show_algorithm_and_cpu_details():
    doc = new_document()
    md = report.markdown([doc])
    assert ("- CPU: Test CPU (2 threads), family 6, model 85, stepping 4; SIMD avx2 fma; "
            "cpp ISA path avx2.") in md
    line = next(l for l in md.splitlines() if l.startswith("| c | forward"))
    assert line == ("| c | forward | 1 s, 1e-06 GF/s | 1 s, 1e-06 GF/s, `gemm-s1` | "
                    "1 s, 1e-06 GF/s |")
    assert "`" not in next(l for l in md.splitlines() if l.startswith("| p | forward"))
    table = report.text_table(doc).splitlines()
    assert table[0].split()[-1] == "algorithm"
    assert table[2].split()[-1] == "gemm-s1" and table[1].split()[-1] == "-"
    assert any("family 6, model 85" in l for l in report.summary_lines(doc))
    # A path that changed between samples shows every one.
    doc["results"][1]["algorithms_seen"] = ["gemm-s1", "direct"]
    assert "`gemm-s1 / direct`" in report.markdown([doc])


def test_old_documents_render_without_algorithm_or_cpu_numbers():
    md = report.markdown([document([row(), row(impl="cpp")])])
    assert "- CPU: Test CPU (2 threads). cnnfast 0" in md
    assert "`" not in next(l for l in md.splitlines() if l.startswith("| c |"))
    assert report.text_table(document([row()])).splitlines()[1].split()[-1] == "-"


def test_recorded_results_files_still_load_and_render():
    from pathlib import Path

    folder = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
    paths = [folder / name for name in ("cpu.json", "gpu.json") if (folder / name).exists()]
    if not paths:
        pytest.skip("no recorded results in benchmarks/results")
    docs = [load_json(p) for p in paths]
    md = report.markdown(docs)
    assert "| case | op |" in md
    for doc in docs:
        report.text_table(doc)


def test_render_readme_section_shows_algorithm_and_isa_path(tmp_path):
    render = _render_script()
    write_json(new_document(), tmp_path / "cpu.json")
    readme = tmp_path / "README.md"
    readme.write_text("<!-- bench:start -->\n<!-- bench:end -->\n")
    assert render.main([str(readme), str(tmp_path / "cpu.json")]) == 0
    text = readme.read_text()
    assert "family 6, model 85, stepping 4" in text and "cpp ISA path avx2" in text
    assert "`gemm-s1`" in text


@pytest.mark.parametrize("backend", ["cpp", "numba"])
def test_roofline_and_issue15_targets_on_the_recorded_results(backend):
    """benchmarks/roofline.py takes its targets from issue15_targets.py (one table):
    both read the recorded CPU run, and they agree on which rows miss."""
    import subprocess
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parent.parent / "benchmarks"
    results = bench / "results" / "cpu.json"
    if not results.exists():
        pytest.skip("no recorded CPU results")
    run = lambda *a: subprocess.run([sys.executable, *map(str, a)], check=True,  # noqa: E731
                                    capture_output=True, text=True).stdout
    counted = run(bench / "issue15_targets.py", results, "--backend", backend)
    misses = {tuple(l.split()[1:3]) for l in counted.splitlines() if l.startswith("  miss:")}
    roof = run(bench / "roofline.py", results, "--backend", backend, "--misses",
               "--peak-gflops", "190")
    assert roof.startswith("roofline: 190 GFLOP/s")
    assert {tuple(l.split()[:2]) for l in roof.splitlines()[2:]} == misses
