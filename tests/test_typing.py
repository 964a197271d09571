"""The public modules type-check clean (``python -m mypy``, configured in
pyproject.toml's ``[tool.mypy]``), the public functions and methods of ``cnnfast``,
``cnnfast.nn`` and the other packages (``ANNOTATED``) carry type hints, and the package
ships its ``py.typed`` marker."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_py_typed_marker_is_packaged():
    assert (ROOT / "cnnfast" / "py.typed").is_file()
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "py.typed" in config["tool"]["setuptools"]["package-data"]["cnnfast"]


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None,
                    reason="mypy is not installed (pyproject.toml's 'test' dependency group)")
def test_mypy_clean_on_public_modules(tmp_path):
    # The cache goes to a temporary folder, not into the checkout.
    proc = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr


USER_CODE = '''\
import numpy as np
import cnnfast as cf
from cnnfast import nn

x = np.ones((1, 1, 4, 4), np.float32)
w = np.ones((1, 1, 3, 3), np.float32)
y = cf.max_pool2d(x, 2, stride=(2, 2), padding=((0, 1), 0))
z = cf.conv2d(x, w, padding="same", activation="relu")
grad_x, grad_w, grad_b = cf.conv_backward(z, x, w, padding=1, needs=("x",))
threads: int = cf.get_num_threads()
model = nn.Sequential([nn.Flatten(), nn.Dense(3)], input_shape=(1, 4, 4), seed=0)
loss, grad = nn.mse(model.forward(x), np.zeros((1, 3), np.float32))
cf.set_num_threads("4")
'''


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None,
                    reason="mypy is not installed (pyproject.toml's 'test' dependency group)")
def test_annotations_reach_user_code(tmp_path):
    """A user's type checker sees the signatures: correct calls pass, a wrong one is
    reported (run from the checkout, where mypy finds the package as source)."""
    user = tmp_path / "user.py"
    user.write_text(USER_CODE, encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir",
                           str(tmp_path / "cache"), str(user)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    errors = [line for line in proc.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1 and ":13:" in errors[0] and "set_num_threads" in errors[0], \
        proc.stdout + proc.stderr


def _unannotated(obj, qualname):
    """``qualname`` and what its signature leaves unannotated, or None."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):  # a builtin without a signature
        return None
    missing = [p.name for p in sig.parameters.values()
               if p.name not in ("self", "cls") and p.annotation is inspect.Parameter.empty]
    if sig.return_annotation is inspect.Signature.empty and obj.__name__ != "__init__":
        missing.append("return")
    return f"{qualname}: {', '.join(missing)}" if missing else None


# The packages whose public names (``__all__``) must carry type hints; cnnfast.torch and
# cnnfast.jax need their optional dependency.
ANNOTATED = ["cnnfast", "cnnfast.nn", "cnnfast.distributed", "cnnfast.bench",
             "cnnfast.torch", "cnnfast.jax"]


@pytest.mark.parametrize("name", ANNOTATED)
def test_public_functions_and_methods_are_annotated(name):
    """Every public function of the package (its ``__all__``), and every public method
    (and constructor) of its public classes, has type hints on every parameter and its
    return: what a user's type checker and IDE read."""
    optional = {"cnnfast.torch": "torch", "cnnfast.jax": "jax"}.get(name)
    if optional is not None:
        pytest.importorskip(optional)
    module = importlib.import_module(name)
    gaps = []
    for public in module.__all__:
        obj = getattr(module, public)
        where = f"{name}.{public}"
        if inspect.isfunction(obj):
            gaps.append(_unannotated(obj, where))
        elif inspect.isclass(obj) and obj.__module__.startswith("cnnfast"):
            for attr, member in vars(obj).items():
                if inspect.isfunction(member) and (not attr.startswith("_")
                                                   or attr in ("__init__", "__call__")):
                    gaps.append(_unannotated(member, f"{where}.{attr}"))
    gaps = [g for g in gaps if g]
    assert not gaps, "without type hints:\n" + "\n".join(gaps)
