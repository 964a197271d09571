"""cnnfast.torch's custom operators and functional wrappers against PyTorch's own:
outputs and gradients (every op, ranks 1-3, stride, padding incl. 'same' and
asymmetric, dilation, groups, ceil_mode, count_include_pad, divisor_override),
``torch.library.opcheck`` on each operator, ``torch.compile(fullgraph=True)``, meta
tensors, and the CUDA path (skipped without a CUDA device and cupy). Skipped when
torch is not installed."""

from __future__ import annotations

import importlib.util

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import cnnfast.torch as ct  # noqa: E402
from cnnfast.torch import ops as O  # noqa: E402

# torch's own note on its padding='same' with even kernels (the reference side)
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")

DTYPES = [pytest.param(torch.float64, id="f64"), pytest.param(torch.float32, id="f32")]


def assert_close(actual, expected, dtype, what=""):
    """float64: within 1e-10 (absolute, values of order one); float32: within 1e-4
    of the largest magnitude of the reference."""
    assert actual.shape == expected.shape, what
    assert actual.dtype == expected.dtype, what
    err = (actual - expected).abs().max().item() if actual.numel() else 0.0
    scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    tol = 1e-10 * scale if dtype == torch.float64 else 1e-4 * scale
    assert err <= tol, f"{what}: max error {err:.3g} > {tol:.3g}"


def _leaf(shape, dtype, gen, requires_grad=True):
    return torch.randn(shape, dtype=dtype, generator=gen).requires_grad_(requires_grad)


def check_against_torch(ours, theirs, inputs, dtype, seed=0):
    """Same output and same gradients w.r.t. every input that requires grad."""
    y = ours(*inputs)
    y_ref = theirs(*inputs)
    assert_close(y.detach(), y_ref.detach(), dtype, "output")
    grad_y = torch.randn(y_ref.shape, dtype=dtype,
                         generator=torch.Generator().manual_seed(seed + 1))
    wrt = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    grads = torch.autograd.grad(y, wrt, grad_y)
    grads_ref = torch.autograd.grad(y_ref, wrt, grad_y)
    for i, (g, g_ref) in enumerate(zip(grads, grads_ref)):
        assert_close(g, g_ref, dtype, f"gradient of input {i}")


# ----------------------------------------------------------------------------- conv

# (x shape, weight shape, bias, kwargs)
CONV_CASES = {
    "1d-stride-pad": ((2, 4, 11), (6, 4, 3), True, dict(stride=2, padding=1)),
    "1d-same-even-dilated": ((2, 3, 10), (4, 3, 4), False, dict(padding="same", dilation=2)),
    "2d-groups-dilation": ((2, 4, 9, 8), (6, 2, 3, 2), True,
                           dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2)),
    "2d-valid": ((3, 2, 7, 7), (5, 2, 3, 3), True, dict(padding="valid")),
    "2d-same-even": ((2, 3, 8, 7), (4, 3, 4, 3), True, dict(padding="same")),
    "2d-depthwise": ((2, 4, 6, 6), (4, 1, 3, 3), False, dict(padding=1, groups=4)),
    "3d-stride-pad": ((2, 2, 5, 6, 4), (4, 2, 3, 3, 2), True,
                      dict(stride=(1, 2, 1), padding=(1, 1, 0))),
    "3d-same-groups-dilated": ((1, 4, 6, 5, 5), (4, 2, 2, 3, 2), True,
                               dict(padding="same", dilation=2, groups=2)),
}
CONV_FNS = {1: (ct.conv1d, F.conv1d), 2: (ct.conv2d, F.conv2d), 3: (ct.conv3d, F.conv3d)}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv_matches_torch(case, dtype):
    x_shape, w_shape, has_bias, kw = CONV_CASES[case]
    gen = torch.Generator().manual_seed(0)
    x, w = _leaf(x_shape, dtype, gen), _leaf(w_shape, dtype, gen)
    b = _leaf((w_shape[0],), dtype, gen) if has_bias else None
    ours, theirs = CONV_FNS[len(x_shape) - 2]
    check_against_torch(lambda x, w, b: ours(x, w, b, **kw),
                        lambda x, w, b: theirs(x, w, b, **kw), (x, w, b), dtype)
    # the rank-generic wrapper is the same operator
    y = ct.conv(x, w, b, **kw)
    assert_close(y.detach(), theirs(x, w, b, **kw).detach(), dtype, "conv")


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_asymmetric_padding_matches_padded_torch(dtype):
    gen = torch.Generator().manual_seed(1)
    x, w = _leaf((2, 3, 7, 6), dtype, gen), _leaf((4, 3, 3, 3), dtype, gen)
    b = _leaf((4,), dtype, gen)
    check_against_torch(
        lambda x, w, b: ct.conv2d(x, w, b, stride=2, padding=((0, 2), (1, 0))),
        lambda x, w, b: F.conv2d(F.pad(x, (1, 0, 0, 2)), w, b, stride=2),
        (x, w, b), dtype)


def test_conv_computes_only_the_gradients_autograd_needs(monkeypatch):
    asked = []
    real = O.api.conv_backward

    def spy(*args, needs, **kwargs):
        asked.append(tuple(needs))
        return real(*args, needs=needs, **kwargs)

    monkeypatch.setattr(O.api, "conv_backward", spy)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)  # no gradient wanted
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    ct.conv2d(x, w, b).sum().backward()
    assert asked == [("weight", "bias")]
    asked.clear()
    x.requires_grad_(True)
    w.requires_grad_(False)
    ct.conv2d(x, w, None).sum().backward()  # no bias: not asked for
    assert asked == [("x",)]


# ----------------------------------------------------------------------------- conv_transpose

CONV_T_CASES = {
    "1d-stride-outpad": ((2, 4, 5), (4, 3, 3), True,
                         dict(stride=2, padding=1, output_padding=1)),
    "2d-groups-stride": ((2, 4, 4, 5), (4, 3, 3, 2), True,
                         dict(stride=(2, 3), padding=(1, 0), output_padding=(1, 2), groups=2)),
    "2d-dilated": ((2, 3, 5, 4), (3, 2, 3, 3), False,
                   dict(dilation=2, output_padding=1, padding=1)),
    "3d-stride": ((1, 2, 3, 4, 3), (2, 2, 2, 3, 2), True, dict(stride=2, padding=(0, 1, 0))),
    "3d-groups-dilated": ((2, 4, 3, 3, 3), (4, 1, 2, 2, 2), True,
                          dict(groups=2, dilation=(1, 2, 1), stride=(1, 1, 2))),
}
CONV_T_FNS = {1: (ct.conv_transpose1d, F.conv_transpose1d),
              2: (ct.conv_transpose2d, F.conv_transpose2d),
              3: (ct.conv_transpose3d, F.conv_transpose3d)}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(CONV_T_CASES))
def test_conv_transpose_matches_torch(case, dtype):
    x_shape, w_shape, has_bias, kw = CONV_T_CASES[case]
    gen = torch.Generator().manual_seed(2)
    x, w = _leaf(x_shape, dtype, gen), _leaf(w_shape, dtype, gen)
    b = _leaf((w_shape[1] * kw.get("groups", 1),), dtype, gen) if has_bias else None
    ours, theirs = CONV_T_FNS[len(x_shape) - 2]
    check_against_torch(lambda x, w, b: ours(x, w, b, **kw),
                        lambda x, w, b: theirs(x, w, b, **kw), (x, w, b), dtype)
    y = ct.conv_transpose(x, w, b, **kw)
    assert_close(y.detach(), theirs(x, w, b, **kw).detach(), dtype, "conv_transpose")


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_transpose_same_and_asymmetric_crop_the_full_output(dtype):
    # padding crops the full transposed output; "same" (cnnfast's extension, ONNX
    # SAME_UPPER) crops it to input size * stride, the odd element at the end
    gen = torch.Generator().manual_seed(11)
    x, w = _leaf((2, 3, 4, 5), dtype, gen), _leaf((3, 2, 3, 4), dtype, gen)
    check_against_torch(  # full output 9 x 12 -> 8 x 10: crop (0, 1) and (1, 1)
        lambda x, w: ct.conv_transpose2d(x, w, stride=2, padding="same"),
        lambda x, w: F.conv_transpose2d(x, w, stride=2)[..., 0:8, 1:11], (x, w), dtype)
    check_against_torch(
        lambda x, w: ct.conv_transpose2d(x, w, stride=2, padding=((2, 0), (0, 3))),
        lambda x, w: F.conv_transpose2d(x, w, stride=2)[..., 2:, :-3], (x, w), dtype)


def test_conv_transpose_computes_only_the_gradients_autograd_needs(monkeypatch):
    asked = []
    real = O.api.conv_transpose_backward

    def spy(*args, needs, **kwargs):
        asked.append(tuple(needs))
        return real(*args, needs=needs, **kwargs)

    monkeypatch.setattr(O.api, "conv_transpose_backward", spy)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    b = torch.randn(2, dtype=torch.float64)
    ct.conv_transpose2d(x, w, b, stride=2).sum().backward()
    assert asked == [("x",)]


