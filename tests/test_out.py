"""``out=`` (docs/API.md, Extensions; docs/interop.md): forward functions take an array
of exactly the result's shape, dtype and device, C-contiguous, writable, overlapping no
input; convolution backward functions take ``(grad_x, grad_weight, grad_bias)`` with
``None`` for any not given; pooling backward functions take grad_x's array. A bad
``out`` is refused, naming it, before any work; the result is written there and ``out``
is returned: by the cpp and numba kernels themselves (no temporary, no copy: see
"written in place" below), by the dispatcher's copy for the numpy reference, whose
failing kernel leaves ``out`` untouched.
"""

from __future__ import annotations

import numpy as np
import pytest

import cnnfast
from cnnfast.registry import get_backend

RNG = np.random.default_rng(11)
SENTINEL = -12345.0


def _randn(*shape, dtype=np.float64):
    return RNG.standard_normal(shape).astype(dtype)


def _forward_cases():
    """(name, function, arrays, kwargs) for every forward function, every rank."""
    cases = []
    for rank in (1, 2, 3):
        x = _randn(2, 4, *(6,) * rank)
        cases += [
            (f"conv{rank}d", getattr(cnnfast, f"conv{rank}d"),
             (x, _randn(6, 2, *(3,) * rank), _randn(6)), dict(padding=1, groups=2)),
            (f"conv_transpose{rank}d", getattr(cnnfast, f"conv_transpose{rank}d"),
             (x, _randn(4, 3, *(2,) * rank), _randn(3)), dict(stride=2)),
            (f"max_pool{rank}d", getattr(cnnfast, f"max_pool{rank}d"), (x,),
             dict(kernel_size=2)),
            (f"avg_pool{rank}d", getattr(cnnfast, f"avg_pool{rank}d"), (x,),
             dict(kernel_size=3, stride=2, padding=1)),
        ]
    cases.append(("conv-rank-generic", cnnfast.conv, (x, _randn(3, 4, 1, 1, 1), None), {}))
    return cases


FORWARD = _forward_cases()
BACKENDS = ["numpy", None]  # the reference and the automatic choice


@pytest.fixture(params=[pytest.param(c, id=c[0]) for c in FORWARD])
def forward(request):
    return request.param


@pytest.mark.parametrize("backend", BACKENDS, ids=["numpy", "auto"])
def test_forward_out_is_returned_and_holds_the_result(forward, backend):
    name, fn, arrs, kwargs = forward
    expected = fn(*arrs, **kwargs, backend=backend)
    out = np.full(expected.shape, SENTINEL)
    got = fn(*arrs, **kwargs, backend=backend, out=out)
    assert got is out
    np.testing.assert_array_equal(out, expected)


def test_forward_out_does_not_touch_the_inputs(forward):
    name, fn, arrs, kwargs = forward
    before = [None if a is None else a.copy() for a in arrs]
    expected = fn(*arrs, **kwargs, backend="numpy")
    fn(*arrs, **kwargs, backend="numpy", out=np.empty_like(expected))
    for a, b in zip(arrs, before):
        if a is not None:
            np.testing.assert_array_equal(a, b)


def _refused(fn, arrs, kwargs, out, error, match, monkeypatch, op):
    """``out`` refused with ``error`` matching ``match``, before any kernel ran, and
    left as it was."""
    backend = get_backend("numpy")

    def no_kernel(*args):
        raise AssertionError("a kernel ran before out was checked")

    monkeypatch.setitem(backend.ops, op, no_kernel)
    snapshot = None
    if isinstance(out, np.ndarray):
        snapshot = out.copy()
    with pytest.raises(error, match=match) as info:
        fn(*arrs, **kwargs, backend="numpy", out=out)
    assert "out" in str(info.value)
    if snapshot is not None:
        np.testing.assert_array_equal(out, snapshot)


def _op(name):
    for op in ("conv_transpose", "conv", "max_pool", "avg_pool"):
        if name.startswith(op):
            return op
    raise AssertionError(name)


