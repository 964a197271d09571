"""Any DLPack array in, the same kind out (docs/API.md, Extensions; docs/interop.md).

torch CPU tensors go through every op and equal the numpy path; they are read in place
(the kernel sees the tensor's own memory) and the result is a torch tensor over the
memory the backend computed. Non-contiguous and read-only inputs work (copied only
then), inputs are never modified, tensors that require grad are refused. The CUDA path
(cupy.from_dlpack) needs a GPU, torch with CUDA and CuPy: skipped where they are absent.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

import cnnfast
from cnnfast import arrays
from cnnfast.registry import BackendUnavailable, get_backend

torch = pytest.importorskip("torch")

RNG = np.random.default_rng(7)


def _randn(*shape, dtype=np.float64):
    return RNG.standard_normal(shape).astype(dtype)


def _cases():
    """(op name, function, the arrays (name -> numpy array), the other arguments)."""
    cases = []
    for rank in (1, 2, 3):
        sp = (5,) * rank
        x = _randn(2, 4, *sp)
        w = _randn(6, 2, *(3,) * rank)
        b = _randn(6)
        y = cnnfast.conv(x, w, b, padding=1, groups=2, backend="numpy")
        cases.append((f"conv{rank}d", getattr(cnnfast, f"conv{rank}d"),
                      {"x": x, "weight": w, "bias": b}, dict(padding=1, groups=2)))
        cases.append((f"conv_backward-{rank}d", cnnfast.conv_backward,
                      {"grad_y": _randn(*y.shape), "x": x, "weight": w},
                      dict(padding=1, groups=2)))
        wt = _randn(4, 3, *(2,) * rank)
        yt = cnnfast.conv_transpose(x, wt, None, stride=2, backend="numpy")
        cases.append((f"conv_transpose{rank}d", getattr(cnnfast, f"conv_transpose{rank}d"),
                      {"x": x, "weight": wt, "bias": _randn(3)}, dict(stride=2)))
        cases.append((f"conv_transpose_backward-{rank}d", cnnfast.conv_transpose_backward,
                      {"grad_y": _randn(*yt.shape), "x": x, "weight": wt}, dict(stride=2)))
        cases.append((f"max_pool{rank}d", getattr(cnnfast, f"max_pool{rank}d"), {"x": x},
                      dict(kernel_size=2)))
        cases.append((f"max_pool{rank}d-indices", getattr(cnnfast, f"max_pool{rank}d"),
                      {"x": x}, dict(kernel_size=2, return_indices=True)))
        yp, idx = cnnfast.max_pool(x, 2, return_indices=True, backend="numpy")
        cases.append((f"max_pool_backward-{rank}d", cnnfast.max_pool_backward,
                      {"grad_y": _randn(*yp.shape), "indices": idx},
                      dict(x_shape=x.shape)))
        cases.append((f"avg_pool{rank}d", getattr(cnnfast, f"avg_pool{rank}d"), {"x": x},
                      dict(kernel_size=3, padding=1, stride=2)))
        ya = cnnfast.avg_pool(x, 3, 2, 1, backend="numpy")
        cases.append((f"avg_pool_backward-{rank}d", cnnfast.avg_pool_backward,
                      {"grad_y": _randn(*ya.shape)},
                      dict(x_shape=x.shape, kernel_size=3, stride=2, padding=1)))
    return cases


CASES = _cases()
OP_OF = {  # the registry's op name of each public function
    "conv": "conv", "conv_backward": "conv_backward", "conv_transpose": "conv_transpose",
    "conv_transpose_backward": "conv_transpose_backward", "max_pool": "max_pool",
    "max_pool_backward": "max_pool_backward", "avg_pool": "avg_pool",
    "avg_pool_backward": "avg_pool_backward"}


def _op_of(name):
    base = name.split("-")[0]
    return OP_OF.get(base) or OP_OF[base[:-2]]  # conv2d -> conv


def _call(fn, arrays_, kwargs, **extra):
    return fn(*arrays_.values(), **kwargs, **extra)


def _flat(result):
    return result if isinstance(result, tuple) else (result,)


def _as_numpy(r):
    return None if r is None else (r.numpy() if isinstance(r, torch.Tensor) else r)


@pytest.fixture(params=[pytest.param(c, id=c[0]) for c in CASES])
def case(request):
    return request.param


# ----------------------------------------------------------------------------- torch in, torch out


def test_torch_tensors_through_every_op_equal_the_numpy_path(case):
    name, fn, arrs, kwargs = case
    expected = _flat(_call(fn, arrs, kwargs, backend="numpy"))
    tensors = {k: torch.from_numpy(v.copy()) for k, v in arrs.items()}
    got = _flat(_call(fn, tensors, kwargs, backend="numpy"))
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        if e is None:
            assert g is None
            continue
        assert isinstance(g, torch.Tensor)
        assert g.dtype == torch.from_numpy(e).dtype and tuple(g.shape) == e.shape
        np.testing.assert_array_equal(g.numpy(), e)


def test_torch_tensors_on_the_automatic_backend_match_torch():
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    w = torch.randn(5, 3, 3, 3, dtype=torch.float64)
    b = torch.randn(5, dtype=torch.float64)
    y = cnnfast.conv2d(x, w, b, stride=2, padding=1)
    assert isinstance(y, torch.Tensor)
    torch.testing.assert_close(y, torch.nn.functional.conv2d(x, w, b, stride=2, padding=1))
    p = cnnfast.max_pool2d(x, 3, 2)
    torch.testing.assert_close(p, torch.nn.functional.max_pool2d(x, 3, 2))


def test_inputs_are_read_in_place(case, monkeypatch):
    """The kernel sees the tensors' own memory: no copy of a contiguous input."""
    name, fn, arrs, kwargs = case
    tensors = {k: torch.from_numpy(v.copy()) for k, v in arrs.items()}
    op = _op_of(name)
    backend = get_backend("numpy")
    real = backend.ops[op]
    seen = []

    def recording(*args):
        seen.extend(a.__array_interface__["data"][0] for a in args
                    if isinstance(a, np.ndarray))
        return real(*args)

    monkeypatch.setitem(backend.ops, op, recording)
    _call(fn, tensors, kwargs, backend="numpy")
    expected = [t.data_ptr() for t in tensors.values()]
    assert seen and set(seen) == set(expected)


def test_results_are_torch_tensors_over_the_computed_memory(case, monkeypatch):
    """No copy out: each result tensor views the array the backend returned."""
    name, fn, arrs, kwargs = case
    tensors = {k: torch.from_numpy(v) for k, v in arrs.items()}
    op = _op_of(name)
    backend = get_backend("numpy")
    real = backend.ops[op]
    computed = []

    def recording(*args):
        result = real(*args)
        computed.extend(r for r in _flat(result) if r is not None)
        return result

    monkeypatch.setitem(backend.ops, op, recording)
    got = [g for g in _flat(_call(fn, tensors, kwargs, backend="numpy")) if g is not None]
    assert len(got) == len(computed)
    for g, c in zip(got, computed):
        assert isinstance(g, torch.Tensor)
        assert g.data_ptr() == c.__array_interface__["data"][0]
        assert np.shares_memory(g.numpy(), c)


def test_inputs_are_never_modified(case):
    name, fn, arrs, kwargs = case
    tensors = {k: torch.from_numpy(v.copy()) for k, v in arrs.items()}
    before = {k: t.clone() for k, t in tensors.items()}
    _call(fn, tensors, kwargs, backend="numpy")
    _call(fn, tensors, kwargs)  # the automatic backend too
    for k in tensors:
        assert torch.equal(tensors[k], before[k]), k