# ----------------------------------------------------------------------------- pooling

MAX_POOL_CASES = {
    "1d-pad": ((2, 3, 11), dict(kernel_size=3, stride=2, padding=1)),
    "1d-ceil-dilated": ((2, 3, 10), dict(kernel_size=2, dilation=2, ceil_mode=True)),
    "2d-seed": ((4, 5, 10, 10), dict(kernel_size=2)),
    "2d-mixed": ((2, 3, 9, 8), dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 0),
                                    dilation=(1, 2), ceil_mode=True)),
    "3d-ceil": ((2, 2, 5, 7, 6), dict(kernel_size=2, stride=2, ceil_mode=True)),
    "3d-pad": ((1, 3, 5, 6, 6), dict(kernel_size=3, stride=(1, 2, 2), padding=1)),
}
MAX_POOL_FNS = {1: (ct.max_pool1d, F.max_pool1d), 2: (ct.max_pool2d, F.max_pool2d),
                3: (ct.max_pool3d, F.max_pool3d)}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(MAX_POOL_CASES))
def test_max_pool_matches_torch(case, dtype):
    x_shape, kw = MAX_POOL_CASES[case]
    x = _leaf(x_shape, dtype, torch.Generator().manual_seed(3))
    ours, theirs = MAX_POOL_FNS[len(x_shape) - 2]
    check_against_torch(lambda x: ours(x, **kw), lambda x: theirs(x, **kw), (x,), dtype)
    y, idx = ours(x, return_indices=True, **kw)
    y_ref, idx_ref = theirs(x, return_indices=True, **kw)
    assert torch.equal(idx, idx_ref)
    assert idx.dtype == torch.int64
    # with indices, the gradient flows through y as well
    check_against_torch(lambda x: ours(x, return_indices=True, **kw)[0],
                        lambda x: theirs(x, return_indices=True, **kw)[0], (x,), dtype)
    assert torch.equal(ct.max_pool(x, **kw), y)  # rank-generic wrapper


AVG_POOL_CASES = {
    "1d-ceil-nopad-count": ((2, 3, 10), dict(kernel_size=3, stride=2, padding=1,
                                             ceil_mode=True, count_include_pad=False)),
    "1d-ceil-pad-count": ((2, 3, 10), dict(kernel_size=3, stride=2, padding=1,
                                           ceil_mode=True)),
    "2d-seed": ((4, 5, 10, 10), dict(kernel_size=2)),
    "2d-ceil-pad": ((2, 3, 8, 9), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    "2d-mixed-nocount": ((2, 3, 7, 8), dict(kernel_size=(3, 2), stride=(2, 1),
                                            padding=(1, 1), count_include_pad=False)),
    "2d-divisor": ((2, 3, 7, 7), dict(kernel_size=3, stride=2, padding=1,
                                      divisor_override=3)),
    "3d-ceil-pad": ((1, 2, 5, 6, 7), dict(kernel_size=2, stride=2, padding=1,
                                          ceil_mode=True)),
    "3d-divisor-ceil": ((2, 2, 5, 5, 6), dict(kernel_size=3, stride=2, padding=1,
                                              divisor_override=5, ceil_mode=True,
                                              count_include_pad=False)),
}
AVG_POOL_FNS = {1: (ct.avg_pool1d, F.avg_pool1d), 2: (ct.avg_pool2d, F.avg_pool2d),
                3: (ct.avg_pool3d, F.avg_pool3d)}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(AVG_POOL_CASES))
def test_avg_pool_matches_torch(case, dtype):
    x_shape, kw = AVG_POOL_CASES[case]
    x = _leaf(x_shape, dtype, torch.Generator().manual_seed(4))
    ours, theirs = AVG_POOL_FNS[len(x_shape) - 2]
    check_against_torch(lambda x: ours(x, **kw), lambda x: theirs(x, **kw), (x,), dtype)
    assert_close(ct.avg_pool(x, **kw), ours(x, **kw), dtype, "avg_pool")