def test_forward_out_of_the_wrong_shape_dtype_layout_or_kind(forward, monkeypatch):
    name, fn, arrs, kwargs = forward
    shape = fn(*arrs, **kwargs, backend="numpy").shape
    op = _op(name)
    bad_shape = np.zeros(shape[:-1] + (shape[-1] + 1,))
    _refused(fn, arrs, kwargs, bad_shape, ValueError, r"^out has shape .* expected",
             monkeypatch, op)
    _refused(fn, arrs, kwargs, np.zeros(shape, np.float32), TypeError,
             r"^out has dtype float32; expected float64", monkeypatch, op)
    strided = np.zeros(shape[:-1] + (2 * shape[-1],))[..., ::2]
    _refused(fn, arrs, kwargs, strided, ValueError, r"^out is not C-contiguous",
             monkeypatch, op)
    fortran = np.asfortranarray(np.zeros(shape))
    _refused(fn, arrs, kwargs, fortran, ValueError, r"^out is not C-contiguous",
             monkeypatch, op)
    read_only = np.zeros(shape)
    read_only.flags.writeable = False
    _refused(fn, arrs, kwargs, read_only, ValueError, r"^out is read-only", monkeypatch, op)
    _refused(fn, arrs, kwargs, np.zeros(shape).tolist(), TypeError,
             r"^out must be a numpy or cupy array", monkeypatch, op)


def test_forward_out_overlapping_an_input_is_refused(monkeypatch):
    x = _randn(1, 2, 6, 6)
    # avg_pool with kernel 1 keeps the shape: out=x itself fits in every other way.
    _refused(cnnfast.avg_pool2d, (x,), dict(kernel_size=1), x, ValueError,
             r"^out shares memory with the input x", monkeypatch, "avg_pool")
    # a view into a buffer that also holds the input
    buf = np.zeros(2 * 2 * 36)
    xv = buf[:72].reshape(1, 2, 6, 6)
    xv[...] = x
    out = buf[36:108].reshape(1, 2, 6, 6)
    _refused(cnnfast.avg_pool2d, (xv,), dict(kernel_size=1), out, ValueError,
             "out shares memory with the input x", monkeypatch, "avg_pool")
    # the weight and the bias too
    w = _randn(2, 2, 1, 1)
    b = np.zeros(2 * 36)
    _refused(cnnfast.conv2d, (x, w, b[-2:]), {}, b.reshape(1, 2, 6, 6), ValueError,
             "out shares memory with the input bias", monkeypatch, "conv")
    wide = np.zeros(2 * 36 + 4)
    _refused(cnnfast.conv2d, (x, wide[:4].reshape(2, 2, 1, 1)), {},
             wide[:72].reshape(1, 2, 6, 6), ValueError,
             "out shares memory with the input weight", monkeypatch, "conv")


def test_interleaved_memory_that_does_not_overlap_is_accepted():
    buf = np.zeros((1, 2, 6, 12))
    x = buf[..., ::2]
    x[...] = _randn(1, 2, 6, 6)
    out = np.zeros((1, 2, 6, 6))
    cnnfast.avg_pool2d(x, 1, backend="numpy", out=out)  # no overlap: fine
    np.testing.assert_array_equal(out, x)


def test_a_failing_kernel_leaves_out_untouched(monkeypatch):
    x = _randn(1, 2, 6, 6)
    w = _randn(3, 2, 3, 3)
    out = np.full((1, 3, 4, 4), SENTINEL)

    def failing(*args):
        raise RuntimeError("kernel failed")

    monkeypatch.setitem(get_backend("numpy").ops, "conv", failing)
    with pytest.raises(RuntimeError, match="kernel failed"):
        cnnfast.conv2d(x, w, backend="numpy", out=out)
    assert (out == SENTINEL).all()


