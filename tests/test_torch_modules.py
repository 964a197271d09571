"""cnnfast.torch.nn modules and cnnfast.torch.replace against torch.nn: the same
constructors, state_dict keys and initialisation; the same outputs and gradients;
replace() swaps in place (same module and parameter objects, same state_dict, same
outputs), only the op families asked for, and reports what it leaves. Skipped when
torch is not installed."""

from __future__ import annotations

import copy
import io
import warnings

import pytest

torch = pytest.importorskip("torch")
tnn = torch.nn

import cnnfast.torch as ct  # noqa: E402
from cnnfast.torch import nn as cnn  # noqa: E402

# (class name, constructor args, kwargs, input shape)
MODULE_CASES = {
    "Conv1d": ((4, 6, 3), dict(stride=2, padding=1), (2, 4, 11)),
    "Conv1d-reflect": ((4, 6, 3), dict(padding=2, padding_mode="reflect"), (2, 4, 11)),
    "Conv2d": ((4, 6, (3, 2)), dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2),
                                    groups=2), (2, 4, 9, 8)),
    "Conv2d-same-circular": ((3, 4, 4), dict(padding="same", padding_mode="circular",
                                             bias=False), (2, 3, 8, 7)),
    "Conv2d-replicate": ((3, 4, 3), dict(padding=(2, 1), padding_mode="replicate"),
                         (2, 3, 6, 7)),
    "Conv3d": ((2, 4, 3), dict(stride=(1, 2, 1), padding=1), (2, 2, 5, 6, 4)),
    "ConvTranspose1d": ((4, 3, 3), dict(stride=2, padding=1, output_padding=1), (2, 4, 5)),
    "ConvTranspose2d": ((4, 6, (3, 2)), dict(stride=(2, 3), padding=(1, 0),
                                             output_padding=(1, 2), groups=2),
                        (2, 4, 4, 5)),
    "ConvTranspose3d": ((2, 3, 2), dict(stride=2, dilation=(1, 2, 1), bias=False),
                        (1, 2, 3, 4, 3)),
    "MaxPool1d": ((3,), dict(stride=2, padding=1, ceil_mode=True), (2, 3, 10)),
    "MaxPool2d": ((2,), {}, (2, 3, 10, 10)),
    "MaxPool2d-dilated": (((3, 2),), dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2),
                                          ceil_mode=True), (2, 3, 9, 8)),
    "MaxPool3d": ((2,), dict(ceil_mode=True), (2, 2, 5, 7, 6)),
    "AvgPool1d": ((3,), dict(stride=2, padding=1, ceil_mode=True, count_include_pad=False),
                  (2, 3, 10)),
    "AvgPool2d": ((3,), dict(stride=2, padding=1, ceil_mode=True), (2, 3, 8, 9)),
    "AvgPool2d-divisor": ((3,), dict(stride=2, padding=1, divisor_override=4), (2, 3, 7, 7)),
    "AvgPool3d": ((2,), dict(stride=2, padding=1, count_include_pad=False),
                  (1, 2, 5, 6, 7)),
}


def _classes(case):
    name = case.split("-")[0]
    return getattr(tnn, name), getattr(cnn, name)


def _pair(case, dtype=torch.float64):
    """(torch module, cnnfast module), built from the same seed."""
    args, kwargs, _ = MODULE_CASES[case]
    theirs_cls, ours_cls = _classes(case)
    torch.manual_seed(0)
    theirs = theirs_cls(*args, **kwargs, dtype=dtype) if "Conv" in case \
        else theirs_cls(*args, **kwargs)
    torch.manual_seed(0)
    ours = ours_cls(*args, **kwargs, dtype=dtype) if "Conv" in case \
        else ours_cls(*args, **kwargs)
    return theirs, ours


def _max_err(a, b):
    return (a - b).abs().max().item() if a.numel() else 0.0


@pytest.mark.parametrize("case", list(MODULE_CASES))
def test_module_mirrors_torch(case):
    theirs, ours = _pair(case)
    assert isinstance(ours, type(theirs))
    # same state_dict: keys, shapes, and values (the same initialisation)
    sd, sd_ref = ours.state_dict(), theirs.state_dict()
    assert list(sd) == list(sd_ref)
    for key in sd:
        assert torch.equal(sd[key], sd_ref[key]), key
    assert ours.extra_repr() == theirs.extra_repr()
    # same output and gradients
    shape = MODULE_CASES[case][2]
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1),
                    requires_grad=True)
    y, y_ref = ours(x), theirs(x)
    assert y.shape == y_ref.shape
    assert _max_err(y, y_ref) <= 1e-10
    g = torch.randn(y_ref.shape, dtype=torch.float64)
    wrt = [x] + list(ours.parameters())
    wrt_ref = [x] + list(theirs.parameters())
    for a, b in zip(torch.autograd.grad(y, wrt, g), torch.autograd.grad(y_ref, wrt_ref, g)):
        assert _max_err(a, b) <= 1e-10
    # a torch state_dict loads into the cnnfast module and back
    ours.load_state_dict(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())


