"""The differential fuzzer of tests/fuzz.py: every available backend against the numpy
reference on random configurations of the eight operations (see fuzz.py's docstring
for what is drawn and the tolerances).

CI budget: ``CNNFAST_FUZZ_CASES`` cases per backend (default 1000; about 2-6 ms each),
a fresh seed every run (``CNNFAST_FUZZ_SEED`` fixes it). A failure lists every failing
case (up to 10) with the seed, its index, the call and a one-line replay command. The
long run: ``.venv/bin/python tests/fuzz.py --backend cpp --cases 100000``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import fuzz
from cnnfast import registry

CASES = int(os.environ.get("CNNFAST_FUZZ_CASES", "1000"))
SEED = fuzz.default_seed()


def test_fuzz(backend, capsys):
    if backend.name == "numpy":
        pytest.skip("numpy is the reference")
    with capsys.disabled():  # shown at once, even if a case crashes the process
        print(f" [fuzz {backend.name}: seed {SEED}, {CASES} cases] ", end="", flush=True)
    failures, stats = fuzz.run(backend.name, SEED, CASES, max_failures=10)
    assert not failures, (
        f"fuzz: {len(failures)} failing case(s) on {backend.name} (seed {SEED}; rerun "
        f"with CNNFAST_FUZZ_SEED={SEED})\n\n" + "\n\n".join(failures))
    # a generator that mostly draws configurations nobody runs tests little
    assert stats.invalid + stats.costly < stats.cases, stats.summary()
    assert stats.declined <= stats.cases // 100, stats.summary()
    # forced algorithms (a third of the conv cases) must mostly fit what they are given
    assert stats.unfit <= stats.cases // 5, stats.summary()


def test_generator_is_reproducible_and_covers_the_space():
    stats = fuzz.Stats()
    cases = [fuzz.gen_case(7, i, stats) for i in range(800)]
    assert fuzz.gen_case(7, 123) == cases[123]
    a, b = fuzz.make_inputs(cases[123]), fuzz.make_inputs(cases[123])
    assert all(v is None and b[k] is None or np.array_equal(v, b[k], equal_nan=True)
               for k, v in a.items())
    assert {c.op for c in cases} == set(fuzz.OPS)
    assert {c.dtype for c in cases} == {"float16", "float32", "float64"}
    assert {len(c.x_shape) - 2 for c in cases} == {1, 2, 3}
    assert {c.data for c in cases} >= {"normal", "ties", "nan", "inf", "mixed", "ref", "random"}
    assert {c.layout for c in cases} == {"c", "strided", "fortran"}
    convs = [c for c in cases if c.w_shape]
    assert any(c.kwargs["groups"] > 1 and c.w_shape[1] == 1 for c in convs)  # depthwise
    assert any(c.kwargs["padding"] in ("same", "valid") for c in convs)
    assert {c.kwargs.get("activation") for c in convs} == {None, *fuzz.ACTIVATIONS}
    assert any(c.data == "wide" for c in convs)
    for tag in ("z-collapsed-padded", "one-channel-per-group", "K>256", "output_padding",
                "asymmetric-pad", "global-pool", "big"):
        assert stats.tags.get(tag), f"no {tag!r} case in 800: {stats.summary()}"
    assert stats.invalid + stats.costly < stats.cases / 2, stats.summary()


@pytest.fixture
def broken():
    registry.register_backend("fuzz-broken", "helpers.broken_backend")
    yield "fuzz-broken"
    registry._MODULES.pop("fuzz-broken", None)
    registry._loaded.pop("fuzz-broken", None)


def test_the_comparison_catches_a_wrong_term_and_a_modified_input(broken):
    conv = fuzz.Case(op="conv", dtype="float32", x_shape=(1, 2, 5), w_shape=(3, 2, 3),
                     kwargs={"stride": 1, "padding": 0, "dilation": 1, "groups": 1})
    problems = fuzz.check_case(conv, broken)
    assert len(problems) == 1 and problems[0].startswith("y: 1 of 9 elements differ")
    pool = fuzz.Case(op="max_pool", dtype="float64", x_shape=(1, 1, 4, 4),
                     kwargs={"kernel_size": 2, "stride": None, "padding": 0, "dilation": 1,
                             "ceil_mode": False, "return_indices": True})
    assert fuzz.check_case(pool, broken) == ["input x was modified"]
    assert fuzz.check_case(pool, "numpy") == []
