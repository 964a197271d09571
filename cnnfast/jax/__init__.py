"""cnnfast's kernels as JAX functions (needs jax: ``pip install 'cnnfast[jax]'``).

``conv``/``conv1d``..``conv3d``, ``conv_transpose``(``1d``..``3d``), ``max_pool``
(``1d``..``3d``) and ``avg_pool`` (``1d``..``3d``) take JAX arrays and the parameters of
cnnfast's own functions (``cnnfast.api``), and return JAX arrays. They are usable under
``jax.jit``, ``jax.grad``/``jax.vjp`` and ``jax.vmap``:

* the forward runs cnnfast's CPU kernels on numpy arrays through ``jax.pure_callback``;
  the result's shape and dtype come from ``cnnfast.params``'s output-shape rules, at
  trace time (so a bad parameter raises there, with cnnfast's message);
* each function is a ``jax.custom_vjp``: the residuals are the inputs (and, for
  ``max_pool``, the winners' indices from a forward callback that returns them), and
  the backward runs ``cnnfast.conv_backward``/``conv_transpose_backward``/
  ``max_pool_backward``/``avg_pool_backward`` in another ``pure_callback``;
* the non-array parameters (``stride``, ``padding`` including ``"same"``/``"valid"``,
  ``dilation``, ``groups``, ``kernel_size``, ``backend``, ...) are static Python values:
  each distinct combination builds (once, cached) its own ``custom_vjp`` function;
* ``vmap``: the callbacks use ``vmap_method="expand_dims"`` and take the extra leading
  (vmapped) dims themselves: they fold them into the batch dim N where the operation
  allows it (pooling and its gradients, and a convolution whose weight and bias are
  not vmapped: one kernel call for the whole vmapped batch), and otherwise loop over
  them inside one callback.

Limits: float32 and float64 (float64 needs ``jax_enable_x64``); the kernels are
cnnfast's CPU ones (on a GPU JAX backend the data goes through host memory); only
first derivatives (the backward callbacks have no derivative of their own:
``grad(grad(f))`` raises). See docs/interop.md, section "cnnfast.jax".
"""

try:
    import jax as _jax  # noqa: F401  (absolute: JAX, not this package)
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("cnnfast.jax needs JAX: pip install 'cnnfast[jax]'") from exc

from .ops import (
    avg_pool, avg_pool1d, avg_pool2d, avg_pool3d,
    conv, conv1d, conv2d, conv3d,
    conv_transpose, conv_transpose1d, conv_transpose2d, conv_transpose3d,
    max_pool, max_pool1d, max_pool2d, max_pool3d,
)

__all__ = [
    "conv", "conv1d", "conv2d", "conv3d",
    "conv_transpose", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
    "max_pool", "max_pool1d", "max_pool2d", "max_pool3d",
    "avg_pool", "avg_pool1d", "avg_pool2d", "avg_pool3d",
]