def test_a_registered_backend_without_writes_out_gets_out_by_copy(tmp_path, monkeypatch):
    # A third-party backend whose kernels have the plain signatures (no destination
    # argument, no WRITES_OUT): the registry drops out= for it and the result is copied.
    (tmp_path / "plain_backend.py").write_text(
        "from cnnfast.backends.numpy import backend as _ref\n"
        "ARRAY = 'numpy'\n"
        "def conv(x, w, b, p):\n"
        "    return _ref.conv(x, w, b, p)\n"
        "def avg_pool(x, p):\n"
        "    return _ref.avg_pool(x, p)\n"
        "OPS = {'conv': conv, 'avg_pool': avg_pool}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from cnnfast import registry

    monkeypatch.setitem(registry._MODULES, "plain", "plain_backend")
    monkeypatch.delitem(registry._loaded, "plain", raising=False)
    try:
        x, w = _randn(1, 2, 6, 6), _randn(3, 2, 3, 3)
        out = np.full((1, 3, 4, 4), SENTINEL)
        assert cnnfast.conv2d(x, w, backend="plain", out=out) is out
        np.testing.assert_allclose(out, cnnfast.conv2d(x, w, backend="numpy"), rtol=1e-12)
        pooled = np.full((1, 2, 3, 3), SENTINEL)
        assert cnnfast.avg_pool2d(x, 2, backend="plain", out=pooled) is pooled
        np.testing.assert_allclose(pooled, cnnfast.avg_pool2d(x, 2, backend="numpy"))
    finally:
        registry._loaded.pop("plain", None)


def test_out_on_an_empty_convolution():
    x = np.zeros((0, 2, 5, 5))
    w = _randn(3, 2, 3, 3)
    b = _randn(3)
    out = np.full((0, 3, 3, 3), SENTINEL)
    assert cnnfast.conv2d(x, w, b, out=out) is out
    x = _randn(2, 2, 5, 5)
    w = np.zeros((0, 2, 3, 3))
    out = np.full((2, 0, 3, 3), SENTINEL)
    assert cnnfast.conv2d(x, w, out=out) is out


def test_explain_checks_out_as_the_call_does():
    x = _randn(1, 2, 6, 6)
    with pytest.raises(ValueError, match="^out has shape"):
        cnnfast.explain("max_pool2d", x, 2, out=np.zeros((1, 2, 2, 2)))
    assert cnnfast.explain("max_pool2d", x, 2, backend="numpy",
                           out=np.zeros((1, 2, 3, 3))) == "numpy"


# ----------------------------------------------------------------------------- max_pool indices


def test_max_pool_out_with_indices():
    x = _randn(2, 3, 6, 6)
    ey, eidx = cnnfast.max_pool2d(x, 2, return_indices=True, backend="numpy")
    y_out = np.empty_like(ey)
    i_out = np.empty_like(eidx)
    y, idx = cnnfast.max_pool2d(x, 2, return_indices=True, out=(y_out, i_out))
    assert y is y_out and idx is i_out
    np.testing.assert_array_equal(y_out, ey)
    np.testing.assert_array_equal(i_out, eidx)
    # an array alone is y's; a pair may leave either out
    y_out2 = np.empty_like(ey)
    y, idx = cnnfast.max_pool2d(x, 2, return_indices=True, out=y_out2)
    assert y is y_out2 and idx is not None
    np.testing.assert_array_equal(idx, eidx)
    y, idx = cnnfast.max_pool2d(x, 2, return_indices=True, out=(None, i_out))
    assert idx is i_out
    np.testing.assert_array_equal(y, ey)
    with pytest.raises(TypeError, match=r"^out\[1\] \(indices\) has dtype float64; "
                                        r"expected int64"):
        cnnfast.max_pool2d(x, 2, return_indices=True, out=(None, np.empty_like(ey)))
    with pytest.raises(TypeError, match="^out must be an array for the pooled output; "):
        cnnfast.max_pool2d(x, 2, out=(y_out, i_out))
    with pytest.raises(TypeError, match="^out must be an array .* pair"):
        cnnfast.max_pool2d(x, 2, return_indices=True, out=(y_out,))
    shared = np.empty(ey.size, np.int64)
    with pytest.raises(ValueError, match=r"^out\[1\] \(indices\) shares memory with "
                                         r"out\[0\] \(y\)"):
        cnnfast.max_pool2d(x.astype(np.float64), 2, return_indices=True,
                           out=(shared.view(np.float64).reshape(ey.shape),
                                shared.reshape(ey.shape)))


# ----------------------------------------------------------------------------- backward


def _conv_backward_cases():
    x = _randn(2, 4, 6, 6)
    w = _randn(6, 2, 3, 3)
    gy = _randn(2, 6, 6, 6)
    wt = _randn(4, 3, 2, 2)
    gyt = _randn(2, 3, 12, 12)
    return [
        ("conv_backward", cnnfast.conv_backward, (gy, x, w), dict(padding=1, groups=2),
         (x.shape, w.shape, (6,)), "conv_backward"),
        ("conv_transpose_backward", cnnfast.conv_transpose_backward, (gyt, x, wt),
         dict(stride=2), (x.shape, wt.shape, (3,)), "conv_transpose_backward"),
    ]


@pytest.fixture(params=[pytest.param(c, id=c[0]) for c in _conv_backward_cases()])
def backward(request):
    return request.param


@pytest.mark.parametrize("backend", BACKENDS, ids=["numpy", "auto"])
def test_backward_out_tuple_is_written_and_returned(backward, backend):
    name, fn, arrs, kwargs, shapes, _ = backward
    expected = fn(*arrs, **kwargs, backend=backend)
    outs = tuple(np.full(s, SENTINEL) for s in shapes)
    got = fn(*arrs, **kwargs, backend=backend, out=outs)
    assert all(g is o for g, o in zip(got, outs))
    for o, e in zip(outs, expected):
        np.testing.assert_array_equal(o, e)


def test_backward_out_with_none_entries_and_needs(backward):
    name, fn, arrs, kwargs, shapes, _ = backward
    expected = fn(*arrs, **kwargs, backend="numpy")
    gw = np.empty(shapes[1])
    got = fn(*arrs, **kwargs, backend="numpy", out=[None, gw, None])  # a list works too
    assert got[1] is gw
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[2], expected[2])
    got = fn(*arrs, **kwargs, backend="numpy", needs=("weight",), out=(None, gw, None))
    assert got[0] is None and got[1] is gw and got[2] is None
    np.testing.assert_array_equal(gw, expected[1])


def test_backward_out_errors_name_out(backward, monkeypatch):
    name, fn, arrs, kwargs, shapes, op = backward
    gy, x, w = arrs

    def refused(out, error, match, **extra):
        _refused(fn, arrs, dict(kwargs, **extra), out, error, match, monkeypatch, op)

    refused(np.empty(shapes[0]), TypeError, r"^out must be a tuple \(or list\) "
                                            r"\(grad_x, grad_weight, grad_bias\)")
    refused((None, None), TypeError, "^out must be a tuple .* of length 2")
    refused((np.empty(shapes[1]), None, None), ValueError,
            r"^out\[0\] \(grad_x\) has shape")
    refused((None, np.empty(shapes[1], np.float32), None), TypeError,
            r"^out\[1\] \(grad_weight\) has dtype float32")
    refused((None, None, np.empty(2 * shapes[2][0])[::2]), ValueError,
            r"^out\[2\] \(grad_bias\) is not C-contiguous")
    refused((None, np.empty(shapes[1]), None), ValueError,
            r"^out\[1\] \(grad_weight\) is given but 'weight' is not in "
            r"needs=\('x', 'bias'\)", needs=("bias", "x"))
    refused((x, None, None), ValueError, r"^out\[0\] \(grad_x\) shares memory with the "
                                         r"input x")
    big = np.empty(int(np.prod(shapes[0])))
    refused((big.reshape(shapes[0]), None, big[-shapes[2][0]:]), ValueError,
            r"^out\[2\] \(grad_bias\) shares memory with out\[0\] \(grad_x\)")


def test_backward_failing_kernel_leaves_every_out_untouched(monkeypatch):
    name, fn, arrs, kwargs, shapes, op = _conv_backward_cases()[0]
    outs = tuple(np.full(s, SENTINEL) for s in shapes)

    def failing(*args):
        raise RuntimeError("kernel failed")

    monkeypatch.setitem(get_backend("numpy").ops, op, failing)
    with pytest.raises(RuntimeError):
        fn(*arrs, **kwargs, backend="numpy", out=outs)
    assert all((o == SENTINEL).all() for o in outs)


def test_backward_out_on_an_empty_convolution():
    gy = np.zeros((0, 3, 3, 3))
    x = np.zeros((0, 2, 5, 5))
    w = _randn(3, 2, 3, 3)
    outs = (np.full(x.shape, SENTINEL), np.full(w.shape, SENTINEL), np.full(3, SENTINEL))
    got = cnnfast.conv_backward(gy, x, w, out=outs)
    assert all(g is o for g, o in zip(got, outs))
    assert not outs[1].any() and not outs[2].any()


def test_pool_backward_out(monkeypatch):
    x = _randn(2, 3, 6, 6)
    y, idx = cnnfast.max_pool2d(x, 2, return_indices=True, backend="numpy")
    gy = _randn(*y.shape)
    for backend in BACKENDS:
        expected = cnnfast.max_pool_backward(gy, idx, x.shape, backend=backend)
        out = np.full(x.shape, SENTINEL)
        assert cnnfast.max_pool_backward(gy, idx, x.shape, backend=backend, out=out) is out
        np.testing.assert_array_equal(out, expected)
        expected = cnnfast.avg_pool_backward(gy, x.shape, 2, backend=backend)
        out = np.full(x.shape, SENTINEL)
        assert cnnfast.avg_pool_backward(gy, x.shape, 2, backend=backend, out=out) is out
        np.testing.assert_array_equal(out, expected)
    _refused(cnnfast.max_pool_backward, (gy, idx), dict(x_shape=x.shape),
             np.empty((2, 3, 6, 5)), ValueError, "^out has shape", monkeypatch,
             "max_pool_backward")
    gbuf = np.zeros(x.size)
    gy_view = gbuf[:gy.size].reshape(gy.shape)
    _refused(cnnfast.avg_pool_backward, (gy_view,), dict(x_shape=x.shape, kernel_size=2),
             gbuf.reshape(x.shape), ValueError, "^out shares memory with the input grad_y",
             monkeypatch, "avg_pool_backward")
    ibuf = np.zeros(x.size, np.int64)
    ibuf[:idx.size] = idx.ravel()
    _refused(cnnfast.max_pool_backward, (gy, ibuf[:idx.size].reshape(idx.shape)),
             dict(x_shape=x.shape), ibuf.view(np.float64).reshape(x.shape), ValueError,
             "^out shares memory with the input indices", monkeypatch, "max_pool_backward")


# ----------------------------------------------------------------------------- DLPack out


def test_a_torch_tensor_as_out():
    torch = pytest.importorskip("torch")
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    expected = cnnfast.conv2d(x, w, padding=1, backend="numpy")
    out = torch.empty_like(expected)
    assert cnnfast.conv2d(x, w, padding=1, backend="numpy", out=out) is out
    assert torch.equal(out, expected)
    # numpy inputs and a torch out: one device, accepted; out comes back
    out2 = torch.zeros_like(expected)
    assert cnnfast.conv2d(x.numpy(), w.numpy(), padding=1, out=out2) is out2
    torch.testing.assert_close(out2, expected)
    # backward into torch tensors
    gy = torch.randn_like(expected)
    outs = (torch.empty_like(x), None, torch.empty(4, dtype=torch.float64))
    got = cnnfast.conv_backward(gy, x, w, padding=1, backend="numpy", out=outs)
    assert got[0] is outs[0] and got[2] is outs[2] and isinstance(got[1], torch.Tensor)
    ex = cnnfast.conv_backward(gy, x, w, padding=1, backend="numpy")
    for g, e in zip(got, ex):
        assert torch.equal(g, e)


def test_torch_out_refusals_name_out():
    torch = pytest.importorskip("torch")
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match="^out shares memory with the input x"):
        cnnfast.avg_pool2d(x, 1, out=x)
    with pytest.raises(TypeError, match="^out is a torch tensor that requires grad"):
        cnnfast.avg_pool2d(x, 2, out=torch.empty(1, 2, 3, 3, dtype=torch.float64,
                                                  requires_grad=True))
    with pytest.raises(TypeError, match=r"^out\[1\] is a torch tensor that requires grad"):
        cnnfast.conv_backward(torch.ones(1, 1, 6, 6, dtype=torch.float64), x,
                              torch.ones(1, 2, 1, 1, dtype=torch.float64),
                              out=(None, torch.ones(1, 2, 1, 1, dtype=torch.float64,
                                                    requires_grad=True), None))
    with pytest.raises(ValueError, match="^out is not C-contiguous"):
        cnnfast.avg_pool2d(x, 2, out=torch.empty(1, 2, 3, 6, dtype=torch.float64)[..., ::2])
    with pytest.raises(TypeError, match="^out has dtype float32"):
        cnnfast.avg_pool2d(x, 2, out=torch.empty(1, 2, 3, 3))


# ----------------------------------------------------------------------------- written in place

# The cpp and numba kernels write into ``out`` itself: no temporary, no copy. Proved per
# backend and op by (1) the array object the call returns, (2) a dispatcher that may not
# copy (``api.write`` is replaced by one that fails on a copy) and (3) the data pointers
# the kernels themselves received (a spy on ``_cpp`` / numba's ``_launch``).
IN_PLACE = ["cpp", "numba"]


def _ptr(a):
    return a.__array_interface__["data"][0]


class _CppSpy:
    """``_cpp`` with every function call recording the numpy arrays it was given."""

    def __init__(self, real, seen):
        self._real, self._seen = real, seen

    def __getattr__(self, name):
        attr = getattr(self._real, name)
        if isinstance(attr, type) or not callable(attr):
            return attr

        def call(*args, **kwargs):
            self._seen.update(_ptr(a) for a in args if isinstance(a, np.ndarray))
            return attr(*args, **kwargs)

        return call


@pytest.fixture(params=IN_PLACE)
def in_place(request, monkeypatch):
    """(backend name, the set of data pointers its kernels received), with
    ``api.write`` refusing to copy."""
    name = request.param
    backend = get_backend(name)
    if not backend.available:
        pytest.skip(backend.reason)
    seen: set = set()
    module = backend.module
    if name == "cpp":
        monkeypatch.setattr(module, "_cpp", _CppSpy(module._cpp, seen))
    else:
        real_launch = module._launch

        def launch(kernel, *args):
            seen.update(_ptr(a) for a in args if isinstance(a, np.ndarray))
            return real_launch(kernel, *args)

        monkeypatch.setattr(module, "_launch", launch)

    import cnnfast.api as api_module
    real_write = api_module.write

    def no_copy(out, result):
        assert out is None or result is out, "the dispatcher copied a result into out"
        return real_write(out, result)

    monkeypatch.setattr(api_module, "write", no_copy)
    monkeypatch.setattr(api_module, "write_grads",
                        lambda outs, grads: tuple(no_copy(o, g) if g is not None else g
                                                  for o, g in zip(outs, grads)))
    return name, seen


def _assert_written_in_place(out, got, seen, expected):
    assert got is out
    assert _ptr(out) in seen, "no kernel received out's memory"
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


def test_forward_kernels_write_into_out(forward, in_place):
    name, fn, arrs, kwargs = forward
    backend, seen = in_place
    expected = fn(*arrs, **kwargs, backend="numpy")
    seen.clear()
    out = np.full(expected.shape, SENTINEL)
    got = fn(*arrs, **kwargs, backend=backend, out=out)
    last = getattr(get_backend(backend).module, "last_paths", dict)()
    if last.get("y") == "phases":
        # numba's strided transposed path sums each stride phase into a buffer of
        # that phase and stores it into its strided view of out (numpy assignment):
        # no kernel sees out, and no whole-result copy is made either.
        assert got is out
        np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
        return
    _assert_written_in_place(out, got, seen, expected)


def test_max_pool_writes_y_and_indices_into_out(in_place):
    backend, seen = in_place
    x = _randn(2, 3, 7, 7)
    ey, eidx = cnnfast.max_pool2d(x, 3, 2, padding=1, return_indices=True, backend="numpy")
    for pair in ((np.full(ey.shape, SENTINEL), np.full(eidx.shape, -7)),
                 (None, np.full(eidx.shape, -7)), (np.full(ey.shape, SENTINEL), None)):
        seen.clear()
        y, idx = cnnfast.max_pool2d(x, 3, 2, padding=1, return_indices=True,
                                    backend=backend, out=pair)
        for o, got, e in zip(pair, (y, idx), (ey, eidx)):
            if o is not None:
                _assert_written_in_place(o, got, seen, e)
            else:
                np.testing.assert_array_equal(got, e)