@pytest.mark.parametrize("dtype", DTYPES)
def test_pooling_asymmetric_padding_matches_padded_torch(dtype):
    x = _leaf((2, 3, 7, 6), dtype, torch.Generator().manual_seed(5))
    pads = ((0, 1), (2, 1))
    check_against_torch(
        lambda x: ct.max_pool2d(x, 3, 2, pads),
        lambda x: F.max_pool2d(F.pad(x, (2, 1, 0, 1), value=float("-inf")), 3, 2),
        (x,), dtype)
    check_against_torch(  # count_include_pad=True: the padding counts, as zeros
        lambda x: ct.avg_pool2d(x, 3, 2, pads),
        lambda x: F.avg_pool2d(F.pad(x, (2, 1, 0, 1)), 3, 2), (x,), dtype)


def test_max_pool_without_indices_recomputes_them_for_its_gradient():
    # the operator without indices (what the wrappers run without autograd) still has
    # a gradient when called directly
    x = _leaf((2, 3, 7, 7), torch.float64, torch.Generator().manual_seed(6))
    args = ([3, 3], [2, 2], [1, 1, 1, 1], [1, 1], True)
    check_against_torch(lambda x: O.max_pool_op(x, *args),
                        lambda x: F.max_pool2d(x, 3, 2, 1, ceil_mode=True), (x,),
                        torch.float64)


def test_unbatched_inputs_as_torch():
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(3, 8, 8, dtype=torch.float64, generator=gen)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, generator=gen)
    wt = torch.randn(3, 2, 3, 3, dtype=torch.float64, generator=gen)
    pairs = [(ct.conv2d(x, w, padding=1), F.conv2d(x, w, padding=1)),
             (ct.conv_transpose2d(x, wt, stride=2), F.conv_transpose2d(x, wt, stride=2)),
             (ct.max_pool2d(x, 2), F.max_pool2d(x, 2)),
             (ct.avg_pool2d(x, 3, 2, 1), F.avg_pool2d(x, 3, 2, 1)),
             (ct.max_pool1d(x[0], 2), F.max_pool1d(x[0], 2))]
    for ours, theirs in pairs:
        assert_close(ours, theirs, torch.float64, "unbatched")


def test_no_grad_and_non_contiguous_inputs():
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(2, 8, 8, 3, dtype=torch.float32, generator=gen).permute(0, 3, 1, 2)
    assert not x.is_contiguous()
    w = torch.randn(4, 3, 3, 3, dtype=torch.float32, generator=gen, requires_grad=True)
    with torch.no_grad():
        y = ct.conv2d(x, w)
        assert y.grad_fn is None
        assert_close(y, F.conv2d(x, w), torch.float32, "conv")
        assert_close(ct.max_pool2d(x, 2), F.max_pool2d(x, 2), torch.float32, "max_pool")


