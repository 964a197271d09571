"""The examples in the public docstrings and in docs/API.md run as doctests.

Every module listed here must carry at least one example (``attempted > 0``), so that a
docstring whose example is deleted or mistyped out of doctest form fails here too.
README.md's examples run in tests/test_readme.py (its ``explain`` lines name the
machine's SIMD level and thread count, which that test matches loosely).
"""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

from cnnfast import autotune, fpmode, registry, threads

ROOT = Path(__file__).resolve().parent.parent
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE

MODULES = [
    "cnnfast.api",
    "cnnfast.autotune",
    "cnnfast.fpmode",
    "cnnfast.registry",
    "cnnfast.threads",
    "cnnfast.augment",
    "cnnfast.nn",
    "cnnfast.nn.base",
    "cnnfast.nn.checkpoint",
    "cnnfast.nn.checkpoint_file",
    "cnnfast.nn.data",
    "cnnfast.nn.encdec",
    "cnnfast.nn.init",
    "cnnfast.nn.interchange",
    "cnnfast.nn.layers.activation",
    "cnnfast.nn.layers.conv",
    "cnnfast.nn.layers.dense",
    "cnnfast.nn.layers.dropout",
    "cnnfast.nn.layers.norm",
    "cnnfast.nn.layers.pool",
    "cnnfast.nn.losses",
    "cnnfast.nn.model",
    "cnnfast.nn.optim",
    "cnnfast.nn.resample",
]

# The process-wide settings the examples change and set back through the public API;
# restored here exactly as they were (set_num_threads(get_num_threads()) would pin a
# count that otherwise follows the environment), also when an example fails.
_SETTINGS = [(threads, "_num_threads"), (registry, "_global_choice"),
             (autotune, "_enabled"), (autotune, "_global_pin"), (fpmode, "_flush")]


@pytest.fixture(autouse=True)
def _restore_settings():
    saved = [(module, attr, getattr(module, attr)) for module, attr in _SETTINGS]
    flush = fpmode.get_flush_denormal()
    yield
    fpmode.set_flush_denormal(flush)
    for module, attr, value in saved:
        setattr(module, attr, value)


@pytest.mark.parametrize("name", MODULES)
def test_module_doctests(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=FLAGS, verbose=False)
    assert result.attempted > 0, f"{name} has no doctest examples"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"


def test_every_layer_class_has_its_own_example():
    """``help(nn.Conv2d)`` shows Conv2d's own docstring (its rank, input layout and an
    example), not the one it would inherit from a shared base class."""
    from cnnfast.nn import layers
    from cnnfast.nn.base import Layer

    classes = [getattr(layers, name) for name in layers.__all__]
    classes = [c for c in classes if isinstance(c, type) and issubclass(c, Layer)]
    assert len(classes) > 20
    bare = [c.__name__ for c in classes if ">>>" not in (vars(c).get("__doc__") or "")]
    assert not bare, f"layer classes without their own docstring with an example: {bare}"


def test_api_md_doctests():
    result = doctest.testfile(str(ROOT / "docs" / "API.md"), module_relative=False,
                              optionflags=FLAGS, verbose=False)
    assert result.attempted > 0
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed"
