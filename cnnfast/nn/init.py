"""Weight initializers by Keras name, seeded through a ``numpy.random.Generator``.

Each initializer is ``f(shape, fan_in, fan_out, rng, dtype) -> numpy array``; the
layer computes the fans (Keras's rule: ``fan_in = in_channels * receptive field``,
``fan_out = out_channels * receptive field``). Truncated normals are cut at two
standard deviations and rescaled as Keras does (variance-scaling constant
0.87962566103423978 is the std of a unit normal truncated to [-2, 2]).
"""

from __future__ import annotations

import math
from typing import Callable, Union

import numpy as np

# std of a standard normal truncated to [-2, 2]
_TRUNC_STD = 0.87962566103423978


def _truncated_normal(rng, shape, std):
    out = rng.standard_normal(shape)
    bad = np.abs(out) > 2.0
    while bad.any():  # redraw the tails: exact truncation, not clipping
        out[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(out) > 2.0
    return out * std


def random_normal(shape, fan_in, fan_out, rng, dtype):
    return (rng.standard_normal(shape) * 0.05).astype(dtype)


def random_uniform(shape, fan_in, fan_out, rng, dtype):
    return rng.uniform(-0.05, 0.05, shape).astype(dtype)


def truncated_normal(shape, fan_in, fan_out, rng, dtype):
    return _truncated_normal(rng, shape, 0.05).astype(dtype)


def _uniform(limit):
    def init(shape, fan_in, fan_out, rng, dtype):
        return rng.uniform(-limit(fan_in, fan_out), limit(fan_in, fan_out),
                           shape).astype(dtype)
    return init


def _normal(std):
    def init(shape, fan_in, fan_out, rng, dtype):
        return _truncated_normal(rng, shape, std(fan_in, fan_out) / _TRUNC_STD).astype(dtype)
    return init


lecun_uniform = _uniform(lambda i, o: math.sqrt(3.0 / i))
lecun_normal = _normal(lambda i, o: math.sqrt(1.0 / i))
glorot_uniform = _uniform(lambda i, o: math.sqrt(6.0 / (i + o)))
glorot_normal = _normal(lambda i, o: math.sqrt(2.0 / (i + o)))
he_uniform = _uniform(lambda i, o: math.sqrt(6.0 / i))
he_normal = _normal(lambda i, o: math.sqrt(2.0 / i))


def zeros(shape, fan_in, fan_out, rng, dtype):
    return np.zeros(shape, dtype)


def ones(shape, fan_in, fan_out, rng, dtype):
    return np.ones(shape, dtype)


INITIALIZERS = {
    "random_normal": random_normal, "random_uniform": random_uniform,
    "truncated_normal": truncated_normal,
    "lecun_uniform": lecun_uniform, "lecun_normal": lecun_normal,
    "glorot_uniform": glorot_uniform, "glorot_normal": glorot_normal,
    "he_uniform": he_uniform, "he_normal": he_normal,
    "zeros": zeros, "ones": ones,
}

Initializer = Union[str, Callable]


def get_initializer(init: Initializer) -> Callable:
    """The initializer function for a Keras name (or a callable, returned as is)."""
    if callable(init):
        return init
    if isinstance(init, str) and init in INITIALIZERS:
        return INITIALIZERS[init]
    raise ValueError(f"initializer {init!r} is unknown; expected one of "
                     f"{', '.join(INITIALIZERS)} or a callable "
                     f"f(shape, fan_in, fan_out, rng, dtype)")


def init_name(init: Initializer):
    """The name to store in a layer config (a callable is not JSON-able: None; the
    weights in a checkpoint make it irrelevant on reload)."""
    return init if isinstance(init, str) else None


def fans(shape):
    """Keras's fans for a weight (out, in, *kernel) or (out, in)."""
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive
