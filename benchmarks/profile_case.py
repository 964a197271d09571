"""Run one benchmark case of the suite in a loop, for a sampling profiler:

    perf record -e cpu-clock -g -o /tmp/perf.data -- \\
        python benchmarks/profile_case.py fmnist.conv2.n64 forward cpp 50
    perf report -i /tmp/perf.data --no-children --sort symbol | head -40

(This VM exposes no hardware counters; ``cpu-clock`` sampling still shows where
the time goes.) Arguments: case name (``cnnfast bench --list``), op, backend, calls.
"""

import sys

from cnnfast.bench.impls import CnnfastImpl, Inputs
from cnnfast.bench.suite import load_suite


def main(name, op, backend, calls):
    case = next(c for c in load_suite() if c.name == name)
    fn = CnnfastImpl(backend).prepare(case, op, Inputs(case, seed=0))
    for _ in range(int(calls)):
        fn()


if __name__ == "__main__":
    main(*sys.argv[1:5])