@pytest.mark.parametrize("activation", [None, "relu"])
def test_backward_kernels_write_the_gradient_tuple_into_out(backward, in_place,
                                                            activation):
    name, fn, arrs, kwargs, shapes, _ = backward
    backend, seen = in_place
    forward_fn = cnnfast.conv if name == "conv_backward" else cnnfast.conv_transpose
    gy, x, w = arrs
    extra = {}
    if activation is not None:  # the fused pass writes grad_bias (act_grad)
        extra = dict(activation=activation,
                     y=forward_fn(x, w, None, **kwargs, activation=activation,
                                  backend="numpy"))
    expected = fn(*arrs, **kwargs, **extra, backend="numpy")
    seen.clear()
    outs = tuple(np.full(s, SENTINEL) for s in shapes)
    got = fn(*arrs, **kwargs, **extra, backend=backend, out=outs)
    for o, g, e in zip(outs, got, expected):
        _assert_written_in_place(o, g, seen, e)
    # one out given, the others allocated by the kernels
    seen.clear()
    gw = np.full(shapes[1], SENTINEL)
    got = fn(*arrs, **kwargs, **extra, backend=backend, out=(None, gw, None))
    _assert_written_in_place(gw, got[1], seen, expected[1])
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-12, atol=1e-12)


def test_pool_backward_kernels_write_into_out(in_place):
    backend, seen = in_place
    x = _randn(2, 3, 6, 6)
    y, idx = cnnfast.max_pool2d(x, 2, return_indices=True, backend="numpy")
    gy = _randn(*y.shape)
    for call in (lambda **kw: cnnfast.max_pool_backward(gy, idx, x.shape, **kw),
                 lambda **kw: cnnfast.avg_pool_backward(gy, x.shape, 2, **kw)):
        expected = call(backend="numpy")
        seen.clear()
        out = np.full(x.shape, SENTINEL)
        _assert_written_in_place(out, call(backend=backend, out=out), seen, expected)


def test_torch_out_is_written_in_place(in_place):
    """Through DLPack: the kernel writes into the tensor's own memory."""
    torch = pytest.importorskip("torch")
    backend, seen = in_place
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    expected = cnnfast.conv2d(x, w, padding=1, backend="numpy")
    out = torch.full_like(expected, SENTINEL)
    assert cnnfast.conv2d(x, w, padding=1, backend=backend, out=out) is out
    assert out.data_ptr() in seen
    torch.testing.assert_close(out, expected)


def test_copying_backends_still_fill_out():
    """The numpy reference computes in arrays of its own (``copied_out``): its kernel
    leaves the out it is handed alone, and the dispatcher copies the result there."""
    x, w = _randn(1, 2, 5, 5), _randn(3, 2, 3, 3)
    p = cnnfast.params.conv_params(x.shape, w.shape, 1, 1, 1, 1)
    out = np.full((1, 3, 5, 5), SENTINEL)
    result = get_backend("numpy").ops["conv"](x, w, None, p, out)
    assert result is not out and (out == SENTINEL).all()
    assert cnnfast.conv2d(x, w, padding=1, backend="numpy", out=out) is out
    np.testing.assert_array_equal(out, result)


def test_numba_weight_gradient_recomputed_in_out_when_not_finite(in_place):
    """numba's product path for grad_weight gives up on a non-finite result (a padding
    zero may have met an inf) and the exact direct kernel recomputes it: both write
    into out, and the second result is what stays there."""
    backend, seen = in_place
    if backend != "numba":
        pytest.skip("numba's fallback")
    x = _randn(2, 3, 9, 9)
    x[0, 1, 0, 0] = np.inf
    w = _randn(8, 3, 3, 3)  # 8 output channels: the product (gemm) path
    gy = _randn(2, 8, 9, 9)
    expected = cnnfast.conv_backward(gy, x, w, padding=1, backend="numpy")[1]
    assert not np.isfinite(expected).all()  # what sends numba to its fallback
    gw = np.full(w.shape, SENTINEL)
    got = cnnfast.conv_backward(gy, x, w, padding=1, needs=("weight",), backend=backend,
                                out=(None, gw, None))
    assert got[1] is gw and not (gw == SENTINEL).any()
    assert get_backend("numba").module.last_paths()["grad_weight"] == "gemm"
    np.testing.assert_allclose(gw, expected, rtol=1e-12, atol=1e-12)  # NaN and inf alike
