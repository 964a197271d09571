"""``torch.nn`` modules that run on cnnfast's kernels.

Each class subclasses its ``torch.nn`` namesake and overrides ``forward`` only, so the
constructor (parameters, defaults, checks), the parameter names (``weight``,
``bias``), their initialisation, ``state_dict`` keys, ``extra_repr`` and every other
method are torch's own. ``cnnfast.torch.replace`` turns existing torch modules into
these in place (same objects, same parameters).

Every constructor option is supported:

* ``Conv*d(padding_mode="reflect" | "replicate" | "circular")``: the input is padded
  with ``torch.nn.functional.pad`` (as torch itself does), then convolved by cnnfast
  with no padding.
* ``ConvTranspose*d.forward(input, output_size=...)``: torch's rule picks the
  ``output_padding``.
* ``MaxPool*d(return_indices=True)``: cnnfast's indices are torch's (flat offsets in
  each ``(n, c)`` plane), usable by ``torch.nn.MaxUnpool*d``.
* unbatched ``(C, *spatial)`` inputs, as torch.

Inputs cnnfast has no kernels for (dtypes other than float32/float64, float16 on
CUDA too; devices other than CPU and CUDA) run torch's own ``forward`` instead, with a
``CnnfastFallbackWarning`` (once per module class, dtype and device).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Set, Tuple, Type

import torch
import torch.nn.functional as F
from torch import Tensor

from . import ops


class CnnfastFallbackWarning(UserWarning):
    """A cnnfast.torch module ran torch's own forward: cnnfast has no kernel for the
    input's dtype or device."""


_warned: Set[Tuple[str, Any, str]] = set()


def _fallback(module: torch.nn.Module, x: Tensor) -> bool:
    """Whether ``x`` must go to torch's own forward (and warn once about it)."""
    if ops.supports(x):
        return False
    key = (type(module).__name__, x.dtype, x.device.type)
    if key not in _warned:
        _warned.add(key)
        warnings.warn(f"cnnfast.torch.nn.{key[0]}: cnnfast has no kernels for {x.dtype} "
                      f"tensors on {x.device.type}; running torch's own forward",
                      CnnfastFallbackWarning, stacklevel=3)
    return True


if TYPE_CHECKING:  # the mixins below are only ever combined with torch.nn modules
    _Module = torch.nn.Module
else:
    _Module = object


class _Cnnfast(_Module):
    """Shows in ``print(model)`` which modules run on cnnfast."""

    def _get_name(self) -> str:
        return "cnnfast." + type(self).__name__


# ----------------------------------------------------------------------------- conv


