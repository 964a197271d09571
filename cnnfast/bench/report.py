"""Reports of results documents: a terminal table, Markdown, the comparison of two
runs, and plots.

Several documents can be shown together (a CPU run and a GPU run made on different
machines): their implementations become columns side by side, each labelled with the
device it ran on.

Noise rule of ``compare`` (run A against run B, per case, op and implementation):
with ``r = median_B / median_A`` and each run's relative spread
``s = (q3 - q1) / median`` (its interquartile range over its median), the change is
beyond the noise when ``r > 1 + t`` (slower) or ``r < 1 / (1 + t)`` (faster), where
``t = max(floor, s_A + s_B)``. The floor (default 5%) guards against the small
interquartile ranges that a handful of samples can show by chance.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, Tuple

from .runner import format_time

if TYPE_CHECKING:
    from ..nn.data import PathLike

NOISE_FLOOR = 0.05


# ----------------------------------------------------------------------------- helpers


def _case_order(docs):
    """(case, op) pairs in first-seen order over the documents."""
    seen: Dict[Tuple[str, str], None] = {}
    for doc in docs:
        for row in doc["results"]:
            seen.setdefault((row["case"], row["op"]), None)
    return list(seen)


def device_label(doc, device: str) -> str:
    m = doc["machine"]
    if device == "gpu":
        return m.get("gpu") or "GPU"
    return f"{m['cpu']} ({m['threads']} threads)"


def cpu_details(doc) -> str:
    """The CPU's family/model/stepping numbers, its SIMD features present and the
    cpp backend's ISA path, as far as the document records them ("" for none):
    ``"family 6, model 85, stepping 7; SIMD avx2 fma avx512f; cpp ISA path avx2"``."""
    m, parts = doc["machine"], []
    ids = [f"{label} {m[key]}" for label, key in (
        ("family", "cpu_family"), ("model", "cpu_model_number"),
        ("stepping", "cpu_stepping")) if m.get(key) is not None]
    if ids:
        parts.append(", ".join(ids))
    flags = m.get("cpu_flags")
    if isinstance(flags, dict):
        present = [name for name, have in flags.items() if have]
        parts.append("SIMD " + (" ".join(present) if present else "none of "
                                + " ".join(flags)))
    path = doc["versions"].get("cpp_simd_path")
    if path:
        parts.append(f"cpp ISA path {path}")
    return "; ".join(parts)


def algorithm(row) -> Optional[str]:
    """The path(s) the row's cnnfast backend ran (None: torch, poolings, old files);
    several different ones across the timed samples are joined with " / "."""
    seen = row.get("algorithms_seen")
    if seen:
        return " / ".join(seen)
    return row.get("algorithm")


def _short_device(doc, device: str, distinct_cpus: bool = False) -> str:
    if device == "gpu":
        name = doc["machine"].get("gpu") or "GPU"
        return name.replace("NVIDIA ", "")
    if not distinct_cpus:
        return "CPU"
    # Several runs with CPU columns: name each CPU, shortly.
    model = doc["machine"]["cpu"]
    for noise in ("(R)", "(TM)", "(tm)", " CPU", " Processor"):
        model = model.replace(noise, "")
    model = model.split(" @ ")[0].strip()
    return f"{model}, {doc['machine']['threads']} thr"


def columns(docs):
    """[(label, doc index, impl)] in run order; labels carry the device when several
    documents are shown together."""
    cpu_runs = sum(any(r["device"] == "cpu" for r in doc["results"]) for doc in docs)
    cols = []
    for d, doc in enumerate(docs):
        impls: Dict[str, str] = {}
        for row in doc["results"]:
            impls.setdefault(row["impl"], row["device"])
        for impl, device in impls.items():
            label = impl if len(docs) == 1 else (
                f"{impl} ({_short_device(doc, device, cpu_runs > 1)})")
            cols.append((label, d, impl))
    return cols


def _index(docs):
    return {(d, r["case"], r["op"], r["impl"]): r
            for d, doc in enumerate(docs) for r in doc["results"]}


def throughput(row) -> str:
    if row.get("gflops") is not None:
        return f"{row['gflops']:.3g} GFLOP/s"
    if row.get("gbs") is not None:
        return f"{row['gbs']:.3g} GB/s"
    return "-"


def rel_spread(row) -> Optional[float]:
    if row.get("median_s") in (None, 0):
        return None
    return (row["q3_s"] - row["q1_s"]) / row["median_s"]


def _na(row, width=None) -> str:
    reason = (row.get("reason") or "").replace("|", "/").replace("\n", " ")
    if width and len(reason) > width:
        reason = reason[:width - 3] + "..."
    return f"{row['status']}: {reason}"


def skipped_lines(doc) -> list:
    return [f"{name}: {reason}" for name, reason in doc["backends"]["skipped"].items()]


# ----------------------------------------------------------------------------- terminal


def text_table(doc: Dict[str, Any]) -> str:
    """One line per (case, op, implementation), grouped by case."""
    header = ("case", "op", "impl", "median", "IQR", "min-max", "throughput", "%peak",
              "vs torch", "check", "1st call", "algorithm")
    lines = [header]
    last_case = None
    for row in doc["results"]:
        case = row["case"] if row["case"] != last_case else ""
        last_case = row["case"]
        if row["status"] != "ok":
            lines.append((case, row["op"], row["impl"], _na(row, 60)) + ("",) * 8)
            continue
        spread = rel_spread(row)
        lines.append((
            case, row["op"], row["impl"], format_time(row["median_s"]),
            f"{100 * spread:.1f}%" if spread is not None else "-",
            f"{format_time(row['min_s'])}-{format_time(row['max_s'])}",
            throughput(row),
            f"{100 * row['peak_fraction']:.1f}%" if row["peak_fraction"] is not None else "-",
            f"{row['vs_reference']:.2f}x" if row["vs_reference"] is not None else "-",
            {"ok": "ok", "mismatch": "MISMATCH", "unchecked": "-",
             "oracle": "oracle"}[row["check"]],
            # The warm-up call: JIT compilation and cache misses show here.
            format_time(row.get("first_call_s")),
            algorithm(row) or "-",
        ))
    # A status cell (n/a: reason) spans the numeric columns: do not let it widen them.
    blank = ("",) * 8
    widths = [max(len(line[i]) for line in lines
                  if not (i == 3 and line is not header and line[4:] == blank))
              for i in range(len(header))]
    out = []
    for line in lines:
        if line is not header and line[4:] == blank:
            out.append("  ".join(f"{v:<{widths[i]}}" for i, v in enumerate(line[:3]))
                       + "  " + line[3])
        else:
            out.append("  ".join(f"{v:<{widths[i]}}" for i, v in enumerate(line)).rstrip())
    return "\n".join(out)


def summary_lines(doc) -> list:
    m, s = doc["machine"], doc["settings"]
    lines = [f"machine: {m['cpu']}, {m['cores']} cores; threads: {s['threads']}"
             + (f"; GPU: {m['gpu']}" if m.get("gpu") else "")]
    details = cpu_details(doc)
    if details:
        lines.append(f"CPU: {details}")
    if m.get("load_average_at_start") is not None:
        lines.append(f"load average (1, 5, 15 min): {m['load_average_at_start']} at the "
                     f"start, {m.get('load_average_at_end')} at the end")
    lines.append(f"run: {', '.join(doc['backends']['run']) or 'nothing'}; {s['repeat']} "
                 f"samples each, interleaved; median and interquartile range")
    for line in skipped_lines(doc):
        lines.append(f"skipped {line}")
    peaks = []
    if s.get("peak_gflops"):
        peaks.append(f"{s['peak_gflops']:g} GFLOP/s")
    if s.get("peak_gbs"):
        peaks.append(f"{s['peak_gbs']:g} GB/s")
    if peaks:
        lines.append(f"%peak of {_peak_words(s)} CPU peak of " + " and ".join(peaks)
                     + "; vs torch = torch time / this time (above 1: faster than torch)")
    for key, source in (s.get("peak_source") or {}).items():
        lines.append(f"{key}: {source}")
    return lines


def peak_kind(source: Optional[str]) -> str:
    """"measured", "given" or "assumed" (no source recorded), from a peak's source
    as the results document records it ("measured: <probe>", "given (--option)")."""
    word = str(source or "assumed").split(":")[0].split(" (")[0]
    return word if word in ("measured", "given") else "assumed"


def _peak_words(settings) -> str:
    """How the CPU peaks were obtained: "a measured", "a given", "a measured and
    given" (one of each); "an assumed" for files that do not say."""
    sources = settings.get("peak_source") or {}
    kinds = [w for w in ("measured", "given")
             if any(peak_kind(sources.get(k)) == w for k in ("peak_gflops", "peak_gbs"))]
    return "a " + " and ".join(kinds) if kinds else "an assumed"


