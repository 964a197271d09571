"""Weight initializers by Keras name, seeded through a ``numpy.random.Generator``.

Each initializer is ``f(shape, fan_in, fan_out, rng, dtype) -> numpy array``; the
layer computes the fans (Keras's rule: ``fan_in = in_channels * receptive field``,
``fan_out = out_channels * receptive field``). Truncated normals are cut at two
standard deviations and rescaled as Keras does (variance-scaling constant
0.87962566103423978 is the std of a unit normal truncated to [-2, 2]).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np

#: ``f(shape, fan_in, fan_out, rng, dtype) -> numpy array``.
InitFn = Callable[[Tuple[int, ...], int, int, np.random.Generator, Any], np.ndarray]

# std of a standard normal truncated to [-2, 2]
_TRUNC_STD = 0.87962566103423978


def _truncated_normal(rng: np.random.Generator, shape: Tuple[int, ...],
                      std: float) -> np.ndarray:
    out = rng.standard_normal(shape)
    bad = np.abs(out) > 2.0
    while bad.any():  # redraw the tails: exact truncation, not clipping
        out[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(out) > 2.0
    return out * std


def random_normal(shape: Tuple[int, ...], fan_in: int, fan_out: int,
                    rng: np.random.Generator, dtype: Any) -> np.ndarray:
    return (rng.standard_normal(shape) * 0.05).astype(dtype)


def random_uniform(shape: Tuple[int, ...], fan_in: int, fan_out: int,
                     rng: np.random.Generator, dtype: Any) -> np.ndarray:
    return rng.uniform(-0.05, 0.05, shape).astype(dtype)


def truncated_normal(shape: Tuple[int, ...], fan_in: int, fan_out: int,
                       rng: np.random.Generator, dtype: Any) -> np.ndarray:
    return _truncated_normal(rng, shape, 0.05).astype(dtype)


def _uniform(limit: Callable[[int, int], float]) -> InitFn:
    def init(shape: Tuple[int, ...], fan_in: int, fan_out: int,
             rng: np.random.Generator, dtype: Any) -> np.ndarray:
        return rng.uniform(-limit(fan_in, fan_out), limit(fan_in, fan_out),
                           shape).astype(dtype)
    return init


def _normal(std: Callable[[int, int], float]) -> InitFn:
    def init(shape: Tuple[int, ...], fan_in: int, fan_out: int,
             rng: np.random.Generator, dtype: Any) -> np.ndarray:
        return _truncated_normal(rng, shape, std(fan_in, fan_out) / _TRUNC_STD).astype(dtype)
    return init


lecun_uniform = _uniform(lambda i, o: math.sqrt(3.0 / i))
lecun_normal = _normal(lambda i, o: math.sqrt(1.0 / i))
glorot_uniform = _uniform(lambda i, o: math.sqrt(6.0 / (i + o)))
glorot_normal = _normal(lambda i, o: math.sqrt(2.0 / (i + o)))
he_uniform = _uniform(lambda i, o: math.sqrt(6.0 / i))
he_normal = _normal(lambda i, o: math.sqrt(2.0 / i))


def zeros(shape: Tuple[int, ...], fan_in: int, fan_out: int,
            rng: np.random.Generator, dtype: Any) -> np.ndarray:
    return np.zeros(shape, dtype)


def ones(shape: Tuple[int, ...], fan_in: int, fan_out: int,
           rng: np.random.Generator, dtype: Any) -> np.ndarray:
    return np.ones(shape, dtype)


INITIALIZERS: Dict[str, InitFn] = {
    "random_normal": random_normal, "random_uniform": random_uniform,
    "truncated_normal": truncated_normal,
    "lecun_uniform": lecun_uniform, "lecun_normal": lecun_normal,
    "glorot_uniform": glorot_uniform, "glorot_normal": glorot_normal,
    "he_uniform": he_uniform, "he_normal": he_normal,
    "zeros": zeros, "ones": ones,
}

Initializer = Union[str, Callable]


def get_initializer(init: Initializer) -> Callable:
    """The initializer function for a Keras name (or a callable, returned as is).

    Parameters
    ----------
    init : str or callable
        A key of ``INITIALIZERS`` or ``f(shape, fan_in, fan_out, rng, dtype)``.

    Returns
    -------
    callable
        ``f(shape, fan_in, fan_out, rng, dtype) -> numpy array``.

    Raises
    ------
    ValueError
        If ``init`` is neither a known name nor callable.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnfast.nn import get_initializer
    >>> w = get_initializer("he_uniform")((4, 3), 3, 4, np.random.default_rng(0), np.float32)
    >>> w.shape, w.dtype, bool(np.abs(w).max() <= np.sqrt(6 / 3))
    ((4, 3), dtype('float32'), True)
    >>> get_initializer("kaiming")
    Traceback (most recent call last):
    ValueError: initializer 'kaiming' is unknown; ...
    """
    if callable(init):
        return init
    if isinstance(init, str) and init in INITIALIZERS:
        return INITIALIZERS[init]
    raise ValueError(f"initializer {init!r} is unknown; expected one of "
                     f"{', '.join(INITIALIZERS)} or a callable "
                     f"f(shape, fan_in, fan_out, rng, dtype)")


def init_name(init: Initializer) -> Optional[str]:
    """The name to store in a layer config (a callable is not JSON-able: None; the
    weights in a checkpoint make it irrelevant on reload).

    Parameters
    ----------
    init : str or callable
        An initializer as a layer takes it.

    Returns
    -------
    str or None
        ``init`` if it is a name, else ``None``.

    Examples
    --------
    >>> from cnnfast.nn.init import init_name
    >>> init_name("zeros"), init_name(lambda *args: None)
    ('zeros', None)
    """
    return init if isinstance(init, str) else None


def fans(shape: Sequence[int]) -> Tuple[int, int]:
    """Keras's fans for a weight (out, in, *kernel) or (out, in).

    Parameters
    ----------
    shape : sequence of int
        The weight's shape.

    Returns
    -------
    tuple of int
        ``(fan_in, fan_out)``.

    Examples
    --------
    >>> from cnnfast.nn.init import fans
    >>> fans((8, 4, 3, 3))
    (36, 72)
    """
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive
