"""The implementations a benchmark compares: cnnfast backends and the torch reference.

Each implementation turns a (case, op, inputs) triple into a zero-argument callable
that runs the op once, through the implementation's public API (for cnnfast: the
dispatcher, with its validation, as a user calls it). A case the implementation
lacks raises ``NotImplementedError`` with the reason; a missing implementation is
reported by ``Impl.unavailable()`` and never raises at import time.

Op names: ``forward``; ``backward_input`` and ``backward_weight`` (convolutions,
each gradient alone); ``backward`` (poolings: the input gradient).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np

from .suite import CONV_KINDS, Case

REFERENCES = ("torch", "torch-cuda")
EXCLUDED_BY_DEFAULT = {"cuda-emu": "a slow debugging backend; name it with --backend "
                                   "to include it"}


class Inputs:
    """The numpy inputs of one case, made once from a seeded generator and shared by
    every implementation (each converts them to its own array type once)."""

    def __init__(self, case: Case, seed: int = 0):
        rng = np.random.default_rng(seed)
        dt = np.dtype(case.dtype)
        self.case = case
        self.x = rng.standard_normal(case.x_shape, dtype=np.float32).astype(dt, copy=False)
        self.w = self.b = None
        if case.w_shape is not None:
            # He-like scale keeps values O(1) through the reduction.
            fan_in = int(np.prod(case.w_shape[1:])) if case.kind == "conv" else int(
                case.w_shape[0] * np.prod(case.w_shape[2:]))
            self.w = (rng.standard_normal(case.w_shape, dtype=np.float32)
                      / np.sqrt(fan_in)).astype(dt, copy=False)
            if case.bias:
                self.b = rng.standard_normal(case.out_channels, dtype=np.float32).astype(dt)
        self.gy = rng.standard_normal(case.y_shape, dtype=np.float32).astype(dt, copy=False)
        self._indices = None

    @property
    def indices(self):
        """Max-pool winner indices (int64 flat offsets per plane, the API convention
        shared with torch), from the numpy reference."""
        if self._indices is None:
            import cnnfast

            o = self.case.options
            _, self._indices = cnnfast.max_pool(
                self.x, o["kernel"], o.get("stride"), o.get("padding", 0),
                o.get("dilation", 1), o.get("ceil_mode", False), return_indices=True,
                backend="numpy")
        return self._indices


def pick_output(case: Case, op: str, result):
    """The array an op's result is checked by: the gradient it computes, or y."""
    if op == "backward_input":
        return result[0]
    if op == "backward_weight":
        return result[1]
    if case.kind == "max_pool" and op == "forward" and isinstance(result, tuple):
        return result[0]
    return result


class Impl:
    """Base class: ``name``, ``device`` ("cpu" or "gpu"), ``is_reference``."""

    name = "?"
    device = "cpu"
    is_reference = False

    def unavailable(self) -> Optional[str]:
        return None

    def prepare(self, case: Case, op: str, inputs: Inputs) -> Callable:
        raise NotImplementedError

    def to_numpy(self, a):
        return np.asarray(a)

    def synchronize(self):
        pass

    def last_paths(self, case: Case) -> Optional[dict]:
        """The algorithm paths of the last call (``{result: path}``), read right after
        it; None when the implementation records none (torch, poolings)."""
        return None

    def timer(self):
        """A function ``time(fn, number) -> seconds for number calls``."""
        import time

        def run(fn, number):
            t0 = time.perf_counter()
            for _ in range(number):
                fn()
            return time.perf_counter() - t0
        return run


# ----------------------------------------------------------------------------- cnnfast


