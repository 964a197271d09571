"""The README's Python examples run and say what they show.

Its ```python blocks are read from README.md itself (no copy to drift): a block of
``>>>`` lines runs as a doctest in the namespace the README's earlier blocks built (as a
reader pasting them into one session), any other block runs as a script, on its own.
The figures an example shows that belong to the machine -- ``explain``'s SIMD level and
thread count -- are matched against this machine's, not skipped: the README's ``avx2
kernels, 2 thread(s)`` must read, here, as the cpp extension's path and the thread count
cnnfast reports. What the blocks' comments claim (result dtypes, shapes, the backend
report) is checked on the values the block computed.
"""

from __future__ import annotations

import doctest
import importlib.util
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pytest

import cnnfast as cf
from cnnfast import registry

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

_FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(text: str) -> List[Tuple[int, str]]:
    """``(line number, code)`` of every ```python block of ``text``."""
    return [(text.count("\n", 0, m.start()) + 2, m.group(1)) for m in _FENCE.finditer(text)]


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))
SCRIPTS = [b for b in BLOCKS if ">>>" not in b[1]]
DOCTESTS = [b for b in BLOCKS if ">>>" in b[1]]


def _block(marker: str) -> Tuple[int, str]:
    """The one block that contains ``marker`` (the test says which example it checks)."""
    found = [b for b in BLOCKS if marker in b[1]]
    assert len(found) == 1, f"{len(found)} README python blocks contain {marker!r}"
    return found[0]


def _run_script(line: int, code: str, namespace: Dict[str, Any]) -> Dict[str, Any]:
    exec(compile(code, f"{README}:{line}", "exec"), namespace)  # noqa: S102 - our README
    return namespace


def _needs(code: str) -> None:
    """Skip (with the reason) a block whose optional dependency is missing here."""
    imports_torch = re.search(r"^\s*import torch\b", code, re.M) is not None
    if imports_torch and importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed (the 'torch' extra)")


# ----------------------------------------------------------------------- machine words

# "...; avx2 kernels, 2 thread(s)" (cpp) and "...; 2 thread(s)" (numba): the end of an
# explain line.
_MACHINE = re.compile(r"(?:\b(\w+) kernels, )?(\d+) thread\(s\)$", re.M)


def _placeholders(text: str, simd: Optional[str], threads: Optional[int]) -> str:
    """``text`` with explain's machine words replaced by placeholders; with ``simd`` /
    ``threads`` given, only where they are these values (anything else stays and
    fails the comparison)."""

    def sub(m: "re.Match[str]") -> str:
        if simd is not None and m.group(1) is not None and m.group(1) != simd:
            return m.group(0)
        if threads is not None and int(m.group(2)) != threads:
            return m.group(0)
        return ("<simd> kernels, " if m.group(1) is not None else "") + "<n> thread(s)"

    return _MACHINE.sub(sub, text)


def _simd_path() -> Optional[str]:
    try:
        from cnnfast.backends.cpp import _cpp
    except ImportError:
        return None
    return str(_cpp.kernel_path())


class _ThisMachine(doctest.OutputChecker):
    """The README's machine words stand for this machine's: the expected text's are
    placeholders; the actual text's must be the cpp path and thread count here."""

    def __init__(self, simd: Optional[str], threads: int) -> None:
        self.simd, self.threads = simd, threads

    def check_output(self, want: str, got: str, optionflags: int) -> bool:
        return super().check_output(_placeholders(want, None, None),
                                    _placeholders(got, self.simd, self.threads),
                                    optionflags)


