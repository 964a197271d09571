"""Invalid calls: each raises the right error type, the message names the argument,
and no input is modified. Run through every backend (validation is the dispatcher's,
so every backend must see the same errors before any kernel runs)."""

from __future__ import annotations

import numpy as np
import pytest

import cnnfast


def _arrays():
    rng = np.random.default_rng(0)
    return {
        "x": rng.standard_normal((2, 4, 8, 8)),
        "w": rng.standard_normal((6, 4, 3, 3)),
        "wt": rng.standard_normal((4, 3, 3, 3)),
        "b": rng.standard_normal(6),
        "gy": rng.standard_normal((2, 6, 6, 6)),
        "x32": rng.standard_normal((2, 4, 8, 8)).astype(np.float32),
        "idx": np.zeros((2, 4, 4, 4), np.int64),
        "gp": rng.standard_normal((2, 4, 4, 4)),
    }


# (id, error type, words the message must contain, call)
BAD = [
    ("conv-rank-too-low", ValueError, ["x", "spatial"],
     lambda a, be: cnnfast.conv(a["x"][0, 0], a["w"], backend=be)),
    ("conv2d-alias-rank", ValueError, ["x", "2 spatial"],
     lambda a, be: cnnfast.conv2d(a["x"][..., 0], a["w"][..., 0], backend=be)),
    ("conv-weight-rank", ValueError, ["weight"],
     lambda a, be: cnnfast.conv(a["x"], a["w"][..., 0], backend=be)),
    ("conv-channels-mismatch", ValueError, ["weight.shape[1]", "input channels"],
     lambda a, be: cnnfast.conv(a["x"], a["w"][:, :3], backend=be)),
    ("conv-groups-not-dividing", ValueError, ["groups=3"],
     lambda a, be: cnnfast.conv(a["x"], a["w"], groups=3, backend=be)),
    ("conv-groups-zero", ValueError, ["groups"],
     lambda a, be: cnnfast.conv(a["x"], a["w"], groups=0, backend=be)),
    ("conv-kernel-larger-than-input", ValueError, ["larger than the padded input"],
     lambda a, be: cnnfast.conv(a["x"][..., :2, :2], a["w"], backend=be)),
    ("conv-stride-zero", ValueError, ["stride"],
     lambda a, be: cnnfast.conv(a["x"], a["w"], stride=0, backend=be)),
    ("conv-stride-wrong-length", ValueError, ["stride"],
     lambda a, be: cnnfast.conv(a["x"], a["w"], stride=(1, 1, 1), backend=be)),
    ("conv-stride-float", TypeError, ["stride"],
     lambda a, be: cnnfast.conv(a["x"], a["w"], stride=1.5, backend=be)),
    ("conv-dilation-negative", ValueError, ["dilation"],
     lambda a, be: cnnfast.conv(a["x"], a["w"], dilation=-1, backend=be)),
    ("conv-padding-negative", ValueError, ["padding"],
     lambda a, be: cnnfast.conv(a["x"], a["w"], padding=-1, backend=be)),
    ("conv-padding-bad-pair", TypeError, ["padding"],
     lambda a, be: cnnfast.conv(a["x"], a["w"], padding=((1, 2, 3), 1), backend=be)),
    ("conv-padding-unknown-string", ValueError, ["padding", "same"],
     lambda a, be: cnnfast.conv(a["x"], a["w"], padding="full", backend=be)),
    ("conv-same-with-stride", ValueError, ["same", "stride"],
     lambda a, be: cnnfast.conv(a["x"], a["w"], padding="same", stride=2, backend=be)),
    ("conv-mixed-dtypes", TypeError, ["dtype", "mixed"],
     lambda a, be: cnnfast.conv(a["x32"], a["w"], backend=be)),
    ("conv-int-dtype", TypeError, ["dtype", "float32"],
     lambda a, be: cnnfast.conv(a["x"].astype(np.int32), a["w"].astype(np.int32), backend=be)),
    ("conv-list-input", TypeError, ["x", "array"],
     lambda a, be: cnnfast.conv(a["x"].tolist(), a["w"], backend=be)),
    ("conv-bias-shape", ValueError, ["bias"],
     lambda a, be: cnnfast.conv(a["x"], a["w"], a["b"][:5], backend=be)),
    ("conv-unknown-backend", ValueError, ["backend", "unknown"],
     lambda a, be: cnnfast.conv(a["x"], a["w"], backend="fortran")),
    ("conv-backward-grad-shape", ValueError, ["grad_y"],
     lambda a, be: cnnfast.conv_backward(a["gy"][..., :5], a["x"], a["w"], backend=be)),
    ("conv-backward-unknown-need", ValueError, ["needs", "'input'"],
     lambda a, be: cnnfast.conv_backward(a["gy"], a["x"], a["w"], needs=("input",),
                                         backend=be)),
    ("convt-output-padding-too-big", ValueError, ["output_padding"],
     lambda a, be: cnnfast.conv_transpose(a["x"], a["wt"], stride=2, output_padding=2,
                                          backend=be)),
    ("convt-weight-channels", ValueError, ["weight.shape[0]"],
     lambda a, be: cnnfast.conv_transpose(a["x"], a["w"], backend=be)),
    ("convt-padding-crops-everything", ValueError, ["padding"],
     lambda a, be: cnnfast.conv_transpose(a["x"][..., :1, :1], a["wt"], padding=2,
                                          backend=be)),
    ("maxpool-kernel-zero", ValueError, ["kernel_size"],
     lambda a, be: cnnfast.max_pool(a["x"], 0, backend=be)),
    ("maxpool-window-in-padding", ValueError, ["padding", "wholly in the padding"],
     lambda a, be: cnnfast.max_pool(a["x"], 2, 1, 3, backend=be)),
    ("maxpool-padding-string", ValueError, ["padding"],
     lambda a, be: cnnfast.max_pool(a["x"], 2, padding="same", backend=be)),
    ("maxpool-kernel-too-big", ValueError, ["kernel_size"],
     lambda a, be: cnnfast.max_pool(a["x"], 9, backend=be)),
    ("maxpool-return-indices-type", TypeError, ["return_indices"],
     lambda a, be: cnnfast.max_pool(a["x"], 2, return_indices="yes", backend=be)),
    ("maxpool-backward-index-dtype", TypeError, ["indices", "int64"],
     lambda a, be: cnnfast.max_pool_backward(a["gp"], a["idx"].astype(np.int32),
                                             a["x"].shape, backend=be)),
    ("maxpool-backward-index-range", ValueError, ["indices"],
     lambda a, be: cnnfast.max_pool_backward(a["gp"], a["idx"] + 64, a["x"].shape,
                                             backend=be)),
    ("maxpool-backward-shape-mismatch", ValueError, ["indices", "grad_y"],
     lambda a, be: cnnfast.max_pool_backward(a["gp"], a["idx"][..., :3], a["x"].shape,
                                             backend=be)),
    ("maxpool-backward-x-shape-type", TypeError, ["x_shape"],
     lambda a, be: cnnfast.max_pool_backward(a["gp"], a["idx"], "2,4,8,8", backend=be)),
    ("avgpool-divisor-zero", ValueError, ["divisor_override"],
     lambda a, be: cnnfast.avg_pool(a["x"], 2, divisor_override=0, backend=be)),
    ("avgpool-divisor-float", TypeError, ["divisor_override"],
     lambda a, be: cnnfast.avg_pool(a["x"], 2, divisor_override=2.5, backend=be)),
    ("avgpool-backward-grad-shape", ValueError, ["grad_y"],
     lambda a, be: cnnfast.avg_pool_backward(a["gp"][..., :3], a["x"].shape, 2, backend=be)),
    ("avgpool-ceil-mode-type", TypeError, ["ceil_mode"],
     lambda a, be: cnnfast.avg_pool(a["x"], 2, ceil_mode="yes", backend=be)),
    # Integers past the kernels' 32-bit indexing (params.INDEX_LIMIT): a ValueError from
    # validation on every backend, never an OverflowError or a pybind TypeError.
    ("conv-stride-2**31", ValueError, ["stride=2147483648", "2**31"],
     lambda a, be: cnnfast.conv(a["x"], a["w"], stride=2 ** 31, backend=be)),
    ("conv-stride-numpy-int", ValueError, ["stride", "2**31"],
     lambda a, be: cnnfast.conv(a["x"], a["w"], stride=(1, np.int64(2 ** 40)), backend=be)),
    ("conv-stride-2**63", ValueError, ["stride", "2**31"],
     lambda a, be: cnnfast.conv(a["x"], a["w"], stride=2 ** 63, backend=be)),
    ("conv-dilation-2**31", ValueError, ["dilation", "2**31"],
     lambda a, be: cnnfast.conv(a["x"], a["w"], dilation=2 ** 31, backend=be)),
    ("conv-padding-2**31", ValueError, ["padding", "2**31"],
     lambda a, be: cnnfast.conv(a["x"], a["w"], padding=((0, 2 ** 31), 0), backend=be)),
    ("conv-padded-extent", ValueError, ["padding", "2**31", "spatial dim 0"],
     lambda a, be: cnnfast.conv(a["x"], a["w"], padding=(2 ** 30, 0), stride=2 ** 30,
                                backend=be)),
    ("conv-groups-2**31", ValueError, ["groups", "2**31"],
     lambda a, be: cnnfast.conv(a["x"], a["w"], groups=np.uint64(2 ** 63), backend=be)),
    ("conv-output-too-large", ValueError, ["output", "2**60"],
     lambda a, be: cnnfast.conv(a["x"][:1, :1, :1, :1, None], a["w"][:1, :1, :1, :1, None],
                                padding=2 ** 30 - 1, backend=be)),
    ("convt-stride-2**31", ValueError, ["stride", "2**31"],
     lambda a, be: cnnfast.conv_transpose(a["x"], a["wt"], stride=2 ** 31, backend=be)),
    ("convt-output-padding-2**31", ValueError, ["output_padding", "2**31"],
     lambda a, be: cnnfast.conv_transpose(a["x"], a["wt"], stride=2 ** 31 - 1,
                                          output_padding=2 ** 31, backend=be)),
    ("convt-uncropped-extent", ValueError, ["uncropped output", "stride", "2**31"],
     lambda a, be: cnnfast.conv_transpose(a["x"], a["wt"], stride=2 ** 30,
                                          padding=2 ** 31 - 1, backend=be)),
    ("convt-backward-stride-2**31", ValueError, ["stride", "2**31"],
     lambda a, be: cnnfast.conv_transpose_backward(a["gy"], a["x"], a["wt"], stride=2 ** 31,
                                                   backend=be)),
    ("conv-backward-padding-2**31", ValueError, ["padding", "2**31"],
     lambda a, be: cnnfast.conv_backward(a["gy"], a["x"], a["w"], padding=2 ** 31,
                                         backend=be)),
    ("maxpool-kernel-2**31", ValueError, ["kernel_size", "2**31"],
     lambda a, be: cnnfast.max_pool(a["x"], 2 ** 31, backend=be)),
    ("maxpool-stride-numpy-2**63", ValueError, ["stride", "2**31"],
     lambda a, be: cnnfast.max_pool(a["x"], 2, np.uint64(2 ** 63), backend=be)),
    ("maxpool-dilation-2**31", ValueError, ["dilation", "2**31"],
     lambda a, be: cnnfast.max_pool(a["x"], 1, dilation=2 ** 31, backend=be)),
    ("maxpool-padded-extent", ValueError, ["padding", "span", "2**31"],
     lambda a, be: cnnfast.max_pool(a["x"], 2 ** 30, 1, 2 ** 30, backend=be)),
    ("maxpool-backward-x-shape-2**31", ValueError, ["x_shape", "2**31"],
     lambda a, be: cnnfast.max_pool_backward(a["gp"], a["idx"], (2, 4, 8, 2 ** 31),
                                             backend=be)),
    ("avgpool-divisor-2**31", ValueError, ["divisor_override", "2**31"],
     lambda a, be: cnnfast.avg_pool(a["x"], 2, divisor_override=2 ** 31, backend=be)),
    ("avgpool-divisor-numpy-int", ValueError, ["divisor_override", "2**31"],
     lambda a, be: cnnfast.avg_pool(a["x"], 2, divisor_override=np.int64(2 ** 40),
                                    backend=be)),
    ("avgpool-backward-kernel-2**31", ValueError, ["kernel_size", "2**31"],
     lambda a, be: cnnfast.avg_pool_backward(a["gp"], a["x"].shape, 2 ** 31, backend=be)),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input(backend, case):
    _, error, words, call = case
    arrays = _arrays()
    before = {k: v.copy() for k, v in arrays.items()}
    with pytest.raises(error) as info:
        call(arrays, backend.name)
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    for k in arrays:
        np.testing.assert_array_equal(arrays[k], before[k])


def test_enough_bad_inputs():
    assert len(BAD) >= 25


def test_numpy_array_to_cupy_backend_is_refused():
    # The registry knows the cupy backend's array kind even where CuPy is missing:
    # with CuPy present, a numpy array must be refused (no silent transfer).
    from cnnfast import registry

    b = registry.get_backend("cupy")
    x = np.zeros((1, 1, 4, 4))
    w = np.zeros((1, 1, 3, 3))
    if b.available:
        with pytest.raises(TypeError, match="no silent transfer"):
            cnnfast.conv(x, w, backend="cupy")
    else:
        with pytest.raises(cnnfast.BackendUnavailable, match="unavailable"):
            cnnfast.conv(x, w, backend="cupy")
