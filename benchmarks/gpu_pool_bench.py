"""Pooling kernels of the cupy backend against torch/cuDNN on GPU-sized shapes.

    CUPY_CACHE_DIR=$PWD/.cupy_cache PYTHONPATH=$PWD python benchmarks/gpu_pool_bench.py

Checks every result against torch first (values and indices equal, gradients within
1e-5), then times GPU work only: a ``torch.cuda._sleep`` kernel holds the stream while
the host queues 20 calls, so Python launch cost is excluded (``cnnfast bench`` and
``gpu_probe.py overhead`` measure it). Median of 5 such samples, ms per call.
"""
import sys, time
sys.path.insert(0, '.')
import numpy as np, cupy as cp, torch
import torch.nn.functional as F
from cnnfast import params as P
from cnnfast.backends.cuda import pool_launch as ops
from cnnfast.backends.cuda import cupy_backend
rt = cupy_backend.runtime()
A = torch.ops.aten

def t_cupy(fn, it=20):
    fn(); cp.cuda.Device().synchronize()
    s, e = cp.cuda.Event(), cp.cuda.Event(); ts = []
    for _ in range(7):
        s.record()
        for _ in range(it): fn()
        e.record(); e.synchronize(); ts.append(cp.cuda.get_elapsed_time(s, e) / it)
    return float(np.median(ts))

def t_torch(fn, it=20):
    fn(); torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True); ts = []
    for _ in range(7):
        s.record()
        for _ in range(it): fn()
        e.record(); e.synchronize(); ts.append(s.elapsed_time(e) / it)
    return float(np.median(ts))

def t_dev(fn, it=20):
    # Device time only: a sleep kernel holds the stream while the host enqueues.
    fn(); torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True); ts = []
    for _ in range(5):
        torch.cuda._sleep(30_000_000)
        s.record()
        for _ in range(it): fn()
        e.record(); e.synchronize(); ts.append(s.elapsed_time(e) / it)
    return float(np.median(ts))

t_cupy = t_torch = t_dev

cases = [("112x112 k3s2p1", (32, 64, 112, 112), 3, 2, 1),
         ("56x56 k2s2", (64, 128, 56, 56), 2, 2, 0),
         ("global 7x7", (32, 512, 7, 7), 7, 7, 0),
         ("global 7x7 b8", (8, 2048, 7, 7), 7, 7, 0),
         ("28x28 k3s1p1", (64, 64, 28, 28), 3, 1, 1),
         ("3d 16x32x32 k3s2p1", (8, 32, 16, 32, 32), 3, 2, 1)]
rows = []
for name, shape, k, s, pd in cases:
    rank = len(shape) - 2
    p = P.pool_params(shape, k, s, pd, 1, False)
    xt = torch.randn(shape, device="cuda"); x = cp.asarray(xt)
    mp = [F.max_pool1d, F.max_pool2d, F.max_pool3d][rank - 1]
    ap = [F.avg_pool1d, F.avg_pool2d, F.avg_pool3d][rank - 1]
    yt, it_ = mp(xt, k, s, pd, return_indices=True)
    y, idx = ops.max_pool(rt, x, p, True)
    ok_m = bool(cp.array_equal(y, cp.asarray(yt)) and cp.array_equal(idx, cp.asarray(it_)))
    gyt = torch.randn_like(yt); gy = cp.asarray(gyt)
    mb = [None, A.max_pool2d_with_indices_backward, A.max_pool3d_with_indices_backward][rank - 1]
    gxt = mb(gyt, xt, [k]*rank, [s]*rank, [pd]*rank, [1]*rank, False, it_)
    gx = ops.max_pool_backward(rt, gy, idx, shape)
    ok_mb = bool(cp.allclose(gx, cp.asarray(gxt), rtol=1e-5, atol=1e-5))
    at = ap(xt, k, s, pd); a = ops.avg_pool(rt, x, p)
    ok_a = bool(cp.allclose(a, cp.asarray(at), rtol=1e-5, atol=1e-5))
    abw = [None, A.avg_pool2d_backward, A.avg_pool3d_backward][rank - 1]
    gat = abw(gyt, xt, [k]*rank, [s]*rank, [pd]*rank, False, True, None)
    ga = ops.avg_pool_backward(rt, gy, p)
    ok_ab = bool(cp.allclose(ga, cp.asarray(gat), rtol=1e-5, atol=1e-5))
    r = dict(name=name, ok=(ok_m, ok_mb, ok_a, ok_ab))
    r["max_fwd"] = (t_cupy(lambda: ops.max_pool(rt, x, p, False)), t_torch(lambda: mp(xt, k, s, pd)))
    r["max_fwd_idx"] = (t_cupy(lambda: ops.max_pool(rt, x, p, True)), t_torch(lambda: mp(xt, k, s, pd, return_indices=True)))
    r["max_bwd"] = (t_cupy(lambda: ops.max_pool_backward(rt, gy, idx, shape)), t_torch(lambda: mb(gyt, xt, [k]*rank, [s]*rank, [pd]*rank, [1]*rank, False, it_)))
    r["avg_fwd"] = (t_cupy(lambda: ops.avg_pool(rt, x, p)), t_torch(lambda: ap(xt, k, s, pd)))
    r["avg_bwd"] = (t_cupy(lambda: ops.avg_pool_backward(rt, gy, p)), t_torch(lambda: abw(gyt, xt, [k]*rank, [s]*rank, [pd]*rank, False, True, None)))
    if name.startswith("global"):
        with ops.override(fwd="thread"):
            r["avg_fwd_threadpath"] = (t_cupy(lambda: ops.avg_pool(rt, x, p)), 0.0)
            r["max_fwd_threadpath"] = (t_cupy(lambda: ops.max_pool(rt, x, p, False)), 0.0)
    if name.startswith("112"):
        with ops.override(max_bwd="segments"):
            r["max_bwd_segments"] = (t_cupy(lambda: ops.max_pool_backward(rt, gy, idx, shape)), 0.0)
    rows.append(r)
    print(r, flush=True)
print("\n%-22s %-18s %9s %9s %6s" % ("case", "op", "ours ms", "torch ms", "x"))
for r in rows:
    print(r["name"], "correct(max,maxbwd,avg,avgbwd)=", r["ok"])
    for op in [k for k in r if k not in ("name", "ok")]:
        o, t = r[op]
        print("%-22s %-18s %9.4f %9.4f %6.2f" % (r["name"], op, o, t, (t / o) if t else 0))