class CnnfastImpl(Impl):
    def __init__(self, backend: str):
        self.name = backend
        self._reason = None
        self._backend: Any = None  # a registry.Backend; None for an unknown name
        from ..registry import get_backend

        try:
            self._backend = get_backend(backend)
        except ValueError as exc:
            self._backend = None
            self._reason = str(exc)
        else:
            self._reason = self._backend.reason
            self.device = "gpu" if self._backend.array == "cupy" else "cpu"

    def unavailable(self):
        return self._reason

    def last_paths(self, case):
        """The backend module's ``last_paths()`` (this thread's last convolution call),
        for convolutions only: poolings record nothing and would show the paths of an
        earlier convolution."""
        if case.kind not in CONV_KINDS or self._backend is None:
            return None
        read = getattr(self._backend.module, "last_paths", None)
        if read is None:
            return None
        paths = read()
        return {str(k): str(v) for k, v in paths.items()} if paths else None

    def _array(self, a):
        if a is None or self.device == "cpu":
            return a
        import cupy

        return cupy.asarray(a)

    def to_numpy(self, a):
        if self.device == "gpu":
            import cupy

            return cupy.asnumpy(a)
        return np.asarray(a)

    def synchronize(self):
        if self.device == "gpu":
            import cupy

            cupy.cuda.get_current_stream().synchronize()

    def timer(self):
        if self.device != "gpu":
            return super().timer()
        import cupy

        def run(fn, number):
            start, end = cupy.cuda.Event(), cupy.cuda.Event()
            start.record()
            for _ in range(number):
                fn()
            end.record()
            end.synchronize()
            return cupy.cuda.get_elapsed_time(start, end) / 1e3
        return run

    def prepare(self, case, op, inputs):
        import cnnfast

        op_name = _cnnfast_op(case, op)
        reason = self._backend.unsupported(op_name, case.params(), case.dtype)
        if reason is not None:
            raise NotImplementedError(reason)
        x, w, b, gy = (self._array(a) for a in (inputs.x, inputs.w, inputs.b, inputs.gy))
        o, name = case.options, self.name
        if case.kind == "conv":
            conv = dict(stride=o.get("stride", 1), padding=o.get("padding", 0),
                        dilation=o.get("dilation", 1), groups=o.get("groups", 1))
            if op == "forward":
                return lambda: cnnfast.conv(x, w, b, **conv, backend=name)
            needs = ("x",) if op == "backward_input" else ("weight",)
            return lambda: cnnfast.conv_backward(gy, x, w, **conv, needs=needs, backend=name)
        if case.kind == "conv_transpose":
            conv = dict(stride=o.get("stride", 1), padding=o.get("padding", 0),
                        output_padding=o.get("output_padding", 0),
                        groups=o.get("groups", 1), dilation=o.get("dilation", 1))
            if op == "forward":
                return lambda: cnnfast.conv_transpose(x, w, b, **conv, backend=name)
            needs = ("x",) if op == "backward_input" else ("weight",)
            return lambda: cnnfast.conv_transpose_backward(gy, x, w, **conv, needs=needs,
                                                           backend=name)
        pool = dict(kernel_size=o["kernel"], stride=o.get("stride"),
                    padding=o.get("padding", 0), ceil_mode=o.get("ceil_mode", False))
        if case.kind == "max_pool":
            pool["dilation"] = o.get("dilation", 1)
            if op == "forward":
                ri = o.get("return_indices", True)
                return lambda: cnnfast.max_pool(x, **pool, return_indices=ri, backend=name)
            idx = self._array(inputs.indices)
            shape = case.x_shape
            return lambda: cnnfast.max_pool_backward(gy, idx, shape, backend=name)
        pool.update(count_include_pad=o.get("count_include_pad", True),
                    divisor_override=o.get("divisor_override"))
        if op == "forward":
            return lambda: cnnfast.avg_pool(x, **pool, backend=name)
        shape = case.x_shape
        return lambda: cnnfast.avg_pool_backward(gy, shape, **pool, backend=name)


def algorithm_name(paths: Optional[dict]) -> Optional[str]:
    """``{"y": "gemm-s1"}`` -> ``"gemm-s1"``; several results -> ``"grad_x=gemm,
    grad_weight=direct"``; None or empty -> None."""
    if not paths:
        return None
    if len(paths) == 1:
        return str(next(iter(paths.values())))
    return ", ".join(f"{name}={path}" for name, path in paths.items())


def _cnnfast_op(case, op):
    base = case.kind
    return base if op == "forward" else base + "_backward"


# ----------------------------------------------------------------------------- torch


