"""A test backend that implements conv only (by delegating to the reference) and
declines float32, to exercise the registry's errors and the automatic fallback."""

from cnnfast.backends.numpy import backend as numpy_backend

ARRAY = "numpy"
DTYPES = ("float64",)
CALLS = []


def _conv(x, w, b, p):
    CALLS.append("conv")
    return numpy_backend.conv(x, w, b, p)


def unsupported(op, params, dtype):
    if op == "conv" and params.groups > 1:
        return "grouped convolution is not implemented in the partial backend"
    return None


OPS = {"conv": _conv}
