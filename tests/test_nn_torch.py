"""A full training step of cnnfast.nn against PyTorch: same weights, same batch ->
same loss, same gradients, same weights after the optimizer step. Skipped when
torch is not installed."""

from __future__ import annotations

import numpy as np
import pytest

from cnnfast import nn

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _pair(layer):
    w = torch.tensor(layer.params["weight"], requires_grad=True)
    b = torch.tensor(layer.params["bias"], requires_grad=True) if "bias" in layer.params \
        else None
    return w, b


def _torch_forward(model, x):
    """The cnnfast model's computation written with torch.nn.functional."""
    tensors = {}
    h = torch.tensor(x)
    for layer in model.layers:
        if isinstance(layer, nn.Conv2d):
            w, b = tensors[layer.name] = _pair(layer)
            pads = layer._pads
            h = F.pad(h, (pads[1][0], pads[1][1], pads[0][0], pads[0][1]))
            h = F.conv2d(h, w, b, stride=layer.stride, dilation=layer.dilation,
                         groups=layer.groups)
        elif isinstance(layer, nn.ConvTranspose2d):
            w, b = tensors[layer.name] = _pair(layer)
            h = F.conv_transpose2d(h, w, b, stride=layer.stride, padding=layer.padding,
                                   output_padding=layer.output_padding)
        elif isinstance(layer, nn.Linear):
            w, b = tensors[layer.name] = _pair(layer)
            h = F.linear(h, w, b)
        elif isinstance(layer, nn.BatchNorm):
            w, b = tensors[layer.name] = _pair(layer)
            rm = torch.tensor(layer.buffers["running_mean"])
            rv = torch.tensor(layer.buffers["running_var"])
            tensors[layer.name + ".buffers"] = (rm, rv)
            h = F.batch_norm(h, rm, rv, w, b, training=True, momentum=layer.momentum,
                             eps=layer.eps)
        elif isinstance(layer, nn.MaxPool2d):
            h = F.max_pool2d(h, layer.kernel_size, layer.stride)
        elif isinstance(layer, nn.AvgPool2d):
            h = F.avg_pool2d(h, layer.kernel_size, layer.stride)
        elif isinstance(layer, nn.ReLU):
            h = F.relu(h)
        elif isinstance(layer, nn.LeakyReLU):
            h = F.leaky_relu(h, layer.negative_slope)
        elif isinstance(layer, nn.Tanh):
            h = torch.tanh(h)
        elif isinstance(layer, nn.Sigmoid):
            h = torch.sigmoid(h)
        elif isinstance(layer, nn.Flatten):
            h = h.flatten(1)
        elif isinstance(layer, nn.GlobalAvgPool):
            h = h.mean(dim=(2, 3))
        else:
            raise AssertionError(f"no torch twin for {layer}")
    return h, tensors


def _model(dtype):
    return nn.Sequential([
        nn.Conv2d(6, 3, padding="same"), nn.BatchNorm(), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 3, stride=2, padding="same"), nn.LeakyReLU(0.1),
        nn.ConvTranspose2d(4, 3, stride=2, padding=1, output_padding=1), nn.Tanh(),
        nn.AvgPool2d(2), nn.Conv2d(8, 3), nn.Sigmoid(), nn.Flatten(), nn.Dense(16),
        nn.ReLU(), nn.Dense(10),
    ], input_shape=(1, 28, 28), seed=3, dtype=dtype, backend="numpy")


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-10), ("float32", 2e-4)])
def test_training_step_matches_torch(dtype, tol):
    model = _model(dtype)
    rng = np.random.default_rng(0)
    x = rng.random((8, 1, 28, 28)).astype(dtype)
    labels = rng.integers(0, 10, 8)

    # torch, from the same initial weights
    logits_t, tensors = _torch_forward(model, x)
    loss_t = F.cross_entropy(logits_t, torch.tensor(labels))
    loss_t.backward()

    logits = model.forward(x, training=True)
    loss, grad = nn.softmax_cross_entropy(logits, labels)
    model.backward(grad)

    np.testing.assert_allclose(logits, logits_t.detach().numpy(), rtol=tol, atol=tol)
    assert loss == pytest.approx(loss_t.item(), rel=tol)
    for layer in model.layers:
        if layer.name not in tensors:
            continue
        w, b = tensors[layer.name]
        scale = float(np.abs(w.grad.numpy()).max()) + 1e-30
        np.testing.assert_allclose(layer.grads["weight"], w.grad.numpy(), rtol=tol,
                                   atol=tol * scale, err_msg=layer.name)
        if b is not None:
            np.testing.assert_allclose(layer.grads["bias"], b.grad.numpy(), rtol=tol,
                                       atol=tol * scale, err_msg=layer.name)
        if isinstance(layer, nn.BatchNorm):
            rm, rv = tensors[layer.name + ".buffers"]
            np.testing.assert_allclose(layer.buffers["running_mean"], rm.numpy(), rtol=tol)
            np.testing.assert_allclose(layer.buffers["running_var"], rv.numpy(), rtol=tol)

    # One Adam step on both sides gives the same weights.
    params = [t for name, pair in tensors.items() if not name.endswith(".buffers")
              for t in pair if t is not None]
    torch.optim.Adam(params, lr=1e-2).step()
    nn.Adam(lr=1e-2).step(model)
    for layer in model.layers:
        if layer.name in tensors:
            w, b = tensors[layer.name]
            np.testing.assert_allclose(layer.params["weight"], w.detach().numpy(),
                                       rtol=tol, atol=tol * 10, err_msg=layer.name)


def test_fashion_cnn_step_matches_torch_sequential():
    """The `cnnfast train --model cnn` network against torch.nn modules."""
    from cnnfast.nn.training import cnn_model

    model = cnn_model(seed=1, dtype="float64", backend="numpy")
    tnet = torch.nn.Sequential(
        torch.nn.Conv2d(1, 64, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(64, 64, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(1600, 128), torch.nn.ReLU(),
        torch.nn.Linear(128, 10)).double()
    ours = [l for l in model.layers if l.params]
    theirs = [m for m in tnet if list(m.parameters())]
    with torch.no_grad():
        for a, b in zip(ours, theirs):
            b.weight.copy_(torch.tensor(a.params["weight"]))
            b.bias.copy_(torch.tensor(a.params["bias"]))
    rng = np.random.default_rng(1)
    x = rng.random((16, 1, 28, 28))
    y = rng.integers(0, 10, 16)
    topt = torch.optim.SGD(tnet.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    opt = nn.SGD(0.1, momentum=0.9, nesterov=True)
    for _ in range(2):
        topt.zero_grad()
        loss_t = F.cross_entropy(tnet(torch.tensor(x)), torch.tensor(y))
        loss_t.backward()
        topt.step()
        loss, g = nn.softmax_cross_entropy(model.forward(x, training=True), y)
        model.backward(g)
        assert loss == pytest.approx(loss_t.item(), rel=1e-10)
        for a, b in zip(ours, theirs):
            np.testing.assert_allclose(a.grads["weight"], b.weight.grad.numpy(), rtol=1e-9,
                                       atol=1e-12)
        opt.step(model)
        for a, b in zip(ours, theirs):
            np.testing.assert_allclose(a.params["weight"], b.weight.detach().numpy(),
                                       rtol=1e-9, atol=1e-12)
