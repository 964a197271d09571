"""A deliberately wrong backend (the numpy reference with two faults), to show that the
fuzzer's comparison catches what it must: one extra term in a convolution's first
output, and an input modified in place by max pooling."""

from cnnfast.backends.numpy import backend as numpy_backend

ARRAY = "numpy"
DTYPES = ("float32", "float64")


def _conv(x, w, b, p):
    y = numpy_backend.conv(x, w, b, p)
    y.flat[0] += w.flat[0] * x.flat[-1]  # a term that does not belong there
    return y


def _max_pool(x, p, return_indices):
    out = numpy_backend.max_pool(x, p, return_indices)
    x.flat[0] = -x.flat[0]  # writes to the caller's array
    return out


OPS = dict(numpy_backend.OPS, conv=_conv, max_pool=_max_pool)
