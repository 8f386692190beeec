"""Where a trial's time goes, at two revisions side by side: one study file's trial
(each revision's own copy of it), run at the same time on one torch thread each, so that
both see the same machine; the phases, and trials per CPU-hour (one thread, one trial
after another: 3600 s / (SAE training + scoring)).

    HPO_DATA_DIR=../shared/data/mnist .venv/bin/python bench/trial_cost.py OLD [NEW] \\
        --study studies/colored_mnist_sparse.toml --seed 9

Each revision is checked out into a temporary git worktree with a cache of its own (a
changed code fingerprint trains the base model again, which `base_model` reports and
the per-CPU-hour figure leaves out).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("sae_training", "scoring", "edit", "controls")


def start(tree: Path, cache: Path, study: str, seed: int) -> subprocess.Popen[str]:
    env = {**os.environ, "HPO_CACHE_DIR": str(cache)}
    cmd = [sys.executable, "-m", "hpo", "trial", study, "--seed", str(seed), "--json"]
    cmd += ["--threads", "1", "--no-test"]
    return subprocess.Popen(cmd, cwd=tree, env=env, stdout=subprocess.PIPE, text=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("old")
    parser.add_argument("new", nargs="?", default="HEAD")
    parser.add_argument("--study", default="studies/colored_mnist_sparse.toml")
    parser.add_argument("--seed", type=int, default=9)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trees = {side: Path(tmp) / side for side in ("old", "new")}
        for side, rev in (("old", args.old), ("new", args.new)):
            subprocess.run(
                ["git", "worktree", "add", "--detach", "-q", str(trees[side]), rev],
                cwd=ROOT,
                check=True,
            )
        try:
            runs = {
                s: start(t, Path(tmp) / f"cache-{s}", args.study, args.seed)
                for s, t in trees.items()
            }
            results = {}
            for side, proc in runs.items():
                out, _ = proc.communicate()
                if proc.returncode != 0:
                    raise SystemExit(f"{side}: hpo trial exited {proc.returncode}")
                results[side] = json.loads(out)
        finally:
            for tree in trees.values():
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT)
    print(f"| phase (s, one thread) | {args.old} | {args.new} | new / old |")
    print("|---|---|---|---|")
    per_hour = {}
    for side in ("old", "new"):
        t = results[side]["timings"]
        per_hour[side] = 3600 / (t["sae_training"] + t["scoring"])
    for phase in ("base_model", *PHASES):
        old = results["old"]["timings"].get(phase)
        new = results["new"]["timings"].get(phase)
        ratio = f"{new / old:.2f}" if old and new else "–"
        cell = lambda v: "–" if v is None else f"{v:.1f}"  # noqa: E731
        print(f"| {phase} | {cell(old)} | {cell(new)} | {ratio} |")
    print(
        f"| trials per CPU-hour | {per_hour['old']:.1f} | {per_hour['new']:.1f} | "
        f"{per_hour['new'] / per_hour['old']:.2f} |"
    )
    for side in ("old", "new"):
        r = results[side]
        lift = r.get("lift", float("nan"))
        print(
            f"{side}: val worst group {r['worst_group']:.4f}, lift {lift:+.4f}, components "
            f"{r.get('components_removed')}, seed {r['seed']}, data {r['data_sha256'][:12]}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
