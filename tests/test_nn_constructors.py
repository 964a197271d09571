"""cnnfast.nn constructors infer the input size, unlike torch's: a torch-style call
(``Linear(784, 10)``, ``Conv2d(1, 64, 3)``, ``BatchNorm2d(64)``) must be a TypeError
that says so, not a layer with the values in other parameters (issue 19)."""

from __future__ import annotations

import pytest

from cnnfast import nn


@pytest.mark.parametrize("make, match", [
    (lambda: nn.Linear(784, 10), r"Linear\(\) got 1 positional.*torch's Linear\(784, 10\) is Linear\(10\)"),
    (lambda: nn.Dense(128, False), r"input size is inferred"),
    (lambda: nn.Conv2d(1, 64, 3), r"Conv2d\(\) got 1 positional.*Conv2d\(64, 3\) here"),
    (lambda: nn.Conv1d(8, 3, 1, 1), r"got 2 positional.*stride=, padding="),
    (lambda: nn.ConvTranspose2d(1, 8, 4), r"input channels are inferred"),
    (lambda: nn.BatchNorm(64), r"number of features is inferred.*BatchNorm\(\)"),
    (lambda: nn.MaxPool2d(2, 2, 0, 2), r"dilation=, ceil_mode="),
    (lambda: nn.AvgPool2d(3, 1, 1, 1, True), r"got 2 positional"),
])
def test_torch_style_positional_arguments_are_refused(make, match):
    with pytest.raises(TypeError, match=match):
        make()


def test_the_documented_forms_still_work():
    assert nn.Linear(10, use_bias=False).out_features == 10
    conv = nn.Conv2d(64, 3, stride=2, padding=1)
    assert (conv.out_channels, conv.kernel_size, conv.stride) == (64, 3, 2)
    assert nn.ConvTranspose2d(8, 4, stride=2, output_padding=1).output_padding == 1
    pool = nn.MaxPool2d(3, 2, 1, ceil_mode=True)  # torch's positional order
    assert (pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode) == (3, 2, 1, True)
    assert nn.BatchNorm(momentum=0.2).momentum == 0.2
    # configs rebuild by keyword
    m = nn.Sequential([conv, nn.ReLU(), pool, nn.Flatten(), nn.Linear(10)],
                      input_shape=(1, 8, 8), seed=0)
    assert nn.Sequential.from_config(m.config()).config() == m.config()