def test_placeholders_accept_this_machine_only():
    line = "cpp: gemm (im2col GEMM); why: ...; avx2 kernels, 2 thread(s)"
    assert _placeholders(line, "avx2", 2).endswith("; <simd> kernels, <n> thread(s)")
    assert _placeholders(line, "portable", 2) == line
    assert _placeholders(line, "avx2", 3) == line
    assert _placeholders("numba: ...; 4 thread(s)", None, 4) == "numba: ...; <n> thread(s)"
    checker = _ThisMachine("avx2", 2)
    assert checker.check_output("x; avx2 kernels, 2 thread(s)\n",
                                "x; avx2 kernels, 2 thread(s)\n", 0)
    assert not checker.check_output("x; avx2 kernels, 2 thread(s)\n",
                                    "x; portable kernels, 2 thread(s)\n", 0)
    assert not checker.check_output("x; avx2 kernels, 2 thread(s)\n",
                                    "y; avx2 kernels, 2 thread(s)\n", 0)


# ----------------------------------------------------------------------------- blocks


def test_readme_has_the_examples_checked_here():
    assert len(SCRIPTS) >= 2 and len(DOCTESTS) >= 1


@pytest.mark.parametrize("line, code", SCRIPTS, ids=[f"line{n}" for n, _ in SCRIPTS])
def test_script_block_runs(line, code):
    _needs(code)
    _run_script(line, code, {})


@pytest.mark.parametrize("line, code", DOCTESTS, ids=[f"line{n}" for n, _ in DOCTESTS])
def test_doctest_block(line, code):
    if "cf.explain" in code and not registry.get_backend("cpp").available:
        pytest.skip("the README's explain example describes the cpp backend, not built")
    namespace: Dict[str, Any] = {}
    for earlier_line, earlier in BLOCKS:  # the session a reader has built so far
        if earlier_line >= line:
            break
        if ">>>" not in earlier:
            _needs(earlier)
            _run_script(earlier_line, earlier, namespace)
    test = doctest.DocTestParser().get_doctest(code, namespace, "README.md", str(README),
                                               line - 1)
    runner = doctest.DocTestRunner(checker=_ThisMachine(_simd_path(), cf.get_num_threads()),
                                   optionflags=doctest.ELLIPSIS
                                   | doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted > 0
    assert result.failed == 0, f"{result.failed} of {result.attempted} README examples " \
                               f"from line {line} failed (output above)"


def test_api_block_computes_what_its_comments_say():
    ns = _run_script(*_block('cf.conv2d(x, w, padding="same")'), {})
    x, y = ns["x"], ns["y"]
    assert y.shape == (64, 64, 28, 28) and y.dtype == np.float32  # "same", stride 1
    # The numpy reference agrees: sums of 9 float32 products of values in [0, 1)
    # (below 9) round to within a few 1e-6, whatever the algorithm.
    np.testing.assert_allclose(ns["y_ref"], y, rtol=1e-5, atol=1e-5)
    assert ns["gx"].shape == x.shape and ns["gw"].shape == ns["w"].shape
    assert ns["p"].shape == (64, 64, 14, 14)
    assert ns["idx"].dtype == np.int64  # "int64 flat offsets"
    assert ns["gy"].shape == y.shape
    assert ns["a"].shape == (64, 64, 14, 14)  # (28 + 1 - 3) // 2 + 1 with the padding
    assert ns["t"].shape == (64, 8, 56, 56)  # (28 - 1) * 2 - 2 + 4
    assert (ns["r"] >= 0).all()  # relu in the epilogue
    reasons = cf.available_backends(with_reasons=True)
    assert reasons["numpy"] is None  # the comment's {'numpy': None, ...}
    assert set(reasons) == set(registry.backend_names())


def test_torch_block_swaps_only_max_pool():
    line, code = _block("ct.replace(")
    _needs(code)
    ns = _run_script(line, code, {})
    torch, model = ns["torch"], ns["model"]
    assert type(model[0]) is torch.nn.Conv2d and type(model[1]) is torch.nn.ReLU
    assert type(model[2]).__module__.startswith("cnnfast.torch")  # the one op swapped
    assert model[0].weight.grad is not None  # backward ran through the cnnfast op