class TorchImpl(Impl):
    """``torch.nn.functional`` for forwards; the aten backward kernels for the
    gradients (timing the backward alone, with no autograd graph to build)."""

    is_reference = True

    def __init__(self, cuda: bool = False):
        self.cuda = cuda
        self.name = "torch-cuda" if cuda else "torch"
        self.device = "gpu" if cuda else "cpu"

    def unavailable(self):
        try:
            import torch
        except ImportError as exc:
            return f"torch is not installed ({exc})"
        if self.cuda and not torch.cuda.is_available():
            return "torch has no usable CUDA device here"
        if self.cuda:
            # cuDNN and cuBLAS default to TF32 tensor cores for float32 (10-bit
            # mantissa): a different, less accurate computation. The comparison is
            # float32 against float32, so TF32 is off (cnnfast never uses it).
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        return None

    def _t(self, a):
        import torch

        if a is None:
            return None
        t = torch.from_numpy(np.ascontiguousarray(a))
        return t.cuda() if self.cuda else t

    def to_numpy(self, a):
        return a.detach().cpu().numpy()

    def synchronize(self):
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def timer(self):
        if not self.cuda:
            return super().timer()
        import torch

        def run(fn, number):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(number):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        return run

    def prepare(self, case, op, inputs):
        import torch
        import torch.nn.functional as F

        if case.dtype == "float16" and not self.cuda:
            raise NotImplementedError("torch CPU float16 convolution is not a fair reference")
        p = case.params()
        pads = []
        for lo, hi in p.padding:
            if lo != hi:
                raise NotImplementedError("torch has no asymmetric padding")
            pads.append(lo)
        x, w, b, gy = (self._t(a) for a in (inputs.x, inputs.w, inputs.b, inputs.gy))
        rank = case.rank
        o = case.options
        aten = torch.ops.aten
        if case.kind in CONV_KINDS:
            transposed = case.kind == "conv_transpose"
            stride, dil = list(p.stride), list(p.dilation)
            opad = list(p.output_padding)
            if op == "forward":
                if transposed:
                    f = getattr(F, f"conv_transpose{rank}d")
                    return lambda: f(x, w, b, stride, pads, opad, p.groups, dil)
                f = getattr(F, f"conv{rank}d")
                return lambda: f(x, w, b, stride, pads, dil, p.groups)
            mask = [op == "backward_input", op == "backward_weight", False]
            bias_sizes = [case.out_channels] if case.bias else None
            return lambda: aten.convolution_backward(gy, x, w, bias_sizes, stride, pads,
                                                     dil, transposed, opad, p.groups, mask)
        # Poolings: torch has no 1-d backward ops; a 1-d pool is a 2-d pool of height 1.
        lift = rank == 1
        k, s, d = list(p.kernel), list(p.stride), list(p.dilation)
        if lift:
            x, gy = x.unsqueeze(2), gy.unsqueeze(2)
            k, s, d, pads = [1] + k, [1] + s, [1] + d, [0] + pads
        r = len(k)
        if any(2 * pd > kk for pd, kk in zip(pads, k)):
            raise NotImplementedError("torch needs padding <= kernel_size // 2")
        fr = f"{r}d"
        fn = self._pool_call(case, op, inputs, x, gy, k, s, pads, d, p, fr, lift)
        if not lift:
            return fn
        # Back to the 1-d shape (the view costs nanoseconds next to the kernel).
        if case.kind == "max_pool" and op == "forward" and o.get("return_indices", True):
            return lambda: tuple(t.squeeze(2) for t in fn())
        return lambda: fn().squeeze(2)

    def _pool_call(self, case, op, inputs, x, gy, k, s, pads, d, p, fr, lift):
        import torch
        import torch.nn.functional as F

        aten = torch.ops.aten
        if case.kind == "max_pool":
            if op == "forward":
                f = getattr(F, f"max_pool{fr}")
                ri = case.options.get("return_indices", True)
                return lambda: f(x, k, s, pads, d, p.ceil_mode, ri)
            idx = self._t(inputs.indices)
            if lift:
                idx = idx.unsqueeze(2)
            bw = getattr(aten, f"max_pool{fr}_with_indices_backward")
            return lambda: bw(gy, x, k, s, pads, d, p.ceil_mode, idx)
        if any(v != 1 for v in d):
            raise NotImplementedError("torch avg_pool has no dilation")
        div = p.divisor_override
        if op == "forward":
            f = getattr(F, f"avg_pool{fr}")
            return lambda: f(x, k, s, pads, p.ceil_mode, p.count_include_pad, div)
        bw = getattr(aten, f"avg_pool{fr}_backward")
        return lambda: bw(gy, x, k, s, pads, p.ceil_mode, p.count_include_pad, div)


def make_impls(requested: Optional[Iterable[str]] = None, *, reference: bool = True
               ) -> Tuple[List[Impl], Dict[str, str]]:
    """The implementations to compare, and {name: reason} for those skipped.

    ``requested``: names (cnnfast backends, ``torch``, ``torch-cuda``); ``None``
    means every registered backend except the opt-in ones (``cuda-emu``). The torch
    reference of each device is added when ``reference`` is true (and reported as
    skipped, with the reason, when it cannot run)."""
    from ..registry import backend_names

    skipped: Dict[str, str] = {}
    if requested is None:
        names: List[str] = []
        for name in backend_names():
            if name in EXCLUDED_BY_DEFAULT:
                skipped[name] = "not run by default: " + EXCLUDED_BY_DEFAULT[name]
            else:
                names.append(name)
        if reference:
            names += list(REFERENCES)
    else:
        names = list(dict.fromkeys(requested))
    impls: List[Impl] = [TorchImpl(cuda=n == "torch-cuda") if n in REFERENCES
                         else CnnfastImpl(n) for n in names]
    if requested is not None and reference:
        # The reference of each device a requested backend runs on.
        devices = {i.device for i in impls if not i.is_reference and i.unavailable() is None}
        for ref, device in (("torch", "cpu"), ("torch-cuda", "gpu")):
            if ref not in names and device in devices:
                impls.append(TorchImpl(cuda=device == "gpu"))
    usable = []
    for impl in impls:
        reason = impl.unavailable()
        if reason is not None:
            skipped[impl.name] = reason
        else:
            usable.append(impl)
    return usable, skipped
