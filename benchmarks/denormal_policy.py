"""What the denormal policy costs: cpp conv_backward on normal and on all-denormal
grad_y, with set_flush_denormal(False) (the default) and (True), interleaved in one
process; medians of 7 rounds.

    CNNFAST_NUM_THREADS=2 .venv/bin/python benchmarks/denormal_policy.py
"""

import time

import numpy as np

import cnnfast as cf


def main(rounds=7):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 64, 28, 28), np.float32)
    w = rng.standard_normal((64, 64, 3, 3), np.float32) * 0.05
    normal = rng.standard_normal((32, 64, 28, 28), np.float32)
    grads = {"normal": normal, "denormal": (normal * 1e-39).astype(np.float32)}
    assert np.all(np.abs(grads["denormal"]) < np.finfo(np.float32).tiny)

    def seconds(gy):
        start = time.perf_counter()
        cf.conv_backward(gy, x, w, padding=1, backend="cpp")
        return time.perf_counter() - start

    times = {}
    try:
        for _ in range(rounds):
            for flush in (False, True):
                cf.set_flush_denormal(flush)
                for name, gy in grads.items():
                    times.setdefault((flush, name), []).append(seconds(gy))
    finally:
        cf.set_flush_denormal(False)
    print(f"cpp conv_backward 32x64x28x28, 64->64 3x3, {cf.get_num_threads()} threads")
    for (flush, name), t in times.items():
        print(f"flush_denormal={flush!s:5}  grad_y {name:8}  median {np.median(t) * 1e3:7.1f} ms")


if __name__ == "__main__":
    main()
