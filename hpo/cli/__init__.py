"""The `hpo` command. Argument parsing and printing only; the work lives elsewhere.

A `UserError` becomes one line on stderr and exit code 2; a bug keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from hpo.cli.args import Subparsers
from hpo.cli.run_commands import add_launch, add_trial, add_worker
from hpo.cli.study_commands import (
    add_confirm,
    add_dashboard,
    add_export,
    add_report,
    add_status,
    add_storage_proxy,
)
from hpo.errors import UserError

COMMANDS: list[Callable[[Subparsers], None]] = [
    add_trial,
    add_launch,
    add_worker,
    add_status,
    add_dashboard,
    add_report,
    add_export,
    add_confirm,
    add_storage_proxy,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hpo", description="Hyperparameter optimisation for Faithful-SAE debiasing"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from hpo.service.logs import configure_logging

    args = build_parser().parse_args(argv)
    configure_logging()  # here, not on import: importing hpo leaves logging alone
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        # One line, whatever the message: scripts and people read the first line.
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def run() -> None:
    """The `hpo` command. OpenMP's settings go into the environment first: the OpenMP
    runtime reads them once, when torch loads it (see hpo.cpus)."""
    from hpo.cpus import set_openmp_env

    set_openmp_env()
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:  # `hpo status | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    sys.exit(code)