def test_constructors_match_torch_signatures():
    import inspect

    for table in cnn.FAMILIES.values():
        for theirs, ours in table.items():
            assert ours.__name__ == theirs.__name__
            assert issubclass(ours, theirs)
            assert inspect.signature(ours.__init__) == inspect.signature(theirs.__init__)


def test_max_pool_return_indices_and_unpool():
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    y, idx = cnn.MaxPool2d(2, return_indices=True)(x)
    y_ref, idx_ref = tnn.MaxPool2d(2, return_indices=True)(x)
    assert torch.equal(y, y_ref) and torch.equal(idx, idx_ref)
    assert torch.equal(tnn.MaxUnpool2d(2)(y, idx), tnn.MaxUnpool2d(2)(y_ref, idx_ref))


def test_conv_transpose_output_size():
    torch.manual_seed(0)
    theirs = tnn.ConvTranspose2d(3, 2, 3, stride=2, padding=1, dtype=torch.float64)
    ours = cnn.ConvTranspose2d(3, 2, 3, stride=2, padding=1, dtype=torch.float64)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(1, 3, 5, 5, dtype=torch.float64)
    for size in ([10, 10], [9, 10], (1, 2, 10, 9)):
        y, y_ref = ours(x, output_size=size), theirs(x, output_size=size)
        assert y.shape == y_ref.shape and _max_err(y, y_ref) <= 1e-12
    with pytest.raises(ValueError, match="output size"):
        ours(x, output_size=[12, 12])


def test_unbatched_input():
    theirs, ours = _pair("Conv2d-replicate")
    x = torch.randn(3, 6, 7, dtype=torch.float64)
    assert _max_err(ours(x), theirs(x)) <= 1e-12
    x = torch.randn(3, 10, 10, dtype=torch.float64)
    assert torch.equal(cnn.MaxPool2d(2)(x), tnn.MaxPool2d(2)(x))


def test_unsupported_dtype_falls_back_to_torch_with_a_warning():
    torch.manual_seed(0)
    ours = cnn.Conv2d(2, 3, 3, dtype=torch.bfloat16)
    theirs = tnn.Conv2d(2, 3, 3, dtype=torch.bfloat16)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(1, 2, 6, 6, dtype=torch.bfloat16)
    cnn._warned.clear()
    with pytest.warns(ct.CnnfastFallbackWarning, match="bfloat16"):
        y = ours(x)
    assert torch.equal(y, theirs(x))


def test_repr_says_cnnfast():
    assert repr(cnn.Conv2d(1, 2, 3)).startswith("cnnfast.Conv2d(1, 2, kernel_size=(3, 3)")
    assert repr(cnn.MaxPool2d(2)).startswith("cnnfast.MaxPool2d(kernel_size=2")


# ----------------------------------------------------------------------------- replace


class Block(tnn.Module):
    def __init__(self):
        super().__init__()
        self.conv = tnn.Conv2d(4, 4, 3, padding=1)
        self.bn = tnn.BatchNorm2d(4)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)) + x)


class MyConv(tnn.Conv2d):
    def forward(self, x):
        return super().forward(x) * 2


def _model():
    torch.manual_seed(0)
    return tnn.Sequential(
        tnn.Conv2d(1, 4, 3, padding=1), tnn.ReLU(), Block(), tnn.MaxPool2d(2),
        tnn.ConvTranspose2d(4, 4, 2, stride=2), tnn.AvgPool2d(2),
        tnn.Sequential(tnn.Identity()),
        tnn.Flatten(), tnn.Linear(4 * 4 * 4, 3)).double()


