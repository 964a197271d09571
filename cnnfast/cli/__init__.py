"""The ``cnnfast`` command line: ``cnnfast COMMAND ...`` or ``python -m cnnfast COMMAND``.

Each command lives in its own module that defines ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``; this file routes, and turns a
user error (``cnnfast.cli.common.CliError``, a bad option included) into one
line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType
from typing import Dict, NoReturn, Optional, Sequence

from .._version import __version__
from .common import CliError, report_error

COMMANDS = {
    "info": "cnnfast.cli.info",
    "demo": "cnnfast.cli.demo",
    "warmup": "cnnfast.cli.warmup",
    "train": "cnnfast.cli.train",
    "evaluate": "cnnfast.cli.evaluate",
    "bench": "cnnfast.cli.bench",
    "visualize": "cnnfast.cli.visualize",
    "sample": "cnnfast.cli.sample",
}


def _load(name: str) -> Optional[ModuleType]:
    try:
        return importlib.import_module(COMMANDS[name])
    except ModuleNotFoundError as exc:
        if exc.name == COMMANDS[name]:
            return None  # this command is not part of this build
        raise


# How idle OpenMP workers wait is not chosen here: importing cnnfast (this package's
# parent) already chose a short spin unless the user chose a policy
# (cnnfast.threads.short_openmp_spin), for every command and every script alike.


class _Parser(argparse.ArgumentParser):
    """A usage error is a CliError too: one line, status 2, from ``main``."""

    def error(self, message: str) -> NoReturn:
        raise CliError(f"{message} (see {self.prog} --help)", prog=self.prog)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _Parser(prog="cnnfast", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"cnnfast {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    modules: Dict[str, ModuleType] = {}
    for name in COMMANDS:
        module = _load(name)
        if module is None:
            continue
        modules[name] = module
        module.add_arguments(sub.add_parser(name, help=module.HELP, description=module.HELP))
    prog = "cnnfast"
    try:
        args, unknown = parser.parse_known_args(argv)
        prog = f"cnnfast {args.command}"
        if unknown:  # reported for the command they were given to
            raise CliError(f"unrecognized arguments: {' '.join(unknown)} (see {prog} "
                           f"--help)")
        return int(modules[args.command].run(args) or 0)
    except CliError as exc:
        return report_error(prog, exc)
    except OSError as exc:  # the environment: disk full, permissions, a vanished file
        return report_error(prog, exc)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
