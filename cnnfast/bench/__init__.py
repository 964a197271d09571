"""Benchmarks of the cnnfast kernels: the shape suite (``suite.toml``), the timing
loop, the results document and its reports. The command line is ``cnnfast bench``
(``cnnfast/cli/bench.py``); ``pytest benchmarks/ --benchmark-only`` runs the same
suite through pytest-benchmark.
"""

from .impls import Inputs, make_impls
from .report import compare, markdown, plot, text_table
from .results import check_document, load_json, make_document, validate, write_json
from .runner import Settings, run_cases
from .suite import Case, SuiteError, default_suite_path, load_suite, select_cases

__all__ = [
    "Case", "Inputs", "Settings", "SuiteError", "check_document", "compare",
    "default_suite_path", "load_json", "load_suite", "make_document", "make_impls",
    "markdown", "plot", "run_cases", "select_cases", "text_table", "validate",
    "write_json",
]
