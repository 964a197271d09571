"""Losses: each returns ``(loss, grad)``, the mean loss over the batch (a Python
float) and its gradient with respect to the model output (same array module and
dtype as the output)."""

from __future__ import annotations

from .base import array_module


def log_softmax(logits):
    """Numerically stable log-softmax over axis 1 (log-sum-exp with the max
    subtracted: logits of 1e4 do not overflow)."""
    xp = array_module(logits)
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))


def _check_labels(logits, labels):
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


def softmax_cross_entropy(logits, labels):
    """Softmax followed by cross-entropy, fused: ``grad = (softmax - target) / N``.
    ``labels``: class indices (N,) or target probabilities (N, classes)."""
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


def mse(outputs, targets):
    """Mean squared error over every element: ``mean((y - t)^2)``."""
    if tuple(outputs.shape) != tuple(targets.shape):
        raise ValueError(f"targets of shape {tuple(targets.shape)} do not match outputs "
                         f"{tuple(outputs.shape)}")
    diff = outputs - targets.astype(outputs.dtype, copy=False)
    loss = float((diff * diff).mean())
    return loss, diff * outputs.dtype.type(2.0 / diff.size)


LOSSES = {"softmax_cross_entropy": softmax_cross_entropy, "cross_entropy": softmax_cross_entropy,
          "mse": mse}
