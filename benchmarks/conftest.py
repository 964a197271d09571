"""pytest-benchmark options for the cnnfast suite (``pytest benchmarks/ --benchmark-only``).

The cases come from the same TOML suite as ``cnnfast bench``; the parametrisation is
(case, op, implementation), and every implementation that cannot run here is still
collected and skipped with its reason, so nothing drops out silently.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser):
    group = parser.getgroup("cnnfast benchmarks")
    group.addoption("--bench-suite", default=None, metavar="PATH",
                    help="suite TOML (default: the one shipped in cnnfast/bench)")
    group.addoption("--bench-quick", action="store_true",
                    help="only the cases marked quick")
    group.addoption("--bench-backend", default=None, metavar="NAMES",
                    help="comma-separated implementations (cnnfast backends, torch, "
                         "torch-cuda); default: all but cuda-emu, plus torch")
    group.addoption("--bench-shape", default=None, metavar="PATTERNS",
                    help="comma-separated case-name patterns, as cnnfast bench --shape")
    group.addoption("--bench-threads", type=int, default=None, metavar="N",
                    help="CPU threads for cnnfast and torch")


def pytest_generate_tests(metafunc):
    if "bench_item" not in metafunc.fixturenames:
        return
    from cnnfast.bench.impls import make_impls
    from cnnfast.bench.suite import load_suite, select_cases

    opt = metafunc.config.getoption
    csv = lambda v: [s.strip() for s in v.split(",") if s.strip()] if v else None  # noqa: E731
    cases = select_cases(load_suite(opt("--bench-suite")), quick=opt("--bench-quick"),
                         shapes=csv(opt("--bench-shape")))
    impls, skipped = make_impls(csv(opt("--bench-backend")))
    params = []
    for case in cases:
        for op in case.ops:
            for impl in impls:
                params.append(pytest.param((case, op, impl),
                                           id=f"{case.name}-{op}-{impl.name}"))
            for name, reason in skipped.items():
                params.append(pytest.param(
                    None, id=f"{case.name}-{op}-{name}",
                    marks=pytest.mark.skip(reason=f"{name} skipped: {reason}")))
    metafunc.parametrize("bench_item", params)


@pytest.fixture(scope="session", autouse=True)
def _bench_threads(request):
    n = request.config.getoption("--bench-threads")
    from cnnfast import get_num_threads, set_num_threads

    n = n or get_num_threads()
    set_num_threads(n)
    try:
        import torch

        torch.set_num_threads(n)
    except ImportError:
        pass
    return n
