"""Every op on every implementation over the shape suite, through pytest-benchmark.

    pytest benchmarks/ --benchmark-only [--bench-quick] [--bench-backend numba,torch]
        [--bench-shape resnet] [--benchmark-group-by=group] [--benchmark-json out.json]

Not collected by the normal test run (``testpaths = ["tests"]``). ``cnnfast bench``
measures the same cases with interleaved rounds and a torch ratio; this file is for
people who want pytest-benchmark's tooling (histograms, ``--benchmark-compare``).
Warm-up (JIT compilation, caches) happens outside the timing; GPU calls are
synchronised, and their CUDA-event time is stored in ``extra_info``.
"""

from __future__ import annotations

import pytest

from cnnfast.bench.impls import Inputs

_inputs = {}


def _inputs_for(case):
    # One case's arrays at a time: the suite's inputs together would be large.
    if case.name not in _inputs:
        _inputs.clear()
        _inputs[case.name] = Inputs(case)
    return _inputs[case.name]


def test_kernel(benchmark, bench_item):
    case, op, impl = bench_item
    try:
        fn = impl.prepare(case, op, _inputs_for(case))
        fn()  # warm-up, outside the timing
    except NotImplementedError as exc:
        pytest.skip(f"n/a: {exc}")
    impl.synchronize()
    benchmark.group = f"{case.name} {op}"
    flops, nbytes = case.flops(op), case.bytes(op)
    benchmark.extra_info.update(case=case.name, op=op, impl=impl.name, device=impl.device,
                                flops=flops, bytes=nbytes, description=case.describe())
    timer = impl.timer()
    single = timer(fn, 1)
    iterations = max(1, min(1000, int(0.02 / max(single, 1e-9))))
    if impl.device == "gpu":
        benchmark.extra_info["cuda_event_s"] = timer(fn, iterations) / iterations

        def target():
            fn()
            impl.synchronize()
    else:
        target = fn
    benchmark.pedantic(target, rounds=5, iterations=iterations, warmup_rounds=1)
    stats = getattr(benchmark, "stats", None)
    median = getattr(getattr(stats, "stats", None), "median", None)
    if median:
        if flops:
            benchmark.extra_info["gflops"] = flops / median / 1e9
        if nbytes:
            benchmark.extra_info["gbs"] = nbytes / median / 1e9