def test_errors_name_the_argument():
    x = torch.randn(1, 3, 6, 6)
    with pytest.raises(ValueError, match="groups"):
        ct.conv2d(x, torch.randn(4, 3, 3, 3), groups=2)
    with pytest.raises(ValueError, match="stride"):
        ct.conv2d(x, torch.randn(4, 3, 3, 3), stride=(1, 2, 3))
    with pytest.raises(ValueError, match="padding"):
        ct.max_pool2d(x, 2, padding="same")
    with pytest.raises(ValueError, match="'same' needs stride 1"):
        ct.conv2d(x, torch.randn(4, 3, 3, 3), stride=2, padding="same")
    with pytest.raises(TypeError, match="dtype"):
        ct.conv2d(x, torch.randn(4, 3, 3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="input has shape"):
        ct.conv2d(torch.randn(6, 6), torch.randn(4, 3, 3, 3))
    with pytest.raises(ValueError, match="input has shape"):
        ct.max_pool(torch.randn(6, 6), 2)
    with pytest.raises(ValueError, match="padding='bad'"):
        ct.conv2d(x, torch.randn(4, 3, 3, 3), padding="bad")


def test_meta_tensors_infer_shapes_without_kernels():
    x = torch.empty(2, 3, 9, 8, device="meta")
    w = torch.empty(4, 3, 3, 2, device="meta")
    assert ct.conv2d(x, w, stride=2, padding=((1, 0), (0, 2))).shape == (2, 4, 4, 5)
    assert ct.conv_transpose2d(x, torch.empty(3, 5, 3, 3, device="meta"),
                               stride=2).shape == (2, 5, 19, 17)
    y, idx = ct.max_pool2d(x, 3, 2, 1, ceil_mode=True, return_indices=True)
    assert y.shape == idx.shape == (2, 3, 5, 5) and idx.dtype == torch.int64
    assert ct.avg_pool2d(x, 2, ceil_mode=True).shape == (2, 3, 5, 4)
    with pytest.raises(ValueError, match="groups"):  # cnnfast.params validates
        ct.conv2d(x, w, groups=2)


# ----------------------------------------------------------------------------- opcheck


def _opcheck_cases():
    gen = torch.Generator().manual_seed(9)
    d = torch.float64

    def t(*shape, grad=True):
        return torch.randn(shape, dtype=d, generator=gen).requires_grad_(grad)

    x2, x1, x3 = t(2, 4, 7, 6), t(2, 4, 9), t(1, 2, 4, 5, 4)
    conv_args = (x2, t(6, 2, 3, 3), t(6), [2, 1], [1, 0, 0, 1], [1, 2], 2)
    y = O.conv_op(*conv_args)
    conv1_args = (x1, t(3, 4, 2), None, [1], [1, 0], [2], 1)
    ct_args = (x2, t(4, 3, 3, 2), t(6), [2, 1], [1, 0, 0, 1], [1, 0], 2, [1, 1])
    yt = O.conv_transpose_op(*ct_args)
    ct3_args = (x3, t(2, 3, 2, 2, 2), None, [2, 2, 1], [0, 0, 1, 0, 0, 1], [0, 1, 0], 1,
                [1, 1, 2])
    pool = ([3, 2], [2, 1], [1, 1, 0, 1], [1, 2], True)
    yp, idx = O.max_pool_with_indices_op(x2, *pool)
    avg = ([3, 2], [2, 1], [1, 1, 0, 1], True, False, None, [1, 1])
    avg3 = ([2, 2, 3], [2, 1, 2], [1, 0, 0, 1, 1, 1], False, True, 5, [1, 1, 1])
    ya = O.avg_pool_op(x2, *avg)
    gy = lambda s: torch.randn(s, dtype=d, generator=gen)  # noqa: E731
    x2d, wd = x2.detach(), conv_args[1].detach()
    return {
        "conv": (O.conv_op, conv_args),
        "conv-1d-no-bias": (O.conv_op, conv1_args),
        "conv_backward": (O.conv_backward_op,
                          (gy(y.shape), x2d, wd, [2, 1], [1, 0, 0, 1], [1, 2], 2,
                           [True, False, True])),
        "conv_transpose": (O.conv_transpose_op, ct_args),
        "conv_transpose-3d": (O.conv_transpose_op, ct3_args),
        "conv_transpose_backward": (O.conv_transpose_backward_op,
                                    (gy(yt.shape), x2d, ct_args[1].detach(), [2, 1],
                                     [1, 0, 0, 1], [1, 0], 2, [1, 1], [True, True, True])),
        "max_pool": (O.max_pool_op, (x2,) + pool),
        "max_pool_with_indices": (O.max_pool_with_indices_op, (x3, [2, 2, 2], [2, 2, 2],
                                                               [0] * 6, [1, 1, 1], True)),
        "max_pool_backward": (O.max_pool_backward_op, (gy(yp.shape), idx, list(x2.shape))),
        "avg_pool": (O.avg_pool_op, (x2,) + avg),
        "avg_pool-3d-divisor": (O.avg_pool_op, (x3,) + avg3),
        "avg_pool_backward": (O.avg_pool_backward_op, (gy(ya.shape), list(x2.shape)) + avg),
    }


OPCHECK_CASES = _opcheck_cases()


@pytest.mark.parametrize("name", list(OPCHECK_CASES))
def test_opcheck(name):
    op, args = OPCHECK_CASES[name]
    torch.library.opcheck(op, args)


def test_every_operator_is_opchecked():
    checked = {op for op, _ in OPCHECK_CASES.values()}
    assert checked == set(O.OPERATORS)
    names = {op._qualname for op in O.OPERATORS}
    assert all(n.startswith("cnnfast::") for n in names)
    assert hasattr(torch.ops.cnnfast, "conv") and hasattr(torch.ops.cnnfast, "avg_pool")


# ----------------------------------------------------------------------------- compile


def _compile_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3, padding="same"), torch.nn.ReLU(),
        torch.nn.MaxPool2d(2, ceil_mode=True),
        torch.nn.ConvTranspose2d(4, 3, 2, stride=2),
        torch.nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False),
        torch.nn.Flatten(), torch.nn.LazyLinear(5))
    model(torch.randn(2, 2, 9, 9))  # materialise the lazy layer
    return ct.replace(model)


def _train_step(model):
    def step(x):
        return model(x).square().sum()
    return step


