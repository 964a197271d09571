"""The numba kernels a backend call launches, by name: the backend's ``_launch``
wrapped for the test's duration (monkeypatch restores it)."""

from __future__ import annotations


def record_launches(monkeypatch) -> list:
    """A list that fills with the ``__name__`` of each kernel the numba backend
    launches from now on in this test."""
    from cnnfast.backends.numba import backend as nb

    seen = []
    launch = nb._launch

    def spy(kernel, *args):
        seen.append(getattr(kernel, "__name__", ""))
        return launch(kernel, *args)

    monkeypatch.setattr(nb, "_launch", spy)
    return seen
