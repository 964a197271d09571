"""Losses: each returns ``(loss, grad)``, the mean loss over the batch (a Python
float) and its gradient with respect to the model output (same array module and
dtype as the output)."""

from __future__ import annotations

from typing import Any, Tuple

from .base import array_module


def log_softmax(logits: Any) -> Any:
    """Numerically stable log-softmax over axis 1 (log-sum-exp with the max
    subtracted: logits of 1e4 do not overflow).

    Parameters
    ----------
    logits : array
        (N, classes), numpy or cupy.

    Returns
    -------
    array
        ``log(softmax(logits))``, the shape, dtype and array module of ``logits``.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnfast.nn.losses import log_softmax
    >>> log_softmax(np.array([[0.0, 0.0]]))
    array([[-0.69314718, -0.69314718]])
    """
    xp = array_module(logits)
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))


def _check_labels(logits: Any, labels: Any) -> bool:
    if logits.ndim != 2:
        raise ValueError(f"logits must be (N, classes), got shape {tuple(logits.shape)}")
    if labels.ndim == 1:
        if labels.shape[0] != logits.shape[0]:
            raise ValueError(f"labels has {labels.shape[0]} entries for a batch of "
                             f"{logits.shape[0]}")
        if labels.dtype.kind not in "iu":
            raise TypeError(f"class labels must be integers, got dtype {labels.dtype}")
        return False
    if tuple(labels.shape) != tuple(logits.shape):
        raise ValueError(f"one-hot/probability labels of shape {tuple(labels.shape)} "
                         f"do not match logits {tuple(logits.shape)}")
    return True


def softmax_cross_entropy(logits: Any, labels: Any) -> Tuple[float, Any]:
    """Softmax followed by cross-entropy, fused: ``grad = (softmax - target) / N``.
    ``labels``: class indices (N,) or target probabilities (N, classes).

    Parameters
    ----------
    logits : array
        (N, classes), the model's output, numpy or cupy.
    labels : array
        Integer class indices (N,), or target probabilities (N, classes).

    Returns
    -------
    tuple
        ``(loss, grad)``: the mean loss over the batch (a Python float) and its
        gradient with respect to ``logits`` (the dtype and array module of
        ``logits``).

    Raises
    ------
    ValueError
        ``logits`` not 2-d; labels of another length or shape; a class index outside
        ``[0, classes)``.
    TypeError
        Class indices that are not integers.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnfast.nn.losses import softmax_cross_entropy
    >>> loss, grad = softmax_cross_entropy(np.zeros((1, 2)), np.array([1]))
    >>> round(loss, 6), grad
    (0.693147, array([[ 0.5, -0.5]]))
    """
    xp = array_module(logits)
    dense = _check_labels(logits, labels)
    logp = log_softmax(logits)
    n = logits.shape[0]
    if dense:
        target = labels.astype(logits.dtype, copy=False)
        loss = -(target * logp).sum() / n
    else:
        labels = xp.asarray(labels)
        if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= logits.shape[1]):
            raise ValueError(f"labels must lie in [0, {logits.shape[1]})")
        rows = xp.arange(n)
        loss = -logp[rows, labels].sum() / n
        target = None
    grad = xp.exp(logp)
    if dense:
        grad -= target
    else:
        grad[rows, labels] -= 1
    grad /= logits.dtype.type(n)
    return float(loss), grad


def mse(outputs: Any, targets: Any) -> Tuple[float, Any]:
    """Mean squared error over every element: ``mean((y - t)^2)``.

    Parameters
    ----------
    outputs : array
        The model's output, numpy or cupy.
    targets : array
        The shape of ``outputs`` (cast to its dtype).

    Returns
    -------
    tuple
        ``(loss, grad)``: the mean loss (a Python float) and its gradient with
        respect to ``outputs``, ``2 * (outputs - targets) / outputs.size``.

    Raises
    ------
    ValueError
        ``targets`` of another shape.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnfast.nn.losses import mse
    >>> mse(np.array([[1.0, 3.0]]), np.array([[1.0, 1.0]]))
    (2.0, array([[0., 2.]]))
    """
    if tuple(outputs.shape) != tuple(targets.shape):
        raise ValueError(f"targets of shape {tuple(targets.shape)} do not match outputs "
                         f"{tuple(outputs.shape)}")
    diff = outputs - targets.astype(outputs.dtype, copy=False)
    loss = float((diff * diff).mean())
    return loss, diff * outputs.dtype.type(2.0 / diff.size)


def binary_cross_entropy_with_logits(logits: Any, targets: Any) -> Tuple[float, Any]:
    """Sigmoid followed by binary cross-entropy, fused and numerically stable:
    per element ``softplus(l) - t * l`` with ``softplus(l) = max(l, 0) +
    log1p(exp(-|l|))`` (logits of +-1e4 neither overflow nor lose the loss), averaged
    over every element; ``grad = (sigmoid(l) - t) / size``.

    Parameters
    ----------
    logits : array
        Any shape, numpy or cupy.
    targets : array
        The shape of ``logits``: probabilities in [0, 1] (cast to its dtype).

    Returns
    -------
    tuple
        ``(loss, grad)``: the mean loss (a Python float) and its gradient with respect
        to ``logits``.

    Raises
    ------
    ValueError
        ``targets`` of another shape.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnfast.nn.losses import binary_cross_entropy_with_logits
    >>> loss, grad = binary_cross_entropy_with_logits(np.zeros(2), np.array([1.0, 0.0]))
    >>> round(loss, 6), grad
    (0.693147, array([-0.25,  0.25]))
    """
    if tuple(logits.shape) != tuple(targets.shape):
        raise ValueError(f"targets of shape {tuple(targets.shape)} do not match logits "
                         f"{tuple(logits.shape)}")
    xp = array_module(logits)
    t = targets.astype(logits.dtype, copy=False)
    e = xp.exp(-xp.abs(logits))  # in (0, 1]: never overflows
    loss = float((xp.maximum(logits, 0) + xp.log1p(e) - t * logits).mean())
    # sigmoid(l) from the same e: 1 / (1 + e) for l >= 0, e / (1 + e) below
    sig = xp.where(logits >= 0, 1, e) / (1 + e)
    return loss, ((sig - t) / logits.dtype.type(max(logits.size, 1))).astype(
        logits.dtype, copy=False)


LOSSES = {"softmax_cross_entropy": softmax_cross_entropy, "cross_entropy": softmax_cross_entropy,
          "mse": mse,
          "binary_cross_entropy_with_logits": binary_cross_entropy_with_logits}