def test_replace_keeps_state_and_outputs():
    model = _model()
    model.eval()
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    y_ref = model(x)
    g_ref = torch.autograd.grad(y_ref.sum(), [x] + list(model.parameters()))
    sd_ref = {k: v.clone() for k, v in model.state_dict().items()}
    modules_ref = dict(model.named_modules())
    params_ref = dict(model.named_parameters())
    ptrs_ref = {k: v.data_ptr() for k, v in model.state_dict().items()}

    assert ct.replace(model) is model
    # in place: the same module and parameter objects, the same storage
    assert all(m is modules_ref[n] for n, m in model.named_modules())
    assert all(p is params_ref[n] for n, p in model.named_parameters())
    assert {k: v.data_ptr() for k, v in model.state_dict().items()} == ptrs_ref
    sd = model.state_dict()
    assert list(sd) == list(sd_ref)
    assert all(torch.equal(sd[k], sd_ref[k]) for k in sd)
    kinds = {n: type(m) for n, m in model.named_modules()}
    assert kinds["0"] is cnn.Conv2d and kinds["2.conv"] is cnn.Conv2d
    assert kinds["3"] is cnn.MaxPool2d and kinds["4"] is cnn.ConvTranspose2d
    assert kinds["5"] is cnn.AvgPool2d and kinds["2.bn"] is tnn.BatchNorm2d

    y = model(x)
    g = torch.autograd.grad(y.sum(), [x] + list(model.parameters()))
    assert _max_err(y, y_ref) <= 1e-10
    for a, b in zip(g, g_ref):
        assert _max_err(a, b) <= 1e-10

    ct.restore(model)
    assert type(model[0]) is tnn.Conv2d and type(model[3]) is tnn.MaxPool2d
    assert torch.equal(model(x), y_ref)


def test_replace_only_the_families_asked_for():
    model = ct.replace(_model(), ops=("max_pool", "avg_pool"))
    assert type(model[0]) is tnn.Conv2d and type(model[4]) is tnn.ConvTranspose2d
    assert type(model[3]) is cnn.MaxPool2d and type(model[5]) is cnn.AvgPool2d
    model = ct.replace(_model(), ops="conv")
    assert type(model[0]) is cnn.Conv2d and type(model[2].conv) is cnn.Conv2d
    assert type(model[3]) is tnn.MaxPool2d and type(model[4]) is tnn.ConvTranspose2d
    with pytest.raises(ValueError, match="unknown op family 'pool'"):
        ct.replace(_model(), ops=("pool",))


def test_replace_reports_what_it_leaves():
    model = tnn.Sequential(tnn.Conv2d(1, 2, 3), MyConv(2, 2, 3),
                           tnn.Conv2d(2, 2, 3).to(torch.bfloat16), tnn.LazyConv2d(2, 3))
    with pytest.warns(ct.ReplaceWarning) as record:
        ct.replace(model)
    message = str(record[0].message)
    assert "1 (MyConv): a subclass of torch.nn.Conv2d" in message
    assert "2 (Conv2d): cnnfast has no kernels for its weight: torch.bfloat16" in message
    assert "3 (LazyConv2d)" in message
    assert type(model[0]) is cnn.Conv2d
    assert type(model[1]) is MyConv and type(model[2]) is tnn.Conv2d
    # a second replace() is silent about the modules already swapped
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ct.replace(tnn.Sequential(model[0]))


def test_replace_the_model_itself_and_train_with_an_existing_optimizer():
    torch.manual_seed(0)
    conv = tnn.Conv2d(2, 3, 3)
    reference = copy.deepcopy(conv)
    opt = torch.optim.Adam(conv.parameters(), lr=0.1)
    opt_ref = torch.optim.Adam(reference.parameters(), lr=0.1)
    assert ct.replace(conv) is conv and type(conv) is cnn.Conv2d
    x = torch.randn(4, 2, 7, 7)
    for _ in range(3):
        for m, o in ((conv, opt), (reference, opt_ref)):
            o.zero_grad()
            m(x).square().mean().backward()
            o.step()
    assert (conv.weight - reference.weight).abs().max().item() < 1e-5


def test_replaced_model_pickles_and_copies():
    model = ct.replace(_model())
    clone = copy.deepcopy(model)
    assert type(clone[0]) is cnn.Conv2d
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    x = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    model.eval(), loaded.eval()
    assert torch.equal(loaded(x), model(x))


def test_export_holds_the_cnnfast_operators():
    model = ct.replace(tnn.Sequential(tnn.Conv2d(1, 4, 3), tnn.ReLU(), tnn.MaxPool2d(2),
                                      tnn.AvgPool2d(2), tnn.ConvTranspose2d(4, 2, 2, 2)))
    x = torch.randn(2, 1, 12, 12)
    exported = torch.export.export(model, (x,))
    code = exported.graph_module.code
    for name in ("cnnfast.conv.", "cnnfast.max_pool", "cnnfast.avg_pool.",
                 "cnnfast.conv_transpose."):
        assert "torch.ops." + name in code, name
    assert torch.equal(exported.module()(x), model(x))
