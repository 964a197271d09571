"""The numba backend against torch (CPU) on forward, input gradient and weight
gradient, side by side in one process.

    python benchmarks/numba_grad_bench.py [--threads 2] [--reps 9] [--ops fwd,gx,gw]
                                          [--only NAME_SUBSTRING] [--f64]
                                          [--clock wall|cpu] [--baseline REV]

Rows are the benchmark suite's cases (``cnnfast/bench/suite.toml``, by name) plus
a 1x1 ResNet layer at 14x14. Every rep times numba then torch back to back
(interleaved, so machine noise hits both alike, after one untimed warm call of
each); the table shows the medians and the ratio numba_time / torch_time (< 1:
numba is faster), and the numba path that ran (``backend.last_paths()``).
``--baseline REV`` also times the numba backend of git revision REV (its files
extracted into a temporary package, with its own numba cache) in the same
interleaved loop: a before/after comparison under the same machine noise.

torch side: ``torch.nn.functional.conv{1,2,3}d`` for the forward, and
``aten.convolution_backward`` with an output mask (the kernels autograd calls,
without building a graph) for the gradients, as ``cnnfast bench`` does.

Two OpenMP runtimes share the process (numba's omp layer and torch's): with the
default active waiting, each one's spinning workers starve the other's (measured
here: a 0.8 ms torch 1x1 convolution took 32 ms, numba's 2.2 ms one 8 ms), so the
script sets ``OMP_WAIT_POLICY=PASSIVE`` before either loads unless ``--active``
(or the variable is already set).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

SUITE_ROWS = ("fmnist.conv1.n64", "fmnist.conv2.n64", "resnet.conv3x3.c64",
              "resnet.conv1x1", "resnet.stem7x7", "conv1d.k9", "conv3d.k3")
# (name, x shape, weight shape, stride, padding): rows the suite does not have.
EXTRA_ROWS = (("resnet.conv1x1.14x14", (8, 256, 14, 14), (64, 256, 1, 1), 1, 0),)
OPS = {"fwd": "forward", "gx": "input grad", "gw": "weight grad"}


def _rows():
    from cnnfast.bench.suite import load_suite

    cases = {c.name: c for c in load_suite()}
    rows = []
    for name in SUITE_ROWS:
        c = cases[name]
        o = c.options
        rows.append((name, c.x_shape, tuple(c.w_shape), o.get("stride", 1),
                     o.get("padding", 0)))
    return rows + list(EXTRA_ROWS)


def _load_baseline(rev: str):
    """The numba backend module of git revision ``rev``, importable on its own: its
    ``cnnfast/backends/numba`` files in a temporary package whose imports of the
    rest of cnnfast point at the installed one."""
    import importlib
    import subprocess
    import tempfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    files = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev,
                            "cnnfast/backends/numba/"], cwd=root, check=True,
                           capture_output=True, text=True).stdout.split()
    tmp = Path(tempfile.mkdtemp(prefix="numba_baseline_"))
    pkg = "numba_baseline_" + "".join(c for c in rev if c.isalnum())
    for f in files:
        if not f.endswith(".py"):
            continue
        text = subprocess.run(["git", "show", f"{rev}:{f}"], cwd=root, check=True,
                              capture_output=True, text=True).stdout
        text = text.replace("from ... import", "from cnnfast import").replace(
            "from ...", "from cnnfast.")
        dest = tmp / pkg / Path(f).relative_to("cnnfast/backends/numba")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text)
    sys.path.insert(0, str(tmp))
    return importlib.import_module(f"{pkg}.backend")


def _baseline_call(old, op, x, w, gy, stride, pad):
    """``op`` of the baseline backend module ``old``, called as the dispatcher calls
    a backend (normalised parameters, contiguous arrays)."""
    from cnnfast import params as P

    p = P.conv_params(x.shape, w.shape, stride, pad, 1, 1)
    if op == "fwd":
        return lambda: old.conv(x, w, None, p)
    needs = frozenset({"x"} if op == "gx" else {"weight"})
    return lambda: old.conv_backward(gy, x, w, p, needs)


def _cpu_model() -> str:
    from cnnfast.bench.results import cpu_model

    return cpu_model()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=9, help="timed reps (>= 7 advised)")
    parser.add_argument("--ops", default="fwd,gx,gw", help="comma list of fwd, gx, gw")
    parser.add_argument("--only", default=None, help="rows whose name contains this")
    parser.add_argument("--f64", action="store_true", help="float64 instead of float32")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: process CPU time (all threads) instead of wall time, "
                             "steadier on a loaded machine (1 thread: kernel efficiency)")
    parser.add_argument("--baseline", metavar="REV", default=None,
                        help="also time the numba backend of this git revision")
    parser.add_argument("--active", action="store_true",
                        help="leave OpenMP's wait policy alone (see the docstring)")
    args = parser.parse_args(argv)
    if not args.active:
        if "torch" in sys.modules or "numba" in sys.modules:
            print("note: OpenMP may already be loaded; OMP_WAIT_POLICY may not apply")
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    import torch
    import torch.nn.functional as F

    import cnnfast
    from cnnfast.backends.numba import backend as nb

    old = _load_baseline(args.baseline) if args.baseline else None

    torch.set_num_threads(args.threads)
    cnnfast.set_num_threads(args.threads)
    dtype = np.float64 if args.f64 else np.float32
    ops = [o for o in args.ops.split(",") if o]
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    rng = np.random.default_rng(0)
    print(f"CPU: {_cpu_model()}; threads={args.threads} (cnnfast and torch) "
          f"dtype={np.dtype(dtype).name} reps={args.reps} (median, interleaved, "
          f"{args.clock} clock); "
          f"torch {torch.__version__}; OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY', '(unset)')}")
    base_cols = (f" {args.baseline[:10] + ' ms':>13s} {'ratio':>6s}" if old else "")
    print(f"{'row':24s} {'op':12s} {'numba ms':>10s} {'torch ms':>10s} {'ratio':>6s}"
          f"{base_cols}  path" + (f" (baseline {args.baseline}: ratio = its time / "
                                  f"torch's)" if old else ""))
    for name, xs, ws, stride, pad in _rows():
        if args.only and args.only not in name:
            continue
        rank = len(xs) - 2
        x = rng.standard_normal(xs).astype(dtype)
        w = rng.standard_normal(ws).astype(dtype)
        y = cnnfast.conv(x, w, None, stride, pad, backend="numba")
        gy = rng.standard_normal(y.shape).astype(dtype)
        xt, wt, gyt = (torch.from_numpy(a) for a in (x, w, gy))
        st, pd = [stride] * rank, [pad] * rank
        conv_t = getattr(F, f"conv{rank}d")
        aten = torch.ops.aten
        for op in ops:
            if op == "fwd":
                ours = lambda: cnnfast.conv(x, w, None, stride, pad,  # noqa: E731
                                            backend="numba")
                theirs = lambda: conv_t(xt, wt, None, stride, pad)  # noqa: E731
                key = "y"
            else:
                needs = ("x",) if op == "gx" else ("weight",)
                mask = [op == "gx", op == "gw", False]
                ours = lambda: cnnfast.conv_backward(gy, x, w, stride, pad,  # noqa: E731
                                                     needs=needs, backend="numba")
                theirs = lambda: aten.convolution_backward(  # noqa: E731
                    gyt, xt, wt, None, st, pd, [1] * rank, False, [0] * rank, 1, mask)
                key = "grad_x" if op == "gx" else "grad_weight"
            base = _baseline_call(old, op, x, w, gy, stride, pad) if old else None
            ours()
            path = nb.last_paths().get(key, "?")
            theirs()
            if base:
                base()
                path += f" (baseline: {old.last_paths().get(key, '?')})"
            tn, tt, tb = [], [], []
            for _ in range(args.reps):
                t0 = clock()
                ours()
                t1 = clock()
                theirs()
                t2 = clock()
                tn.append(t1 - t0)
                tt.append(t2 - t1)
                if base:
                    t3 = clock()
                    base()
                    tb.append(clock() - t3)
            mn, mt = statistics.median(tn), statistics.median(tt)
            extra = ""
            if base:
                mb = statistics.median(tb)
                extra = f" {mb * 1e3:13.2f} {mb / mt:6.2f}"
            print(f"{name:24s} {OPS[op]:12s} {mn * 1e3:10.2f} {mt * 1e3:10.2f} "
                  f"{mn / mt:6.2f}{extra}  {path}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
