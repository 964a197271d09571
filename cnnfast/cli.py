"""The ``cnnfast`` command line: ``cnnfast COMMAND ...`` or ``python -m cnnfast COMMAND``.

Each command lives in its own module that defines ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``; this file only routes.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMANDS = {
    "info": "cnnfast.commands.info",
    "demo": "cnnfast.commands.demo",
    "warmup": "cnnfast.commands.warmup",
    "train": "cnnfast.commands.train",
    "evaluate": "cnnfast.commands.evaluate",
    "bench": "cnnfast.commands.bench",
    "visualize": "cnnfast.commands.visualize",
}


def _load(name):
    try:
        return importlib.import_module(COMMANDS[name])
    except ModuleNotFoundError as exc:
        if exc.name == COMMANDS[name]:
            return None  # this command is not part of this build
        raise


# Commands that interleave our OpenMP kernels with numpy's BLAS (dense layers) in a
# tight loop: spinning OpenMP workers there starve OpenBLAS on a small machine
# (measured: a 0.6 ms matmul took 70-117 ms inside training). Passive waiting must be
# chosen before the OpenMP runtime loads, so it is set here; users may override it.
_PASSIVE_OPENMP = ("train", "evaluate", "visualize")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in _PASSIVE_OPENMP:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = argparse.ArgumentParser(prog="cnnfast", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    modules = {}
    for name in COMMANDS:
        module = _load(name)
        if module is None:
            continue
        modules[name] = module
        module.add_arguments(sub.add_parser(name, help=module.HELP, description=module.HELP))
    args = parser.parse_args(argv)
    return int(modules[args.command].run(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
