"""How ``Sequential`` runs adjacent layers as one step (``Sequential(fuse=True)``, the
default): an execution plan over the user's own layer objects, which keep their
parameters, names and configs (summaries, state dicts and checkpoints do not change).

Two fusions, found left to right:

* convolution -> activation (``ReLU``, ``LeakyReLU`` with a slope >= 0, ``Sigmoid``,
  ``Tanh``): the convolution kernel applies the activation itself (``activation=`` of
  ``cnnfast.conv`` / ``conv_transpose``) and its backward applies the derivative
  (``y=``); the activation layer does not run.
* convolution -> ``ReLU`` -> max pooling: run as convolution -> max pooling -> ReLU,
  the ReLU on the pooled output (a quarter of the elements for 2x2 windows), and
  backward likewise in reverse. Exact; see ``_ConvReluMaxPool``.

Only the exact built-in classes fuse (a subclass may change what a layer computes), and
only adjacent layers: anything between them (dropout, normalisation, ...) keeps them
apart.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union, cast

from .base import Array, Layer
from .layers.activation import LeakyReLU, ReLU, Sigmoid, Tanh
from .layers.conv import (
    _Conv, Conv, Conv1d, Conv2d, Conv3d, ConvTranspose, ConvTranspose1d, ConvTranspose2d,
    ConvTranspose3d,
)
from .layers.pool import MaxPool, MaxPool1d, MaxPool2d, MaxPool3d

_CONVS = (Conv, Conv1d, Conv2d, Conv3d,
          ConvTranspose, ConvTranspose1d, ConvTranspose2d, ConvTranspose3d)
_ACTIVATIONS = (ReLU, LeakyReLU, Sigmoid, Tanh)
_MAX_POOLS = (MaxPool, MaxPool1d, MaxPool2d, MaxPool3d)
_Activation = Union[ReLU, LeakyReLU, Sigmoid, Tanh]


class Step:
    """One step of the plan: one layer, run as it is."""

    def __init__(self, *layers: Layer) -> None:
        self.layers: Tuple[Layer, ...] = layers

    @property
    def needs_param_grads(self) -> bool:
        """Whether any of the step's layers needs its parameters' gradients."""
        return any(layer.needs_param_grads for layer in self.layers)

    def clear(self) -> None:
        """Drop what the layers kept for backward (a step that is not back-propagated)."""
        for layer in self.layers:
            layer._cache = None

    def forward(self, x: Array, training: bool) -> Array:
        """The step's output for input ``x``."""
        return self.layers[0].forward(x, training)

    def backward(self, grad: Array, need_input_grad: bool) -> Optional[Array]:
        """The gradient of the step's input (None unless ``need_input_grad``)."""
        return self.layers[0].backward(grad, need_input_grad=need_input_grad)


class _ConvActivation(Step):
    """Convolution and the activation after it, both in the convolution's kernels."""

    def forward(self, x: Array, training: bool) -> Array:
        conv, act = cast(Tuple[_Conv, _Activation], self.layers)
        fused = act.fused_activation()
        assert fused is not None  # plan() fuses only activations that have a kernel form
        activation, slope = fused
        return conv.forward_activated(x, training, activation, slope)

    def backward(self, grad: Array, need_input_grad: bool) -> Optional[Array]:
        # the convolution kept the activation and its output with its input
        return self.layers[0].backward(grad, need_input_grad=need_input_grad)


class _ConvReluMaxPool(Step):
    """Convolution -> ReLU -> max pooling run as convolution -> max pooling -> ReLU.

    Exact, forward and backward, under the max pooling contract (docs/API.md):
    * values: relu is non-decreasing, so max(relu(z)) = relu(max(z)); a NaN in a
      window wins the max either way and relu(NaN) = NaN.
    * indices where the pooled value is > 0: the cells holding that maximum are the
      same in z and relu(z) (relu changes no positive value), so the first one in scan
      order is the same cell; where it is NaN, the first NaN is the same cell.
    * elsewhere (pooled value <= 0 or NaN) the two orders may choose different cells,
      but the gradient sent there is 0 either way: unfused, relu's mask (z > 0) zeroes
      the chosen cell (z <= 0 or NaN); here, relu's mask on the pooled value zeroes the
      gradient before it is routed. So every input cell receives the same sum of the
      same nonzero terms, in the same order.
    Not done for LeakyReLU, Sigmoid or Tanh: rounding can make distinct inputs equal
    after the activation, and the first maximum (which receives a nonzero gradient)
    would then move.
    """

    def forward(self, x: Array, training: bool) -> Array:
        conv, relu, pool = self.layers
        return relu.forward(pool.forward(conv.forward(x, training), training), training)

    def backward(self, grad: Array, need_input_grad: bool) -> Optional[Array]:
        conv, relu, pool = self.layers
        grad = pool.backward(relu.backward(grad))
        return conv.backward(grad, need_input_grad=need_input_grad)


def plan(layers: Sequence[Layer], fuse: bool = True) -> List[Step]:
    """The steps that run ``layers`` in order: fused groups where ``fuse`` allows
    (see the module docstring), single layers elsewhere."""
    steps: List[Step] = []
    i, n = 0, len(layers)
    while i < n:
        here = layers[i:i + 3]
        kinds = [type(layer) for layer in here]
        if fuse and len(here) >= 2 and kinds[0] in _CONVS and kinds[1] in _ACTIVATIONS \
                and cast(_Activation, here[1]).fused_activation() is not None:
            if len(here) == 3 and kinds[1] is ReLU and kinds[2] in _MAX_POOLS:
                steps.append(_ConvReluMaxPool(*here))
                i += 3
            else:
                steps.append(_ConvActivation(*here[:2]))
                i += 2
        else:
            steps.append(Step(layers[i]))
            i += 1
    return steps
