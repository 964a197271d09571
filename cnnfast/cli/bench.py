"""``cnnfast bench``: time every op on every backend over the shape suite, against torch.

    cnnfast bench --quick                          # the quick subset, all backends
    cnnfast bench --backend numba,cpp --op forward --shape resnet
    cnnfast bench --json run.json --markdown run.md --plot run.png
    cnnfast bench --compare before.json after.json # what moved beyond the noise
    cnnfast bench --load cpu.json gpu.json --markdown both.md --plot both.png

The library code is in ``cnnfast.bench``; the suite is ``cnnfast/bench/suite.toml``.
Progress goes to stderr (tqdm's bar when tqdm is installed, with an ETA; a built-in
one otherwise; ``TQDM_DISABLE=1`` or ``--quiet`` for none), the table to stdout.
%peak is relative to this machine's peaks, measured by a short probe at the start of
the run (``cnnfast.bench.peak``) unless ``--peak-gflops`` / ``--peak-gbs`` give them;
the results document records which (``settings.peak_source``). ``--plot`` charts
each implementation's speed relative to torch, with interquartile whiskers.

Exit status: 0 when every timing ran and every result matched the reference, 1 when
some implementation raised an error or computed a wrong result (the outputs are
written all the same), 2 on bad usage (``--plot`` without matplotlib included,
before anything runs).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from types import FrameType
from typing import Any, Callable, Dict, List, NoReturn, Optional, Sequence

from .common import (non_negative_float, positive_float, positive_int, random_seed,
                     set_threads)

HELP = "benchmark the kernels on every backend against torch (table, JSON, Markdown, plot)"


def _csv(value: str) -> List[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sel = parser.add_argument_group("what to run")
    sel.add_argument("--suite", metavar="PATH",
                     help="suite file (TOML; default: the suite shipped with cnnfast)")
    sel.add_argument("--quick", action="store_true",
                     help="only the cases marked quick (about 1-2 minutes on 2 cores)")
    sel.add_argument("--shape", action="append", type=_csv, metavar="PATTERN",
                     help="cases whose name contains PATTERN (or matches a glob, or "
                          "whose group is PATTERN); repeatable or comma-separated")
    sel.add_argument("--op", action="append", type=_csv, metavar="OP",
                     help="forward, backward_input, backward_weight (convolutions), "
                          "backward (poolings); repeatable or comma-separated")
    sel.add_argument("--backend", action="append", type=_csv, metavar="NAME",
                     help="cnnfast backends and/or torch, torch-cuda (default: every "
                          "backend but cuda-emu, plus torch); repeatable or comma-separated")
    sel.add_argument("--no-reference", action="store_true",
                     help="do not add torch as the reference")
    sel.add_argument("--list", action="store_true", help="list the selected cases and exit")
    how = parser.add_argument_group("how to time")
    how.add_argument("--repeat", type=positive_int, metavar="N",
                     help="samples per implementation (default 7; 5 with --quick)")
    how.add_argument("--min-time", type=non_negative_float, default=0.02, metavar="S",
                     help="each sample repeats the call until it lasts S seconds "
                          "(default 0.02)")
    how.add_argument("--pause", type=non_negative_float, default=0.02, metavar="S",
                     help="sleep before each sample so other thread pools go idle "
                          "(default 0.02)")
    how.add_argument("--threads", type=positive_int, metavar="N",
                     help="CPU threads for cnnfast and torch (default: cnnfast's, "
                          "i.e. CNNFAST_NUM_THREADS or the cores available)")
    how.add_argument("--seed", type=random_seed, default=0, help="input generator seed")
    how.add_argument("--peak-gflops", type=positive_float, metavar="X",
                     help="CPU fp32 peak in GFLOP/s for %%peak (default: measured at the "
                          "start of the run: a float32 matmul on --threads threads)")
    how.add_argument("--peak-gbs", type=positive_float, metavar="X",
                     help="CPU memory bandwidth in GB/s for %%peak of poolings (default: "
                          "measured at the start of the run: a large copy)")
    how.add_argument("--gpu-peak-gflops", type=positive_float, metavar="X",
                     help="GPU fp32 peak for %%peak (default: none)")
    how.add_argument("--gpu-peak-gbs", type=positive_float, metavar="X",
                     help="GPU memory bandwidth for %%peak (default: none)")
    out = parser.add_argument_group("outputs and other modes")
    out.add_argument("--json", metavar="PATH", help="write the results document (atomically)")
    out.add_argument("--markdown", metavar="PATH", help="write a Markdown table")
    out.add_argument("--plot", metavar="PATH",
                     help="write a chart (PNG/SVG/PDF by extension; needs matplotlib)")
    out.add_argument("--compare", nargs=2, metavar=("A", "B"),
                     help="compare two saved runs instead of running; changes beyond "
                          "the noise are flagged")
    out.add_argument("--noise-floor", type=non_negative_float, default=None, metavar="T",
                     help="smallest relative change --compare flags (default 0.05)")
    out.add_argument("--load", nargs="+", metavar="JSON",
                     help="report saved runs (side by side) instead of running")
    out.add_argument("--quiet", action="store_true", help="no progress on stderr")


def _flat(lists: Optional[List[List[str]]]) -> Optional[List[str]]:
    return [v for sub in (lists or []) for v in sub] or None


def _error(msg: str) -> int:
    print(f"cnnfast bench: error: {msg}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    from ..bench import report
    from ..bench.results import ResultsError, load_json, write_text_atomic

    if args.plot and not args.compare:  # fail now, not after a run of many minutes
        problem = _plot_problem(args.plot)
        if problem:
            return _error(problem)
    if args.compare:
        try:
            a, b = (load_json(p) for p in args.compare)
        except ResultsError as exc:
            return _error(str(exc))
        floor = report.NOISE_FLOOR if args.noise_floor is None else args.noise_floor
        entries = report.compare(a, b, floor=floor)
        if a["machine"]["cpu"] != b["machine"]["cpu"] or (
                a["machine"]["threads"] != b["machine"]["threads"]):
            print("note: the two runs come from different machines or thread counts",
                  file=sys.stderr)
        print(f"A = {args.compare[0]} ({a['created']}), B = {args.compare[1]} "
              f"({b['created']})")
        print(report.compare_text(entries, color=sys.stdout.isatty()))
        if args.markdown:
            write_text_atomic(args.markdown, report.compare_markdown(entries))
        return 0
    if args.load:
        try:
            docs = [load_json(p) for p in args.load]
        except ResultsError as exc:
            return _error(str(exc))
        for doc in docs:
            print("\n".join(report.summary_lines(doc)))
            print(report.text_table(doc))
        return _write_outputs(args, docs, json_doc=None)
    return _run_suite(args)


def _plot_problem(path: str) -> str:
    """Why ``--plot PATH`` cannot be written ("" when it can): no matplotlib, or an
    extension matplotlib does not write."""
    from ..bench import report

    try:
        formats = report.plot_formats()
    except RuntimeError as exc:
        return str(exc)
    ext = os.path.splitext(path)[1][1:].lower()
    if ext and ext not in formats:
        return f"--plot {path!r}: matplotlib writes {', '.join(formats)}, not {ext!r}"
    return ""


def _peaks(args: argparse.Namespace, threads: int, say: Callable[[str], Any]
           ) -> Dict[str, Any]:
    """The CPU peaks for %peak and where each came from: the user's options, else
    the probes of ``cnnfast.bench.peak`` (measured now, on ``threads`` threads)."""
    from ..bench import peak, report

    out = {"peak_gflops": args.peak_gflops, "peak_gbs": args.peak_gbs}
    sources = {"peak_gflops": "given (--peak-gflops)", "peak_gbs": "given (--peak-gbs)"}
    for key, probe in (("peak_gflops", peak.cpu_gflops), ("peak_gbs", peak.cpu_gbs)):
        if out[key] is None:
            value, sources[key] = probe(threads)
            out[key] = round(value, 1)
    if args.gpu_peak_gflops:
        sources["gpu_peak_gflops"] = "given (--gpu-peak-gflops)"
    if args.gpu_peak_gbs:
        sources["gpu_peak_gbs"] = "given (--gpu-peak-gbs)"
    say(f"CPU peak for %peak: {out['peak_gflops']:g} GFLOP/s "
        f"({report.peak_kind(sources['peak_gflops'])}), {out['peak_gbs']:g} GB/s "
        f"({report.peak_kind(sources['peak_gbs'])})")
    out["peak_source"] = sources
    return out


def _run_suite(args: argparse.Namespace) -> int:
    from .. import registry
    from ..bench import impls as I
    from ..bench import report
    from ..bench.results import machine, make_document
    from ..bench.runner import Interrupted, Settings, run_cases, stderr_progress
    from ..bench.suite import ALL_OPS, SuiteError, default_suite_path, load_suite, \
        select_cases
    from ..nn.training import Progress
    from ..threads import get_num_threads

    suite_path = args.suite or default_suite_path()
    try:
        cases = load_suite(suite_path)
    except SuiteError as exc:
        return _error(str(exc))
    shapes, ops, backends = _flat(args.shape), _flat(args.op), _flat(args.backend)
    for op in ops or []:
        if op not in ALL_OPS:
            return _error(f"--op {op!r}: expected one of {', '.join(ALL_OPS)}")
    known = list(registry.backend_names()) + list(I.REFERENCES)
    for name in backends or []:
        if name not in known:
            return _error(f"--backend {name!r}: expected one of {', '.join(known)}")
    cases = select_cases(cases, quick=args.quick, shapes=shapes)
    if ops:
        cases = [c for c in cases if any(op in c.ops for op in ops)]
    if not cases:
        return _error("no case of the suite matches --quick/--shape/--op")
    if args.list:
        for c in cases:
            print(f"{c.name:<28} {c.kind:<15} {','.join(c.ops):<42} "
                  f"{'quick' if c.quick else '':<6}{c.describe()}")
        return 0
    threads = args.threads or get_num_threads()
    set_threads(threads)
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        pass
    impls, skipped = I.make_impls(backends, reference=not args.no_reference)
    progress = (lambda msg: None) if args.quiet else stderr_progress
    peaks = (_peaks(args, threads, progress) if any(i.device == "cpu" for i in impls)
             else {"peak_gflops": args.peak_gflops, "peak_gbs": args.peak_gbs,
                   "peak_source": None})
    settings = Settings(
        repeat=args.repeat or (5 if args.quick else 7), min_time=args.min_time,
        pause=args.pause, threads=threads, gpu_peak_gflops=args.gpu_peak_gflops,
        gpu_peak_gbs=args.gpu_peak_gbs, seed=args.seed, **peaks)
    for name, reason in skipped.items():
        progress(f"skipped {name}: {reason}")
    if not impls:
        # Not an error: e.g. `--backend cupy` on a machine without a GPU. The outputs
        # still say what was skipped and why.
        progress("nothing to run: every implementation asked for is skipped here")
    machine_info = machine(threads)
    device_names = {"cpu": f"{machine_info['cpu']} ({threads} threads)",
                    "gpu": machine_info["gpu"]}
    n_ops = sum(1 for c in cases for op in c.ops if not ops or op in ops)
    progress(f"{n_ops} (case, op) pairs from {len(cases)} cases on "
             f"{', '.join(i.name for i in impls) or 'nothing'}; {settings.repeat} samples "
             f"each, {threads} threads")
    interrupted = False
    in_main = threading.current_thread() is threading.main_thread()
    old_handler = signal.signal(signal.SIGTERM, _sigterm) if in_main else None
    bar = None if args.quiet or not impls else Progress(n_ops, "bench", sys.stderr,
                                                          unit="case")
    try:
        rows = run_cases(
            cases, ops, impls, settings, device_names=device_names,
            progress=bar.write if bar else progress,
            advance=(lambda done, total, text: bar.update(done, text, final=done == total))
            if bar else None)
    except Interrupted as exc:  # keep what was measured
        rows, interrupted = exc.rows, True
        if bar:
            bar.close()
        print(f"interrupted: writing the {len(rows)} results measured so far",
              file=sys.stderr)
    finally:
        if bar:
            bar.close()
        if in_main:
            signal.signal(signal.SIGTERM, old_handler)
    doc = make_document(rows, cases=cases, settings=settings, impls=impls,
                        skipped=skipped, command=_command(args), suite=suite_path,
                        quick=args.quick, machine_info=machine_info)
    doc["settings"]["interrupted"] = interrupted
    print("\n".join(report.summary_lines(doc)))
    print(report.text_table(doc))
    status = _write_outputs(args, [doc], json_doc=doc)
    bad = [r for r in rows if r["status"] == "error" or r["check"] == "mismatch"]
    for r in bad:
        what = r["reason"] if r["status"] == "error" else (
            f"result differs from the reference (max relative error "
            f"{r['max_rel_error']})")
        print(f"FAILED {r['case']} {r['op']} {r['impl']}: {what}", file=sys.stderr)
    if interrupted:
        return 130
    return status or (1 if bad else 0)


def _sigterm(signum: int, frame: Optional[FrameType]) -> NoReturn:
    # timeout(1) and job schedulers send SIGTERM: stop like Ctrl-C, saving results.
    raise KeyboardInterrupt


def _write_outputs(args: argparse.Namespace, docs: List[Dict[str, Any]],
                   json_doc: Optional[Dict[str, Any]]) -> int:
    from ..bench import report
    from ..bench.results import write_json, write_text_atomic

    if json_doc is not None and args.json:
        write_json(json_doc, args.json)
        print(f"wrote {args.json}", file=sys.stderr)
    elif args.json:
        return _error("--json writes a new run; with --load the files are already saved")
    if args.markdown:
        write_text_atomic(args.markdown, report.markdown(docs))
        print(f"wrote {args.markdown}", file=sys.stderr)
    if args.plot:
        if not any(r["status"] == "ok" for doc in docs for r in doc["results"]):
            print(f"no plot written to {args.plot}: nothing was timed", file=sys.stderr)
            return 0
        try:
            report.plot(docs, args.plot)
        except RuntimeError as exc:
            return _error(str(exc))
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def _command(args: argparse.Namespace) -> List[str]:
    """The command line, rebuilt from the parsed options (what the run did)."""
    cmd = ["cnnfast", "bench"]
    for name in ("suite", "repeat", "threads", "seed", "peak_gflops", "peak_gbs",
                 "gpu_peak_gflops", "gpu_peak_gbs", "json", "markdown", "plot"):
        value = getattr(args, name)
        if value is not None and not (name == "seed" and value == 0):
            cmd += [f"--{name.replace('_', '-')}", str(value)]
    for name in ("min_time", "pause"):
        value = getattr(args, name)
        if value != 0.02:
            cmd += [f"--{name.replace('_', '-')}", str(value)]
    if args.quick:
        cmd.append("--quick")
    if args.no_reference:
        cmd.append("--no-reference")
    for name in ("shape", "op", "backend"):
        values = _flat(getattr(args, name))
        if values:
            cmd += [f"--{name}", ",".join(values)]
    return cmd


# ``python -m cnnfast.cli.bench``
def main(argv: Optional[Sequence[str]] = None) -> int:  # pragma: no cover
    parser = argparse.ArgumentParser(prog="cnnfast bench", description=HELP)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
