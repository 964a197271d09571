"""Optimizers (SGD with momentum/Nesterov/weight decay, Adam, AdamW) and learning-rate
schedules. The update rules are torch's (``torch.optim``), so a step matches
PyTorch given the same gradients.

An optimizer updates, in place, every parameter ``model.trainable_params()``
yields, from the layer's ``grads``. Its state (moment buffers, step count) is keyed
by ``"<layer>.<param>"`` and round-trips through ``state_dict``/``load_state_dict``
(numpy arrays) for checkpoints.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np

from .base import array_module, to_device, to_numpy


class Optimizer:
    """The base of the optimizers: ``step(model)`` updates every trainable parameter
    from its layer's ``grads``; ``state_dict`` / ``load_state_dict`` round-trip the
    state (step count, moment buffers). ``ValueError`` for ``lr`` <= 0 or a negative
    ``weight_decay``."""

    slots: tuple = ()

    def __init__(self, lr: float, weight_decay: float = 0.0):
        if not lr > 0:
            raise ValueError(f"lr={lr!r} must be positive")
        if weight_decay < 0:
            raise ValueError(f"weight_decay={weight_decay!r} must be >= 0")
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.t = 0  # steps taken
        self.state: dict[str, dict[str, Any]] = {slot: {} for slot in self.slots}

    def step(self, model: Any) -> None:
        """One update of every parameter ``model.trainable_params()`` yields, from its
        layer's ``grads`` (then cleared). ``RuntimeError`` when a gradient is missing
        (``model.backward`` not called)."""
        self.t += 1
        for key, layer, pname in model.trainable_params():
            grad = layer.grads.get(pname)
            if grad is None:
                raise RuntimeError(f"no gradient for {key}: call model.backward first")
            self._update(key, layer.params[pname], grad)
        for layer in model.layers:
            layer.grads = {}

    def _slot(self, slot: str, key: str, like: Any) -> Any:
        buf = self.state[slot].get(key)
        if buf is None:
            buf = self.state[slot][key] = array_module(like).zeros_like(like)
        return buf

    def _update(self, key: str, p: Any, g: Any) -> None:
        raise NotImplementedError

    def config(self) -> dict:
        """``{"name": ..., **arguments}``, as ``make_optimizer`` takes it."""
        return {"name": type(self).__name__.lower(), "lr": self.lr,
                "weight_decay": self.weight_decay}

    def state_dict(self) -> dict:
        """The step count ``"t"`` and every moment buffer (``"<slot>/<key>"``) as
        numpy arrays."""
        out: dict[str, Any] = {"t": self.t}
        for slot, d in self.state.items():
            for key, v in d.items():
                out[f"{slot}/{key}"] = to_numpy(v)
        return out

    def load_state_dict(self, state: dict, xp: Any = np) -> None:
        """Restore ``state_dict()``'s state, the buffers moved to the array module
        ``xp`` (numpy or cupy). ``ValueError`` for a slot this optimizer lacks."""
        self.t = int(state.get("t", 0))
        self.state = {slot: {} for slot in self.slots}
        for name, v in state.items():
            if name == "t":
                continue
            slot, key = name.split("/", 1)
            if slot not in self.state:
                raise ValueError(f"optimizer state {name!r} does not belong to "
                                 f"{type(self).__name__} (slots: {self.slots})")
            self.state[slot][key] = to_device(np.array(v), xp)


class SGD(Optimizer):
    """torch.optim.SGD (dampening 0): ``g += wd * p``; ``buf = momentum * buf + g``;
    ``g = g + momentum * buf`` (Nesterov) or ``buf``; ``p -= lr * g``.

    ``ValueError`` for a momentum outside [0, 1), or ``nesterov`` without momentum.

    Examples
    --------
    >>> import numpy as np
    >>> from cnnfast import nn
    >>> m = nn.Sequential([nn.Dense(1, use_bias=False)], input_shape=(1,), seed=0)
    >>> m.load_state_dict({"param/dense.weight": np.array([[1.0]])})
    ['param/dense.weight']
    >>> y = m.forward(np.ones((1, 1), np.float32), training=True)
    >>> m.backward(np.ones_like(y))
    >>> nn.SGD(lr=0.5).step(m)
    >>> m.state_dict()["param/dense.weight"]
    array([[0.5]], dtype=float32)
    """

    slots = ("momentum",)

    def __init__(self, lr: float = 0.01, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0):
        super().__init__(lr, weight_decay)
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum={momentum!r} must be in [0, 1)")
        if nesterov and momentum == 0:
            raise ValueError("nesterov=True needs a momentum > 0")
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)

    def _update(self, key: str, p: Any, g: Any) -> None:
        if self.weight_decay:
            g = g + self.weight_decay * p
        if self.momentum:
            first = key not in self.state["momentum"]
            buf = self._slot("momentum", key, p)
            if first:  # torch starts the buffer at the first gradient
                buf[...] = g
            else:
                buf *= self.momentum
                buf += g
            g = g + self.momentum * buf if self.nesterov else buf
        p -= self.lr * g

    def config(self) -> dict:
        return {**super().config(), "momentum": self.momentum, "nesterov": self.nesterov}


class Adam(Optimizer):
    """torch.optim.Adam: L2 weight decay added to the gradient;
    ``p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)``."""

    slots = ("m", "v")
    decoupled = False

    def __init__(self, lr: float = 1e-3, betas: Iterable[float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(lr, weight_decay)
        b1, b2 = betas
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"betas={betas!r} must lie in [0, 1)")
        self.betas = (float(b1), float(b2))
        self.eps = float(eps)

    def _update(self, key: str, p: Any, g: Any) -> None:
        b1, b2 = self.betas
        if self.weight_decay:
            if self.decoupled:
                p *= 1 - self.lr * self.weight_decay
            else:
                g = g + self.weight_decay * p
        m = self._slot("m", key, p)
        v = self._slot("v", key, p)
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * (g * g)
        bc1 = 1 - b1 ** self.t
        bc2 = 1 - b2 ** self.t
        xp = array_module(p)
        denom = xp.sqrt(v)
        denom /= math.sqrt(bc2)
        denom += self.eps
        p -= (self.lr / bc1) * (m / denom)

    def config(self) -> dict:
        return {**super().config(), "betas": list(self.betas), "eps": self.eps}


class AdamW(Adam):
    """torch.optim.AdamW: decoupled weight decay ``p *= 1 - lr * wd`` (default 0.01)."""

    decoupled = True

    def __init__(self, lr: float = 1e-3, betas: Iterable[float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01):
        super().__init__(lr, betas, eps, weight_decay)


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}


def make_optimizer(config: dict) -> Optimizer:
    """An optimizer from ``{"name": ..., **kwargs}`` (as ``Optimizer.config()``).

    ``name``: ``"sgd"``, ``"adam"`` or ``"adamw"`` (``ValueError`` otherwise).

    Examples
    --------
    >>> from cnnfast import nn
    >>> nn.make_optimizer({"name": "sgd", "lr": 0.1, "momentum": 0.9})
    <cnnfast.nn.optim.SGD object at ...>
    """
    cfg = dict(config)
    name = cfg.pop("name", None)
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer {name!r} is unknown; expected one of "
                         f"{', '.join(OPTIMIZERS)}")
    if "betas" in cfg:
        cfg["betas"] = tuple(cfg["betas"])
    return OPTIMIZERS[name](**cfg)


# ----------------------------------------------------------------------------- schedules


class Schedule:
    """Learning rate as a function of training progress in epochs (a float:
    ``epoch + batch / batches_per_epoch``)."""

    def __init__(self, base_lr: float):
        self.base_lr = float(base_lr)

    def __call__(self, progress: float) -> float:
        return self.base_lr

    def config(self) -> dict:
        return {"name": "constant", "base_lr": self.base_lr}


class StepLR(Schedule):
    """``base_lr * gamma ** floor(epoch / step_size)`` (changes at epoch boundaries)."""

    def __init__(self, base_lr: float, step_size: int = 1, gamma: float = 0.1):
        super().__init__(base_lr)
        if step_size < 1:
            raise ValueError(f"step_size={step_size!r} must be >= 1 epoch")
        self.step_size, self.gamma = int(step_size), float(gamma)

    def __call__(self, progress: float) -> float:
        return self.base_lr * self.gamma ** (int(progress) // self.step_size)

    def config(self) -> dict:
        return {"name": "step", "base_lr": self.base_lr, "step_size": self.step_size,
                "gamma": self.gamma}


class CosineLR(Schedule):
    """Cosine annealing from ``base_lr`` to ``min_lr`` over ``epochs``, per step."""

    def __init__(self, base_lr: float, epochs: float, min_lr: float = 0.0):
        super().__init__(base_lr)
        if epochs <= 0:
            raise ValueError(f"epochs={epochs!r} must be positive")
        self.epochs, self.min_lr = float(epochs), float(min_lr)

    def __call__(self, progress: float) -> float:
        frac = min(max(progress / self.epochs, 0.0), 1.0)
        return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * frac))

    def config(self) -> dict:
        return {"name": "cosine", "base_lr": self.base_lr, "epochs": self.epochs,
                "min_lr": self.min_lr}


SCHEDULES = {"constant": Schedule, "step": StepLR, "cosine": CosineLR}


def make_schedule(config: dict) -> Schedule:
    """A schedule from ``{"name": ..., **kwargs}`` (as ``Schedule.config()``):
    ``"constant"`` (the default), ``"step"`` or ``"cosine"`` (``ValueError``
    otherwise).

    Examples
    --------
    >>> from cnnfast import nn
    >>> schedule = nn.make_schedule({"name": "step", "base_lr": 0.1, "step_size": 2})
    >>> schedule(0.5), schedule(2.0)
    (0.1, 0.010000000000000002)
    """
    cfg = dict(config)
    name = cfg.pop("name", "constant")
    if name not in SCHEDULES:
        raise ValueError(f"schedule {name!r} is unknown; expected one of "
                         f"{', '.join(SCHEDULES)}")
    return SCHEDULES[name](**cfg)