class _ConvMixin(_Cnnfast):
    # torch.nn.Conv*d's attributes that the mixin reads (declared for the type checker).
    kernel_size: Any
    stride: Any
    padding: Any
    dilation: Any
    groups: int
    padding_mode: Any
    _reversed_padding_repeated_twice: Any
    weight: Any
    bias: Any

    def _cnnfast_conv(self, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        rank = len(self.kernel_size)
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0
        else:
            padding = self.padding
        return ops._conv(x, weight, bias, self.stride, padding, self.dilation, self.groups,
                         rank)

    def forward(self, input: Tensor) -> Tensor:
        if _fallback(self, input):
            return super().forward(input)
        return self._cnnfast_conv(input, self.weight, self.bias)


class Conv1d(_ConvMixin, torch.nn.Conv1d):
    """``torch.nn.Conv1d`` on cnnfast's kernels."""


class Conv2d(_ConvMixin, torch.nn.Conv2d):
    """``torch.nn.Conv2d`` on cnnfast's kernels."""


class Conv3d(_ConvMixin, torch.nn.Conv3d):
    """``torch.nn.Conv3d`` on cnnfast's kernels."""


class _ConvTransposeMixin(_Cnnfast):
    # torch.nn.ConvTranspose*d's attributes that the mixin reads.
    kernel_size: Any
    stride: Any
    padding: Any
    dilation: Any
    groups: int
    padding_mode: Any
    weight: Any
    bias: Any
    _output_padding: Any

    def forward(self, input: Tensor, output_size: Optional[List[int]] = None) -> Tensor:
        if _fallback(self, input):
            return super().forward(input, output_size)
        rank = len(self.kernel_size)
        if self.padding_mode != "zeros":  # torch's own check and message
            raise ValueError(f"Only `zeros` padding mode is supported for "
                             f"{type(self).__name__}")
        output_padding = self._output_padding(input, output_size, self.stride,
                                              self.padding, self.kernel_size, rank,
                                              self.dilation)
        return ops._conv_transpose(input, self.weight, self.bias, self.stride, self.padding,
                                   output_padding, self.groups, self.dilation, rank)


class ConvTranspose1d(_ConvTransposeMixin, torch.nn.ConvTranspose1d):
    """``torch.nn.ConvTranspose1d`` on cnnfast's kernels."""


class ConvTranspose2d(_ConvTransposeMixin, torch.nn.ConvTranspose2d):
    """``torch.nn.ConvTranspose2d`` on cnnfast's kernels."""


class ConvTranspose3d(_ConvTransposeMixin, torch.nn.ConvTranspose3d):
    """``torch.nn.ConvTranspose3d`` on cnnfast's kernels."""


# ----------------------------------------------------------------------------- pooling


class _MaxPoolMixin(_Cnnfast):
    _rank = 0
    # torch.nn.MaxPool*d's attributes that the mixin reads.
    kernel_size: Any
    stride: Any
    padding: Any
    dilation: Any
    ceil_mode: bool
    return_indices: bool

    def forward(self, input: Tensor) -> Any:
        if _fallback(self, input):
            return super().forward(input)
        return ops._max_pool(input, self.kernel_size, self.stride, self.padding,
                             self.dilation, self.ceil_mode, self.return_indices, self._rank)


class MaxPool1d(_MaxPoolMixin, torch.nn.MaxPool1d):
    """``torch.nn.MaxPool1d`` on cnnfast's kernels."""

    _rank = 1


class MaxPool2d(_MaxPoolMixin, torch.nn.MaxPool2d):
    """``torch.nn.MaxPool2d`` on cnnfast's kernels."""

    _rank = 2


class MaxPool3d(_MaxPoolMixin, torch.nn.MaxPool3d):
    """``torch.nn.MaxPool3d`` on cnnfast's kernels."""

    _rank = 3


class _AvgPoolMixin(_Cnnfast):
    _rank = 0
    # torch.nn.AvgPool*d's attributes that the mixin reads.
    kernel_size: Any
    stride: Any
    padding: Any
    ceil_mode: bool
    count_include_pad: bool

    def forward(self, input: Tensor) -> Tensor:
        if _fallback(self, input):
            return super().forward(input)
        # AvgPool1d has no divisor_override in torch.
        return ops._avg_pool(input, self.kernel_size, self.stride, self.padding,
                             self.ceil_mode, self.count_include_pad,
                             getattr(self, "divisor_override", None), 1, self._rank)


class AvgPool1d(_AvgPoolMixin, torch.nn.AvgPool1d):
    """``torch.nn.AvgPool1d`` on cnnfast's kernels."""

    _rank = 1


class AvgPool2d(_AvgPoolMixin, torch.nn.AvgPool2d):
    """``torch.nn.AvgPool2d`` on cnnfast's kernels."""

    _rank = 2


class AvgPool3d(_AvgPoolMixin, torch.nn.AvgPool3d):
    """``torch.nn.AvgPool3d`` on cnnfast's kernels."""

    _rank = 3


# torch.nn class -> the cnnfast class that replaces it, per op family.
FAMILIES: Dict[str, Dict[Type[torch.nn.Module], Type[torch.nn.Module]]] = {
    "conv": {torch.nn.Conv1d: Conv1d, torch.nn.Conv2d: Conv2d, torch.nn.Conv3d: Conv3d},
    "conv_transpose": {torch.nn.ConvTranspose1d: ConvTranspose1d,
                       torch.nn.ConvTranspose2d: ConvTranspose2d,
                       torch.nn.ConvTranspose3d: ConvTranspose3d},
    "max_pool": {torch.nn.MaxPool1d: MaxPool1d, torch.nn.MaxPool2d: MaxPool2d,
                 torch.nn.MaxPool3d: MaxPool3d},
    "avg_pool": {torch.nn.AvgPool1d: AvgPool1d, torch.nn.AvgPool2d: AvgPool2d,
                 torch.nn.AvgPool3d: AvgPool3d},
}

__all__ = ["Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d",
           "ConvTranspose3d", "MaxPool1d", "MaxPool2d", "MaxPool3d", "AvgPool1d",
           "AvgPool2d", "AvgPool3d", "CnnfastFallbackWarning", "FAMILIES"]
