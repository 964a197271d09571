"""Helpers shared by the layer families: argument normalisation (``_tuple``), JSON-able
configs (``_jsonable``), the layers' padding rule (``tf_same_pads``,
``_resolve_padding``) and the per-sample input check (``_check_input``)."""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import numpy as np

from ... import params as P


def _tuple(value: Any, rank: int, name: str) -> Tuple[int, ...]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return (int(value),) * rank
    if isinstance(value, (tuple, list)) and len(value) == rank:
        return tuple(int(v) for v in value)
    raise ValueError(f"{name}={value!r} must be an int or {rank} ints")


def _refuse_positional(layer: Any, extra: Tuple[Any, ...], usage: str) -> None:
    """A TypeError for positional arguments past those a layer documents: torch's
    constructors take the input size first (``Linear(784, 10)``), cnnfast.nn infers it,
    so an extra positional value would silently land in another parameter."""
    if extra:
        raise TypeError(f"{type(layer).__name__}() got {len(extra)} positional argument(s) "
                        f"too many {extra!r}: {usage}")


def _jsonable(value: Any) -> Any:
    """Tuples -> lists recursively (a config must survive a JSON round trip)."""
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value


# The layers' 'same' is TensorFlow's (any stride), not the kernel API's (stride 1);
# both rules live in cnnfast.params. tf_same_pads is its public name in cnnfast.nn.
tf_same_pads = P.same_pads_tensorflow


def _resolve_padding(padding: Any, spatial_shape: Sequence[int], k: Tuple[int, ...],
                     s: Tuple[int, ...], d: Tuple[int, ...]) -> Any:
    """A layer's ``padding`` (``'same'``, ``'valid'``, ints or pairs) as
    ``(before, after)`` pairs for this input."""
    rank = len(k)
    if isinstance(padding, str):
        if padding == "same":
            return tf_same_pads(spatial_shape, k, s, d)
        if padding == "valid":
            return ((0, 0),) * rank
        raise ValueError(f"padding={padding!r}: expected 'same', 'valid', "
                         f"an int or per-dim ints/(before, after) pairs")
    return P.padding_pairs(padding, rank)


def _check_input(layer: Any, input_shape: Sequence[int], rank: Optional[int]) -> None:
    if rank is not None and len(input_shape) != rank + 1:
        raise ValueError(f"{layer.name or type(layer).__name__} expects per-sample input "
                         f"(C, *spatial) with {rank} spatial dims, got {tuple(input_shape)}")
    if len(input_shape) < 2 or len(input_shape) > 4:
        raise ValueError(f"{layer.name or type(layer).__name__} expects per-sample input "
                         f"(C, *spatial) with 1 to 3 spatial dims, got {tuple(input_shape)}")
