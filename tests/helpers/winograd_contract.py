"""The Winograd accuracy contract, shared by the tests of every backend's Winograd path
(tests/test_winograd.py: cpp 2-d, tests/test_winograd3d.py: cpp 3-d,
tests/test_numba_winograd.py). With S = max over the outputs of sum |terms| (the
float64 reference applied to |inputs|): float32 |got - exact| <= 1e-5 * S + 1e-4 *
|exact|, float64 |got - exact| <= 1e-12 * S, for every output."""

from __future__ import annotations

import zlib

import numpy as np

import cnnfast

BOUNDS = {np.float32: (1e-5, 1e-4), np.float64: (1e-12, 0.0)}  # (x S, x |exact|)


def values(rng, kind, shape, huge=False):
    """Test data of one adversarial `kind`: "normal" / "deep", "wide-range" (values x
    10**U(-4, 4)), "constant-sign" (no cancellation), "one-huge" (small values, and one
    huge value in the array for which `huge` is true)."""
    if kind == "one-huge":
        v = rng.standard_normal(shape) * 1e-3
        if huge:
            v.flat[rng.integers(v.size)] = 1e4
        return v
    if kind == "wide-range":
        return rng.standard_normal(shape) * 10.0 ** rng.uniform(-4, 4, shape)
    if kind == "constant-sign":
        return np.abs(rng.standard_normal(shape))
    return rng.standard_normal(shape)


def ops(x, w, gy, b, kw, backend, algorithm="auto"):
    """y, grad_x and grad_weight of one convolution (its rank is x's)."""
    y = cnnfast.conv(x, w, b, backend=backend, algorithm=algorithm, **kw)
    gx, gw, _ = cnnfast.conv_backward(gy, x, w, needs=("x", "weight"), backend=backend,
                                      algorithm=algorithm, **kw)
    return {"y": y, "grad_x": gx, "grad_weight": gw}


def reference(x, w, gy, b, kw):
    """The exact float64 results and their S (the reference on |inputs|)."""
    f = [None if a is None else a.astype(np.float64) for a in (x, w, gy, b)]
    exact = ops(*f, kw, "numpy")
    bounds = ops(*[None if a is None else np.abs(a) for a in f], kw, "numpy")
    return exact, {k: float(v.max()) if v.size else 0.0 for k, v in bounds.items()}


def worst(got, exact, S, dtype):
    """max over the outputs of |err| / bound (the contract holds while < 1)."""
    a, r = BOUNDS[dtype]
    out = {}
    for k, e in exact.items():
        bound = a * S[k] + r * np.abs(e)
        err = np.abs(got[k].astype(np.float64) - e)
        tiny = np.finfo(np.float64).tiny
        out[k] = float(np.max(err / np.maximum(bound, tiny))) if e.size else 0.0
    return out


def check(x, w, gy, b, kw, dtype, what, backend, algorithm="winograd", last_paths=None):
    """Runs the three results on `backend` in `dtype` and asserts the contract, that no
    input was modified, the dtypes, and (given the backend's `last_paths`) that every
    kernel ran winograd. Returns the worst |err| / bound per result."""
    x, w, gy = (a.astype(dtype) for a in (x, w, gy))
    b = None if b is None else b.astype(dtype)
    copies = [a.copy() for a in (x, w, gy)]
    got = ops(x, w, gy, b, kw, backend, algorithm)
    if last_paths is not None:
        assert set(last_paths().values()) == {"winograd"}
    for a, c in zip((x, w, gy), copies):
        assert np.array_equal(a, c), f"{what}: an input was modified"
    for k, v in got.items():
        assert v.dtype == dtype, (what, k)
    exact, S = reference(x, w, gy, b, kw)
    result = worst(got, exact, S, dtype)
    assert max(result.values()) < 1, f"{what} {np.dtype(dtype).name}: |err| / bound {result}"
    return result


# (N, C, K, H, W, padding) of the 2-d grids: sizes not multiple of 4, 1x1 and 2x2 images
# with padding, one channel in or out, asymmetric and large padding (the input
# gradient's padding 2 - p is then negative), several images per tile block, and wide
# and deep layers.
GRID_2D = [
    (1, 1, 1, 1, 1, 1),
    (2, 3, 1, 2, 2, 1),
    (1, 1, 5, 3, 3, 0),
    (3, 2, 3, 1, 4, 2),
    (2, 5, 7, 9, 4, 3),
    (2, 4, 6, 7, 10, ((0, 2), (1, 0))),
    (1, 6, 4, 8, 8, "same"),
    (2, 3, 5, 6, 5, "valid"),
    (4, 8, 16, 13, 13, 0),
    (2, 16, 8, 17, 23, 1),
    (1, 7, 9, 4, 33, 1),
    (3, 33, 20, 21, 11, 1),
    (8, 24, 40, 28, 28, 1),
    (1, 70, 13, 10, 10, 1),
]


def grid_id(case) -> str:
    return "x".join(map(str, case[:5])) + f"-p{case[5]}"


def grid_case(case):
    """``(x, w, gy, b, kw)`` of a GRID_2D case: random float64 data, 3x3 kernel."""
    n, c, k, h, w, pad = case
    rng = np.random.default_rng(7)
    x = rng.standard_normal((n, c, h, w))
    wt = rng.standard_normal((k, c, 3, 3))
    b = rng.standard_normal(k)
    y = cnnfast.conv2d(x, wt, padding=pad, backend="numpy")
    return x, wt, rng.standard_normal(y.shape), b, dict(padding=pad)


# The 2-d adversarial cases: (kind, N, C, K, H, W, padding[, the array with the huge
# value]).
ADVERSARIAL_2D = [
    ("normal", 2, 32, 32, 15, 15, 1),
    ("wide-range", 2, 64, 64, 14, 14, 1),
    ("deep", 2, 512, 512, 6, 6, 1),
    ("deep", 1, 256, 384, 5, 7, 1),
    ("constant-sign", 2, 64, 48, 13, 13, 1),
    ("one-huge", 2, 16, 16, 11, 12, 1, "x"),
    ("one-huge", 2, 16, 16, 11, 12, 1, "w"),
    ("one-huge", 2, 16, 16, 11, 12, 1, "gy"),
    ("one-huge", 1, 128, 128, 9, 9, 2, "x"),
    ("one-huge", 1, 128, 128, 9, 9, 2, "w"),
    ("one-huge", 1, 128, 128, 9, 9, 2, "gy"),
]


def adversarial_id(case) -> str:
    return "-".join(map(str, (case[0], *case[7:], f"C{case[2]}", f"K{case[3]}")))


def adversarial_case(case, seed):
    """``(x, w, gy, b, kw)`` of an ADVERSARIAL_2D case, its data drawn for ``seed``
    (a case with a huge value puts it elsewhere for each seed)."""
    kind, n, c, k, h, w, pad = case[:7]
    huge = case[7] if len(case) > 7 else None
    rng = np.random.default_rng([zlib.crc32(repr(case).encode()), seed])
    x = values(rng, kind, (n, c, h, w), huge == "x")
    wt = values(rng, kind, (k, c, 3, 3), huge == "w")
    gy = values(rng, kind, (n, k, h + 2 * pad - 2, w + 2 * pad - 2), huge == "gy")
    return x, wt, gy, values(rng, kind, (k,)), dict(padding=pad)


# The 3-d cases (tests/test_winograd3d.py: cpp, tests/test_numba_winograd3d.py):
# (kind, N, C, K, (D, H, W), padding[, the array with the huge value]), a 3x3x3 kernel.
ADVERSARIAL_3D = [
    ("normal", 2, 16, 16, (5, 15, 15), 1),
    ("wide-range", 1, 48, 32, (4, 14, 14), 1),
    ("deep", 1, 256, 256, (3, 6, 6), 1),
    ("deep", 1, 128, 192, (2, 5, 7), 1),
    ("constant-sign", 1, 64, 48, (4, 13, 13), 1),
    ("one-huge", 2, 16, 16, (4, 11, 12), 1, "x"),
    ("one-huge", 2, 16, 16, (4, 11, 12), 1, "w"),
    ("one-huge", 2, 16, 16, (4, 11, 12), 1, "gy"),
    ("one-huge", 1, 64, 64, (3, 9, 9), 2, "x"),
    ("one-huge", 1, 64, 64, (3, 9, 9), 2, "w"),
    ("one-huge", 1, 64, 64, (3, 9, 9), 2, "gy"),
]


def adversarial3d_id(case) -> str:
    return "-".join(map(str, (case[0], *case[6:], f"C{case[2]}", f"K{case[3]}")))


def adversarial3d_case(case, seed):
    """``(x, w, gy, b, kw)`` of an ADVERSARIAL_3D case, its data drawn for ``seed``."""
    kind, n, c, k, dhw, pad = case[:6]
    huge = case[6] if len(case) > 6 else None
    rng = np.random.default_rng([zlib.crc32(repr(case).encode()), seed])
    x = values(rng, kind, (n, c, *dhw), huge == "x")
    wt = values(rng, kind, (k, c, 3, 3, 3), huge == "w")
    gy = values(rng, kind, (n, k) + tuple(v + 2 * pad - 2 for v in dhw), huge == "gy")
    return x, wt, gy, values(rng, kind, (k,)), dict(padding=pad)


# (N, C, K, (D, H, W), KD, padding): sizes not multiples of 4, depth 1 with padding (the
# output slices whose taps all fall in the padding hold the bias), depth taps 1, 2, 3
# and 5, asymmetric and large padding (the input gradient's padding k - 1 - p is then
# negative), one channel in or out, more output slices than cpp's V slots (its window
# moved to the front), several tile blocks per plane.
GRID_3D = [
    (1, 1, 1, (1, 1, 1), 1, 1),
    (2, 3, 2, (1, 2, 2), 3, 1),
    (1, 2, 3, (3, 4, 4), 1, 2),
    (2, 4, 6, (4, 5, 7), 2, 1),
    (1, 5, 7, (7, 8, 6), 3, ((1, 0), (0, 2), (2, 1))),
    (1, 4, 4, (9, 6, 6), 5, 2),
    (1, 6, 4, (5, 8, 8), 3, "same"),
    (2, 3, 5, (6, 6, 5), 3, "valid"),
    (1, 1, 9, (12, 9, 9), 3, 1),
    (2, 9, 1, (11, 7, 10), 3, 1),
    (1, 17, 20, (5, 13, 14), 3, 3),
    (1, 8, 8, (3, 70, 66), 3, 1),
]


def grid3d_id(case) -> str:
    return f"{case[0]}x{case[1]}x{case[2]}-{'x'.join(map(str, case[3]))}-k{case[4]}-p{case[5]}"


def grid3d_case(case):
    """``(x, w, gy, b, kw)`` of a GRID_3D case: random float64 data, a KDx3x3 kernel."""
    n, c, k, dhw, kd, pad = case
    rng = np.random.default_rng(7)
    x = rng.standard_normal((n, c, *dhw))
    wt = rng.standard_normal((k, c, kd, 3, 3))
    b = rng.standard_normal(k)
    y = cnnfast.conv3d(x, wt, padding=pad, backend="numpy")
    return x, wt, rng.standard_normal(y.shape), b, dict(padding=pad)


# ((N, C, K, D, H, W), KD) run with 1, 2 and 3 threads: few tile blocks per plane and a
# deep input, several blocks per plane, a 1-slice kernel.
SCHEDULES_3D = [((1, 16, 24, 20, 8, 8), 3), ((2, 8, 16, 6, 30, 26), 3),
                ((1, 12, 8, 9, 12, 12), 1)]


def schedule3d_id(case) -> str:
    return "x".join(map(str, case[0])) + f"-k{case[1]}"


def thread_runs3d(case, dtype, threads, backend):
    """The three results of a SCHEDULES_3D case on 1, 2 and 3 threads (``threads``:
    the fixture that sets the count)."""
    (n, c, k, d, h, w), kd = case
    rng = np.random.default_rng(11)
    x = rng.standard_normal((n, c, d, h, w)).astype(dtype)
    wt = rng.standard_normal((k, c, kd, 3, 3)).astype(dtype)
    b = rng.standard_normal(k).astype(dtype)
    gy = rng.standard_normal((n, k, d + 3 - kd, h, w)).astype(dtype)
    runs = []
    for nt in (1, 2, 3):
        threads(nt)
        runs.append(ops(x, wt, gy, b, dict(padding=1), backend, "winograd"))
    return runs
