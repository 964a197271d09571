"""model.summary(): Keras-like layer table with parameter totals."""

from __future__ import annotations

from cnnfast import nn
from cnnfast.nn.training import cnn_model, dense_model


def _issue_model():
    return nn.Sequential([
        nn.Conv2d(16, 3, stride=2, padding="same"), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dense(512), nn.ReLU(), nn.Dense(26),
    ], input_shape=(1, 128, 128), seed=0)


def test_summary_counts_from_the_issue():
    model = _issue_model()
    rows = model.summary_rows()
    assert [r[3] for r in rows] == [160, 0, 0, 0, 8_389_120, 0, 13_338]
    assert [r[2] for r in rows] == [(None, 16, 64, 64), (None, 16, 64, 64),
                                    (None, 16, 32, 32), (None, 16384), (None, 512),
                                    (None, 512), (None, 26)]
    text = model.summary(print_fn=None)
    for s in ("conv2d (Conv2d)", "(None, 16, 64, 64)", "8,389,120", "13,338",
              "Total params: 8,402,618", "Trainable params: 8,402,618",
              "Non-trainable params: 0"):
        assert s in text, s


def test_summary_frozen_and_buffers(capsys):
    model = nn.Sequential([nn.Conv2d(4, 3), nn.BatchNorm(), nn.Flatten(), nn.Dense(2)],
                          input_shape=(1, 6, 6))
    model.freeze(1)
    model.summary()
    out = capsys.readouterr().out
    # conv 40 (frozen), batchnorm 8 trainable + 8 running stats, dense 64 * 2 + 2
    assert "Total params: 186" in out
    assert "Trainable params: 138" in out
    assert "Non-trainable params: 48" in out
    assert "[frozen]" in out and "(None, 4, 4, 4)" in out


def test_builtin_models():
    assert cnn_model().param_count() == 640 + 36_928 + 204_928 + 1_290
    assert dense_model().param_count() == 100_480 + 1_290