@pytest.mark.parametrize("case", [pytest.param(c, id=c[0]) for c in CASES
                                  if not c[0].startswith("max_pool_backward")])
def test_non_contiguous_tensors_are_copied_and_computed(case):
    # (max_pool_backward's int64 indices: test_non_contiguous_indices_and_transposed...)
    name, fn, arrs, kwargs = case
    # Every array as a strided view: every other element of a twice-longer last dim.
    views = {}
    for k, v in arrs.items():
        big = torch.zeros(v.shape[:-1] + (2 * v.shape[-1],), dtype=torch.float64)
        big[..., ::2] = torch.from_numpy(v)
        views[k] = big[..., ::2]
        assert not views[k].is_contiguous()
    got = _flat(_call(fn, views, kwargs, backend="numpy"))
    expected = _flat(_call(fn, arrs, kwargs, backend="numpy"))
    for g, e in zip(got, expected):
        if e is not None:
            np.testing.assert_array_equal(g.numpy(), e)


def test_non_contiguous_indices_and_transposed_tensors():
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    xt = x.transpose(2, 3)  # non-contiguous
    y, idx = cnnfast.max_pool2d(xt, 2, return_indices=True, backend="numpy")
    ey, eidx = cnnfast.max_pool2d(np.ascontiguousarray(xt.numpy()), 2, return_indices=True,
                                  backend="numpy")
    np.testing.assert_array_equal(y.numpy(), ey)
    np.testing.assert_array_equal(idx.numpy(), eidx)
    gy = torch.randn(2, 3, 3, 3, dtype=torch.float64).transpose(2, 3)
    it = idx.transpose(2, 3)
    g = cnnfast.max_pool_backward(gy, it, (2, 3, 6, 6), backend="numpy")
    e = cnnfast.max_pool_backward(np.ascontiguousarray(gy.numpy()),
                                  np.ascontiguousarray(it.numpy()), (2, 3, 6, 6),
                                  backend="numpy")
    np.testing.assert_array_equal(g.numpy(), e)


def test_a_negative_bit_view_is_read_with_its_sign():
    x = torch.randn(1, 1, 4, 4, dtype=torch.float64)
    neg = x._neg_view()
    y = cnnfast.avg_pool2d(neg, 2, backend="numpy")
    np.testing.assert_array_equal(y.numpy(), cnnfast.avg_pool2d(-x.numpy(), 2,
                                                                backend="numpy"))


# ----------------------------------------------------------------------------- other producers


class Exporter:
    """A bare DLPack producer (no array namespace) over a numpy array."""

    def __init__(self, a, device=(1, 0)):
        self.a = a
        self.device = device

    def __dlpack__(self, **kwargs):
        return self.a.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.device


class NamespacedExporter(Exporter):
    """A DLPack producer with an array-API namespace whose from_dlpack wraps."""

    class Namespace:
        @staticmethod
        def from_dlpack(a):
            return NamespacedExporter(np.from_dlpack(a))

    def __array_namespace__(self, api_version=None):
        return self.Namespace


def test_a_read_only_dlpack_array_is_read_and_comes_back_as_numpy():
    x = _randn(2, 3, 6, 6)
    w = _randn(4, 3, 3, 3)
    x.flags.writeable = False
    w.flags.writeable = False
    assert not np.from_dlpack(Exporter(x)).flags.writeable
    y = cnnfast.conv2d(Exporter(x), Exporter(w), backend="numpy")
    assert type(y) is np.ndarray
    np.testing.assert_array_equal(y, cnnfast.conv2d(x, w, backend="numpy"))
    y = cnnfast.conv2d(Exporter(x), Exporter(w))  # the automatic backend
    np.testing.assert_allclose(y, cnnfast.conv2d(x, w, backend="numpy"), rtol=1e-12)