# ----------------------------------------------------------------------------- markdown


def markdown(docs: Iterable[Dict[str, Any]], *, title: Optional[str] = None) -> str:
    """A Markdown section: the machines, then one table with a row per (case, op) and
    a column per implementation (several runs side by side, device named)."""
    docs = list(docs)
    cols = columns(docs)
    index = _index(docs)
    out = []
    if title:
        out += [f"### {title}", ""]
    for doc in docs:
        m, s = doc["machine"], doc["settings"]
        devices = sorted({r["device"] for r in doc["results"]})
        details = cpu_details(doc)
        where = "; ".join(
            f"GPU: {device_label(doc, dev)}" if dev == "gpu" else
            f"CPU: {device_label(doc, dev)}" + (f", {details}" if details else "")
            for dev in devices) or f"CPU: {device_label(doc, 'cpu')}"
        ver = doc["versions"]
        tools = ", ".join(f"{k} {ver[k]}" for k in ("cnnfast", "numpy", "numba", "torch",
                                                   "cupy") if ver.get(k))
        load = m.get("load_average_at_start")
        out.append(f"- {where}. {tools}. {doc['created'][:10]}, "
                   f"`{' '.join(doc['command'])}`"
                   + (" (quick subset)" if s["quick"] else "")
                   + (f"; load average {load[0]:g} at the start" if load else ""))
        for line in skipped_lines(doc):
            out.append(f"  - skipped {line}")
    algos = any(algorithm(r) for doc in docs for r in doc["results"])
    out += ["", "Median time per call, then GFLOP/s (convolutions) or GB/s (pooling), "
            "then the speed relative to torch on the same device (above 1x: faster)"
            + (", then, in `code`, the algorithm the cnnfast backend ran. " if algos
               else ". ") + f"{'; '.join(_peak_notes(docs))}", ""]
    out.append("| case | op | " + " | ".join(label for label, _, _ in cols) + " |")
    out.append("|---|---|" + "---|" * len(cols))
    for case, op in _case_order(docs):
        cells = []
        for _, d, impl in cols:
            row = index.get((d, case, op, impl))
            cells.append(_md_cell(row))
        out.append(f"| {case} | {op} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def _peak_notes(docs):
    for doc in docs:
        s = doc["settings"]
        if s.get("peak_gflops") or s.get("peak_gbs"):
            fmt = lambda v: "-" if v is None else f"{v:g}"  # noqa: E731
            if not s.get("peak_source"):  # files from before the peaks were measured
                return [f"CPU peak assumed {fmt(s.get('peak_gflops'))} GFLOP/s, "
                        f"{fmt(s.get('peak_gbs'))} GB/s"]
            how = lambda k: peak_kind(s["peak_source"].get(k))  # noqa: E731
            return [f"CPU peak {fmt(s.get('peak_gflops'))} GFLOP/s ({how('peak_gflops')}), "
                    f"{fmt(s.get('peak_gbs'))} GB/s ({how('peak_gbs')})"]
    return []


def _md_cell(row) -> str:
    if row is None:
        return "-"
    if row["status"] != "ok":
        return _na(row, 50)
    parts = [format_time(row["median_s"]), throughput(row).replace("GFLOP/s", "GF/s")]
    if row.get("vs_reference") is not None:
        parts.append(f"{row['vs_reference']:.2f}x")
    algo = algorithm(row)
    if algo:
        parts.append(f"`{algo.replace('|', '/')}`")
    text = ", ".join(parts)
    if row["check"] == "mismatch":
        text += " **(wrong result)**"
    return text


# ----------------------------------------------------------------------------- compare


def compare(doc_a: Dict[str, Any], doc_b: Dict[str, Any],
            floor: float = NOISE_FLOOR) -> List[Dict[str, Any]]:
    """Per (case, op, impl) in both runs: the ratio of medians B/A, the noise threshold
    t and a verdict ("faster", "slower", "same"; "status" when it ran in one run
    only; "only A"/"only B" when a run lacks it). Rows follow A's order, then B's."""
    a_rows = {(r["case"], r["op"], r["impl"]): r for r in doc_a["results"]}
    b_rows = {(r["case"], r["op"], r["impl"]): r for r in doc_b["results"]}
    keys = list(dict.fromkeys(list(a_rows) + list(b_rows)))
    out = []
    for key in keys:
        a, b = a_rows.get(key), b_rows.get(key)
        entry = {"case": key[0], "op": key[1], "impl": key[2],
                 "a_s": a and a.get("median_s"), "b_s": b and b.get("median_s"),
                 "ratio": None, "threshold": None, "verdict": None}
        if a is None or b is None:
            entry["verdict"] = "only A" if b is None else "only B"
        elif a["status"] != "ok" or b["status"] != "ok":
            entry["verdict"] = ("same status" if a["status"] == b["status"]
                                else f"status {a['status']} -> {b['status']}")
        else:
            ratio = b["median_s"] / a["median_s"]
            t = max(floor, (rel_spread(a) or 0.0) + (rel_spread(b) or 0.0))
            verdict = ("slower" if ratio > 1 + t else "faster" if ratio < 1 / (1 + t)
                       else "same")
            entry.update(ratio=ratio, threshold=t, verdict=verdict)
        out.append(entry)
    return out


def compare_text(entries, *, color: bool = False) -> str:
    header = ("case", "op", "impl", "A", "B", "B/A", "noise", "verdict")
    lines = [header]
    for e in entries:
        lines.append((e["case"], e["op"], e["impl"], format_time(e["a_s"]),
                      format_time(e["b_s"]),
                      f"{e['ratio']:.3f}" if e["ratio"] is not None else "-",
                      f"±{100 * e['threshold']:.0f}%" if e["threshold"] is not None else "-",
                      e["verdict"].upper() if e["verdict"] in ("slower", "faster")
                      else e["verdict"]))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for line, e in zip(lines, [None] + list(entries)):
        text = "  ".join(f"{v:<{widths[i]}}" for i, v in enumerate(line)).rstrip()
        if color and e is not None and e["verdict"] in ("slower", "faster"):
            text = ("\x1b[31m" if e["verdict"] == "slower" else "\x1b[32m") + text + "\x1b[0m"
        out.append(text)
    moved = [e for e in entries if e["verdict"] in ("slower", "faster")]
    out.append(f"{len(moved)} of {sum(e['ratio'] is not None for e in entries)} timings "
               f"moved beyond the noise ({sum(e['verdict'] == 'faster' for e in moved)} "
               f"faster, {sum(e['verdict'] == 'slower' for e in moved)} slower); "
               f"noise = max({100 * NOISE_FLOOR:.0f}% floor, IQR_A/med_A + IQR_B/med_B)")
    return "\n".join(out)


def compare_markdown(entries) -> str:
    out = ["| case | op | impl | A | B | B/A | noise | verdict |",
           "|---|---|---|---|---|---|---|---|"]
    for e in entries:
        verdict = e["verdict"]
        if verdict in ("slower", "faster"):
            verdict = f"**{verdict}**"
        ratio = "-" if e["ratio"] is None else f"{e['ratio']:.3f}"
        noise = "-" if e["threshold"] is None else f"±{100 * e['threshold']:.0f}%"
        out.append(f"| {e['case']} | {e['op']} | {e['impl']} | {format_time(e['a_s'])} | "
                   f"{format_time(e['b_s'])} | {ratio} | {noise} | {verdict} |")
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- plots


def require_matplotlib():
    """matplotlib's ``Figure`` and ``FigureCanvasAgg`` (the object-oriented API: no
    pyplot, no change of the session's backend), or a RuntimeError that says how to
    install matplotlib."""
    try:
        import matplotlib  # noqa: F401  (first: its absence is the usual failure)
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise RuntimeError("--plot needs matplotlib (pip install 'cnnfast[bench]'): "
                           f"{exc}") from None
    return Figure, FigureCanvasAgg


def plot_formats() -> tuple:
    """The file extensions ``plot`` can write (``png``, ``svg``, ``pdf``, ...)."""
    require_matplotlib()
    from matplotlib.backend_bases import FigureCanvasBase

    return tuple(sorted(FigureCanvasBase.get_supported_filetypes()))


def ratio_bars(docs, cols=None, order=None) -> list:
    """``[(case, op, [(column label, ratio, low, high)])]``: each implementation's
    speed relative to the reference on its device (``vs_reference``: reference
    median / its median) with the range the interquartile ranges allow,
    ``low = ref q1 / q3`` and ``high = ref q3 / q1`` (which holds the ratio of
    medians). Pairs without any ratio are left out."""
    cols = columns(docs) if cols is None else cols
    order = _case_order(docs) if order is None else order
    index = _index(docs)
    out = []
    for case, op in order:
        bars = []
        for label, d, impl in cols:
            r = index.get((d, case, op, impl))
            if r is None or r["status"] != "ok" or r.get("vs_reference") is None:
                continue
            ref = index.get((d, case, op, r.get("reference")))
            low = high = r["vs_reference"]
            if ref is not None and ref.get("q1_s") and r.get("q1_s"):
                low = min(low, ref["q1_s"] / r["q3_s"])
                high = max(high, ref["q3_s"] / r["q1_s"])
            bars.append((label, r["vs_reference"], low, high))
        if bars:
            out.append((case, op, bars))
    return out


def plot(docs: Iterable[Dict[str, Any]], path: PathLike) -> List[str]:
    """The chart of the runs: per (case, op), each implementation's speed relative
    to the reference on the same device (torch: reference time / its time, on a log
    axis centred on 1x; the whiskers span what the two interquartile ranges allow,
    see ``ratio_bars``). Runs without a reference get the absolute speeds instead
    (GFLOP/s for convolutions, GB/s for poolings). With GPU results, a further chart
    of the best GPU time's speed-up over the best CPU time. Drawn with matplotlib's
    object-oriented API (the ``bench`` extra). Returns the charts drawn, by their
    x-axis quantity."""
    Figure, FigureCanvasAgg = require_matplotlib()
    from matplotlib.ticker import FuncFormatter

    docs = list(docs)
    cols = columns(docs)
    index = _index(docs)
    order = _case_order(docs)
    # (kind, unit, the rows' key or None, labels)
    panels: List[Tuple[str, str, Optional[str], List[Any]]] = []
    ratios = ratio_bars(docs, cols, order)
    if ratios:
        refs = sorted({r["reference"] for doc in docs for r in doc["results"]
                       if r.get("vs_reference") is not None})
        panels.append(("ratio", f"speed relative to {' / '.join(refs)}", None, ratios))
    else:
        for unit, metric in (("GFLOP/s", "gflops"), ("GB/s", "gbs")):
            timed = [(c, op) for c, op in order if any(
                (r := index.get((d, c, op, impl))) is not None and r.get(metric) is not None
                for _, d, impl in cols)]
            if timed:
                panels.append(("bars", unit, metric, timed))
    speedups = _gpu_speedups(docs, order)
    if speedups:
        panels.append(("gpu", "GPU speed-up over the best CPU time", None, speedups))
    if not panels:
        raise RuntimeError("nothing to plot: no successful timings")
    heights = [max(2.0, 0.28 * len(p[3]) * (max(len(cols), 1) if p[0] != "gpu" else 1)
                   ** 0.5 + 1.0) for p in panels]
    fig = Figure(figsize=(10, sum(heights)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, gridspec_kw={"height_ratios": heights},
                        squeeze=False)
    times = FuncFormatter(lambda v, _: f"{v:g}x")
    for ax, (kind, unit, key, labels) in zip(axes[:, 0], panels):
        if kind == "ratio":
            _draw_ratios(ax, labels)
            ax.xaxis.set_major_formatter(times)
            ax.set_xlabel(f"{unit}: reference time / time (right of 1x: faster); "
                          "whiskers: interquartile ranges")
        elif kind == "bars":
            width = 0.8 / max(len(cols), 1)
            for j, (label, d, impl) in enumerate(cols):
                ys, xs = [], []
                for i, (c, op) in enumerate(labels):
                    r = index.get((d, c, op, impl))
                    if r is not None and r.get(key):
                        ys.append(i + (j - (len(cols) - 1) / 2) * width)
                        xs.append(r[key])
                if xs:
                    ax.barh(ys, xs, height=width, label=label)
            ax.set_yticks(range(len(labels)))
            ax.set_yticklabels([f"{c} {op}" for c, op in labels], fontsize=7)
            ax.set_xscale("log")
            ax.set_xlabel(unit + " (higher is faster)")
            ax.legend(fontsize=7, loc="lower right")
        else:
            names = [f"{c} {op}" for c, op, _ in labels]
            values = [v for _, _, v in labels]
            ax.barh(range(len(values)), values, color="tab:green")
            ax.axvline(1.0, color="black", lw=0.8)
            ax.set_yticks(range(len(values)))
            ax.set_yticklabels(names, fontsize=7)
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(times)
            ax.set_xlabel("CPU time / GPU time (best implementation of each)")
        ax.invert_yaxis()
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle("cnnfast benchmarks: " + "; ".join(
        sorted({device_label(doc, r["device"]) for doc in docs for r in doc["results"]})),
        fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return [unit for _, unit, _, _ in panels]


def _draw_ratios(ax, ratios):
    """Bars from 1x to each ratio (right: faster than the reference, left: slower),
    one colour per implementation, with the interquartile whiskers."""
    impls = list(dict.fromkeys(label for _, _, bars in ratios for label, *_ in bars))
    width = 0.8 / len(impls)
    colors = {label: f"C{i % 10}" for i, label in enumerate(impls)}
    for j, label in enumerate(impls):
        ys, ratio, lo, hi = [], [], [], []
        for i, (_, _, bars) in enumerate(ratios):
            for name, r, low, high in bars:
                if name == label:
                    ys.append(i + (j - (len(impls) - 1) / 2) * width)
                    ratio.append(r)
                    lo.append(r - low)
                    hi.append(high - r)
        ax.barh(ys, [r - 1.0 for r in ratio], left=1.0, height=width, color=colors[label],
                label=label, xerr=[lo, hi], capsize=2,
                error_kw={"elinewidth": 0.8, "ecolor": "black"})
    ax.axvline(1.0, color="black", lw=0.8)
    ax.set_xscale("log")
    ax.set_yticks(range(len(ratios)))
    ax.set_yticklabels([f"{c} {op}" for c, op, _ in ratios], fontsize=7)
    ax.legend(fontsize=7, loc="lower right")


def _gpu_speedups(docs, order):
    best: Dict[Tuple[str, str, str], float] = {}
    for doc in docs:
        for r in doc["results"]:
            if r["status"] == "ok" and r["median_s"]:
                k = (r["case"], r["op"], r["device"])
                best[k] = min(best.get(k, math.inf), r["median_s"])
    return [(c, op, best[(c, op, "cpu")] / best[(c, op, "gpu")]) for c, op in order
            if (c, op, "cpu") in best and (c, op, "gpu") in best]
