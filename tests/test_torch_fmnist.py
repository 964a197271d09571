"""End to end (issue 17): the seed CNN as a torch model, trained with torch's Adam and
cross-entropy, learns the same with ``cnnfast.torch.replace`` as with torch's own
kernels: from the same initial weights on the same batches, the losses follow each
other (float32 rounding only) and the test accuracies agree within the test set's
noise. The full-size claim (60,000 images, one epoch) is
``python benchmarks/torch_fmnist_replace.py`` (README, docs/interop.md)."""

from __future__ import annotations

import os
import sys

import pytest

pytest.importorskip("torch")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))

from torch_fmnist_replace import run  # noqa: E402

SLICE = os.path.join(os.path.dirname(__file__), "data", "fashion-mnist-slice")


def test_replace_trains_like_torch():
    r = run(SLICE, epochs=3, variant="all", threads=2)
    native, swapped = r["models"].values()
    # 24 Adam steps on 512 images: well above chance (10%) for both
    assert native["test_accuracy"][-1] > 0.5 and swapped["test_accuracy"][-1] > 0.5, r
    assert r["accuracy_gap"] <= r["two_standard_errors"], r
    assert abs(native["final_loss"] - swapped["final_loss"]) < 0.02, r
