"""Did a change move any number? The same `hpo trial --json` commands at two revisions.

Checks out each revision into a temporary git worktree, runs every command below there
with one torch thread and a cache of its own (so a changed code fingerprint retrains the
base model, as a user's cache would), and compares the JSON field by field, ignoring
what is allowed to differ: timings, package versions and the bundle's content hash.
Fields only the newer revision has are listed, not counted as differences.

    HPO_DATA_DIR=../shared/data/mnist .venv/bin/python bench/same_numbers.py OLD [NEW]

NEW defaults to the working tree's HEAD; `--only CNN` runs the commands whose name says so.
Prints one line per command and exits 1 if any
shared field differs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
COMMANDS: dict[str, list[str]] = {
    "quick (fitted, fc1+fc2)": ["studies/colored_mnist_quick.toml", "--set", "params.steps=300"],
    "quick, attribution on fc1": [
        "studies/colored_mnist_quick.toml",
        *("--set", "params.steps=300", "--set", "params.ablate=attribution"),
        *("--set", "params.layers=fc1"),
    ],
    "quick, both on fc2 with ablate_bias": [
        "studies/colored_mnist_quick.toml",
        *("--set", "params.steps=300", "--set", "params.ablate=both"),
        *("--set", "params.layers=fc2", "--set", "params.ablate_bias=true"),
    ],
    "toy superposition": ["studies/toy_superposition.toml"],
    "seed configuration, CNN": ["studies/colored_mnist.toml", "--set", "params.steps=300"],
}
IGNORED = ("timings", "versions", "base_model", "torch_threads")


def flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out |= flat(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(value, list):
        out = {}
        for i, v in enumerate(value):
            out |= flat(v, f"{prefix}[{i}]")
        return out
    return {prefix: value}


def run(tree: Path, cache: Path, args: list[str]) -> dict[str, Any]:
    env = {**os.environ, "HPO_CACHE_DIR": str(cache)}
    cmd = [sys.executable, "-m", "hpo", "trial", *args, "--json", "--threads", "1"]
    done = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} at {tree}: exit {done.returncode}\n{done.stderr}")
    return json.loads(done.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("old")
    parser.add_argument("new", nargs="?", default="HEAD")
    parser.add_argument(
        "--only", metavar="TEXT", help="run only the commands whose name contains TEXT"
    )
    args = parser.parse_args()
    commands = {n: c for n, c in COMMANDS.items() if args.only is None or args.only in n}
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        trees = {}
        for side, rev in (("old", args.old), ("new", args.new)):
            trees[side] = Path(tmp) / side
            subprocess.run(
                ["git", "worktree", "add", "--detach", "-q", str(trees[side]), rev],
                cwd=ROOT,
                check=True,
            )
        try:
            for name, command in commands.items():
                old, new = (
                    flat(run(trees[s], Path(tmp) / f"cache-{s}", command)) for s in ("old", "new")
                )
                shared = [k for k in old if k in new and not k.startswith(IGNORED)]
                differ = [k for k in shared if old[k] != new[k]]
                added = sorted({k.split(".")[0].split("[")[0] for k in new if k not in old})
                failed |= bool(differ)
                print(
                    f"{name}: {len(shared)} fields, {len(differ)} differ"
                    + (f" ({', '.join(differ[:5])})" if differ else "")
                    + (f"; new fields: {', '.join(added)}" if added else "")
                    + f"; worst_group {old.get('worst_group')} -> {new.get('worst_group')}",
                    flush=True,
                )
        finally:
            for tree in trees.values():
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
