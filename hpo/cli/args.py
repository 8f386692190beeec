"""Arguments several commands share, and how the CLI talks to a person."""

from __future__ import annotations

import argparse
import sys
from typing import TypeAlias

# What `ArgumentParser.add_subparsers()` returns; argparse's class is generic only in
# typeshed, so the alias is a string.
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a field of the study file, e.g. --set params.steps=500 --set task.bias=0.9",
    )


def add_threads(p: argparse.ArgumentParser, text: str) -> None:
    p.add_argument(
        "--threads",
        type=int,
        help=f"{text}; the cores it may use are the least of its CPU affinity, its cgroup "
        "CPU quota and SLURM_CPUS_PER_TASK",
    )


def say(msg: str, quiet: bool = False) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)