def test_an_array_api_producer_gets_its_own_type_back():
    x = _randn(2, 3, 6, 6)
    y = cnnfast.max_pool2d(NamespacedExporter(x), 2, return_indices=True, backend="numpy")
    assert all(isinstance(r, NamespacedExporter) for r in y)
    ey, eidx = cnnfast.max_pool2d(x, 2, return_indices=True, backend="numpy")
    np.testing.assert_array_equal(y[0].a, ey)
    np.testing.assert_array_equal(y[1].a, eidx)


def test_mixed_kinds_on_one_device_return_the_first_arrays_type():
    x = _randn(2, 3, 6, 6)
    w = _randn(4, 3, 3, 3)
    b = _randn(4)
    expected = cnnfast.conv2d(x, w, b, backend="numpy")
    y = cnnfast.conv2d(torch.from_numpy(x), w, b, backend="numpy")
    assert isinstance(y, torch.Tensor)
    np.testing.assert_array_equal(y.numpy(), expected)
    y = cnnfast.conv2d(x, torch.from_numpy(w), torch.from_numpy(b), backend="numpy")
    assert type(y) is np.ndarray
    np.testing.assert_array_equal(y, expected)
    gy = np.ones_like(expected)
    grads = cnnfast.conv_backward(torch.from_numpy(gy), x, torch.from_numpy(w),
                                  backend="numpy")
    assert all(isinstance(g, torch.Tensor) for g in grads)  # grad_y's type
    # float64 tensor with float32 numpy: mixed dtypes stay an error naming both.
    with pytest.raises(TypeError, match="weight.*dtype.*x"):
        cnnfast.conv2d(torch.from_numpy(x), w.astype(np.float32))


def test_explain_takes_dlpack_arrays():
    x = torch.randn(1, 2, 5, 5)
    w = torch.randn(3, 2, 3, 3)
    assert cnnfast.explain("conv2d", x, w, backend="numpy") == cnnfast.explain(
        "conv2d", x.numpy(), w.numpy(), backend="numpy")


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("which", ["x", "weight", "bias"])
def test_a_tensor_that_requires_grad_is_refused_naming_it(which):
    t = {"x": torch.randn(1, 2, 5, 5), "weight": torch.randn(3, 2, 3, 3),
         "bias": torch.randn(3)}
    t[which].requires_grad_(True)
    with pytest.raises(TypeError, match=rf"^{which} is a torch tensor that requires grad.*"
                                        rf"cnnfast\.torch.*{which}\.detach\(\)"):
        cnnfast.conv2d(t["x"], t["weight"], t["bias"])
    # detached, it runs
    t[which] = t[which].detach()
    assert isinstance(cnnfast.conv2d(t["x"], t["weight"], t["bias"]), torch.Tensor)


def test_a_parameter_is_refused_like_any_tensor_that_requires_grad():
    w = torch.nn.Parameter(torch.randn(3, 2, 3, 3))
    with pytest.raises(TypeError, match="weight is a torch tensor that requires grad"):
        cnnfast.conv_backward(torch.randn(1, 3, 3, 3), torch.randn(1, 2, 5, 5), w)


def test_validation_names_the_argument_for_tensors_as_for_numpy():
    with pytest.raises(ValueError, match="x"):
        cnnfast.conv2d(torch.randn(2, 5, 5), torch.randn(3, 2, 3, 3))
    with pytest.raises(ValueError, match="bias"):
        cnnfast.conv2d(torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3), torch.randn(4))
    with pytest.raises(TypeError, match="indices.*int64"):
        cnnfast.max_pool_backward(torch.randn(1, 1, 2, 2), torch.zeros(1, 1, 2, 2),
                                  (1, 1, 4, 4))
    with pytest.raises(TypeError, match="x must be a numpy or cupy array or a DLPack"):
        cnnfast.conv2d([[[[1.0]]]], torch.randn(1, 1, 1, 1))


def test_dtypes_follow_todays_rules():
    # bfloat16 has no numpy dtype: a TypeError naming the argument.
    with pytest.raises(TypeError, match=r"^x \(Tensor of dtype torch\.bfloat16\)"):
        cnnfast.conv2d(torch.ones(1, 1, 3, 3, dtype=torch.bfloat16),
                       torch.ones(1, 1, 1, 1, dtype=torch.bfloat16))
    # float16 on the CPU: refused exactly as a numpy float16 array is.
    x16, w16 = np.ones((1, 1, 3, 3), np.float16), np.ones((1, 1, 1, 1), np.float16)
    with pytest.raises(NotImplementedError) as numpy_error:
        cnnfast.conv2d(x16, w16)
    with pytest.raises(NotImplementedError) as torch_error:
        cnnfast.conv2d(torch.from_numpy(x16), torch.from_numpy(w16))
    assert str(torch_error.value) == str(numpy_error.value)
    with pytest.raises(TypeError, match="x has dtype int64"):
        cnnfast.avg_pool2d(torch.ones(1, 1, 4, 4, dtype=torch.int64), 2)
    # float32 stays float32
    y = cnnfast.avg_pool2d(torch.ones(1, 1, 4, 4), 2)
    assert y.dtype == torch.float32


def test_memory_on_another_device_is_refused_naming_the_argument():
    with pytest.raises(TypeError, match=r"^x lives on DLPack device Metal:0"):
        cnnfast.avg_pool2d(Exporter(_randn(1, 1, 4, 4), device=(8, 0)), 2)


def test_cuda_memory_without_cupy_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy -> ImportError
    x = Exporter(_randn(1, 1, 4, 4), device=(arrays.DLPACK_CUDA, 0))
    with pytest.raises(BackendUnavailable, match=r"^x lives in CUDA memory.*CuPy") as err:
        cnnfast.avg_pool2d(x, 2)
    assert isinstance(err.value, ValueError)


def test_cuda_memory_is_imported_through_cupy(monkeypatch):
    """The CUDA route without a GPU: a stand-in cupy module records the call, and the
    device of the array is made current around it."""
    calls = []

    class Device:
        def __init__(self, index):
            calls.append(("device", index))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(Device=Device)
    fake.from_dlpack = lambda a: calls.append(("from_dlpack", a)) or np.zeros((1, 1, 4, 4))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    x = Exporter(_randn(1, 1, 4, 4), device=(arrays.DLPACK_CUDA, 1))
    # The stand-in returns a numpy array: the call then runs as for numpy.
    y = cnnfast.avg_pool2d(x, 2, backend="numpy")
    assert calls == [("device", 1), ("from_dlpack", x)]
    assert y.shape == (1, 1, 2, 2)


def _cuda_ready():
    if not torch.cuda.is_available():
        return "torch has no CUDA device here"
    try:
        import cupy  # noqa: F401
    except ImportError:
        return "CuPy is not installed"
    if not get_backend("cupy").available:
        return f"the cupy backend is unavailable: {get_backend('cupy').reason}"
    return None


@pytest.mark.skipif(_cuda_ready() is not None, reason=str(_cuda_ready()))
def test_torch_cuda_tensors_run_on_cupy_and_come_back_as_torch():  # pragma: no cover
    x = torch.randn(2, 3, 8, 8, device="cuda")
    w = torch.randn(4, 3, 3, 3, device="cuda")
    b = torch.randn(4, device="cuda")
    y = cnnfast.conv2d(x, w, b, padding=1)
    assert isinstance(y, torch.Tensor) and y.is_cuda
    torch.testing.assert_close(y, torch.nn.functional.conv2d(x, w, b, padding=1),
                               rtol=1e-4, atol=1e-4)
    out = torch.empty_like(y)
    assert cnnfast.conv2d(x, w, b, padding=1, out=out) is out
    torch.testing.assert_close(out, y)
    with pytest.raises(TypeError, match="mixed devices"):
        cnnfast.conv2d(x, w.cpu())