def _grads(model, step, x):
    for p in model.parameters():
        p.grad = None
    loss = step(x)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_compile_fullgraph_aot_eager(dynamic):
    # aot_eager: dynamo (fullgraph=True fails on any graph break) and AOT autograd
    # (the forward and backward graphs through the fake implementations), without
    # inductor's C++ code generation, which takes ~40 s on a 2-core machine (the
    # inductor test below is marked slow).
    torch._dynamo.reset()
    model = _compile_model()
    step = _train_step(model)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager", dynamic=dynamic)
    for n in (2, 3):
        x = torch.randn(n, 2, 9, 9)
        loss, grads = _grads(model, compiled, x)
        loss_ref, grads_ref = _grads(model, step, x)
        assert torch.equal(loss, loss_ref)
        for g, g_ref in zip(grads, grads_ref):
            assert torch.equal(g, g_ref)


def test_compile_graph_holds_the_cnnfast_operators():
    torch._dynamo.reset()
    seen = []

    def backend(gm, example_inputs):
        seen.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm

    model = _compile_model()
    torch.compile(model, fullgraph=True, backend=backend)(torch.randn(2, 2, 9, 9))
    ops = " ".join(seen)
    for name in ("cnnfast.conv", "cnnfast.max_pool", "cnnfast.conv_transpose",
                 "cnnfast.avg_pool"):
        assert name in ops, (name, seen)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated")  # inductor's
def test_compile_fullgraph_inductor():
    torch._dynamo.reset()
    model = _compile_model()
    step = _train_step(model)
    compiled = torch.compile(step, fullgraph=True)
    x = torch.randn(2, 2, 9, 9)
    loss, grads = _grads(model, compiled, x)
    loss_ref, grads_ref = _grads(model, step, x)
    assert_close(loss, loss_ref, torch.float32, "loss")
    for g, g_ref in zip(grads, grads_ref):
        assert_close(g, g_ref, torch.float32, "gradient")


# ----------------------------------------------------------------------------- CUDA

_cuda = pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("cupy") is None,
    reason="needs a CUDA device and cupy")


@_cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_matches_torch(dtype):
    gen = torch.Generator().manual_seed(10)
    x = torch.randn(2, 4, 9, 8, dtype=dtype, generator=gen).cuda().requires_grad_()
    w = torch.randn(6, 2, 3, 3, dtype=dtype, generator=gen).cuda().requires_grad_()
    wt = torch.randn(4, 3, 3, 3, dtype=dtype, generator=gen).cuda().requires_grad_()
    b = torch.randn(6, dtype=dtype, generator=gen).cuda().requires_grad_()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):  # work ordered on torch's current (non-default) stream
        check_against_torch(lambda x, w, b: ct.conv2d(x, w, b, 2, 1, 1, 2),
                            lambda x, w, b: F.conv2d(x, w, b, 2, 1, 1, 2), (x, w, b), dtype)
        check_against_torch(lambda x, w: ct.conv_transpose2d(x, w, None, 2, 1, 1),
                            lambda x, w: F.conv_transpose2d(x, w, None, 2, 1, 1), (x, wt),
                            dtype)
        check_against_torch(lambda x: ct.max_pool2d(x, 3, 2, 1, ceil_mode=True),
                            lambda x: F.max_pool2d(x, 3, 2, 1, ceil_mode=True), (x,), dtype)
        check_against_torch(lambda x: ct.avg_pool2d(x, 3, 2, 1, True, False),
                            lambda x: F.avg_pool2d(x, 3, 2, 1, True, False), (x,), dtype)
    torch.cuda.synchronize()
    y = ct.conv2d(x, w, b, 2, 1, 1, 2)
    assert y.device == x.device


@_cuda
def test_cuda_opcheck_and_compile():
    x = torch.randn(2, 4, 7, 6, dtype=torch.float64, device="cuda", requires_grad=True)
    w = torch.randn(6, 2, 3, 3, dtype=torch.float64, device="cuda", requires_grad=True)
    torch.library.opcheck(O.conv_op, (x, w, None, [2, 1], [1, 0, 0, 1], [1, 2], 2))
    torch.library.opcheck(O.max_pool_with_indices_op, (x, [2, 2], [2, 2], [0] * 4, [1, 1],
                                                       True))
    torch._dynamo.reset()
    model = _compile_model().cuda()
    step = _train_step(model)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    xx = torch.randn(2, 2, 9, 9, device="cuda")
    loss, _ = _grads(model, compiled, xx)
    loss_ref, _ = _grads(model, step, xx)
    assert torch.equal(loss, loss_ref)
