"""Shared fixtures: every registered backend runs the same tests (Chainer's
``inject_backend_tests`` idea). A backend added to ``cnnfast.registry`` is covered
by registering it; an unavailable one is skipped with the reason."""

from __future__ import annotations

import numpy as np
import pytest

from cnnfast import registry


class BackendUnderTest:
    """A backend name plus the conversions its arrays need."""

    def __init__(self, name):
        self.name = name
        self.array = registry.get_backend(name).array

    def asarray(self, a):
        if a is None or self.array == "numpy":
            return a
        import cupy

        return cupy.asarray(a)

    def numpy(self, a):
        if a is None or isinstance(a, np.ndarray):
            return a
        return a.get()

    def __repr__(self):
        return f"BackendUnderTest({self.name!r})"


def _backend_params():
    return [pytest.param(name, id=name) for name in registry.backend_names()]


@pytest.fixture(params=_backend_params())
def backend(request):
    b = registry.get_backend(request.param)
    if not b.available:
        pytest.skip(f"backend {request.param!r} unavailable: {b.reason}")
    return BackendUnderTest(request.param)


@pytest.fixture
def threads():
    """``cnnfast.set_num_threads``, the count restored after the test."""
    import cnnfast

    before = cnnfast.get_num_threads()
    yield cnnfast.set_num_threads
    cnnfast.set_num_threads(before)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
