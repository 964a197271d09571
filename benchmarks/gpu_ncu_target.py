"""One call of each op named on the command line, for Nsight Compute to profile:

    ncu --launch-skip 3 --launch-count 1 -k regex:conv_gemm \\
        python benchmarks/gpu_ncu_target.py resnet_fwd

Every op runs 4 times (the first compiles or loads the kernels), so
``--launch-skip`` picks a warm launch.
"""

import sys

import numpy as np


def main(names):
    import cupy as cp

    import cnnfast

    rng = np.random.default_rng(0)

    def arr(*shape):
        return cp.asarray(rng.standard_normal(shape).astype(np.float32))

    x, w = arr(8, 64, 56, 56), arr(64, 64, 3, 3)
    gy = arr(8, 64, 56, 56)
    xd, wd = arr(8, 128, 56, 56), arr(128, 1, 3, 3)
    gyd = arr(8, 128, 56, 56)
    ops = {
        "resnet_fwd": lambda: cnnfast.conv2d(x, w, padding=1, backend="cupy"),
        "resnet_bwdx": lambda: cnnfast.conv_backward(gy, x, w, 1, 1, needs=("x",),
                                                     backend="cupy"),
        "resnet_bwdw": lambda: cnnfast.conv_backward(gy, x, w, 1, 1, needs=("weight",),
                                                     backend="cupy"),
        "dw_fwd": lambda: cnnfast.conv2d(xd, wd, padding=1, groups=128, backend="cupy"),
        "dw_bwdw": lambda: cnnfast.conv_backward(gyd, xd, wd, 1, 1, groups=128,
                                                 needs=("weight",), backend="cupy"),
    }
    for name in names:
        for _ in range(4):
            ops[name]()
    cp.cuda.Device().synchronize()


if __name__ == "__main__":
    main(sys.argv[1:])
