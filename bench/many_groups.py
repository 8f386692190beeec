"""Scoring time against the number of groups: 4, 25 and 100, everything else the same
(issue 24, item 5).

One user task (an MLP on 32 features, 10 classes, a binary spurious attribute), whose
samples are dealt into G groups at random, balanced: only the group labels and their
count change between the runs, so any difference in scoring time is what the group
count costs. Each run is a whole trial with the default `[params]` and a fitted edit
(the group-balanced fit, the controls, the α sweep, the references' scores); the trials
alternate `--repeats` times and the medians of the scoring phase are printed, with
`group_metrics` alone on 100 000 predictions beside them.

    .venv/bin/python bench/many_groups.py --repeats 3 [--samples 4000] [--out runs.json]

`--out` writes every run's scoring time (and group_metrics' times) with the versions.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from hpo import Split, UserTask
from hpo.debias.scoring import group_metrics
from hpo.service.study_file import parse_study
from hpo.service.trial import prepare_task, run_trial

HERE = Path(__file__).resolve()
COUNTS = (4, 25, 100)


def make_task(seed: int, n_groups: int, samples: int) -> UserTask:
    """The same data and model for every `n_groups`; only the group labels differ."""
    gen = torch.Generator().manual_seed(seed)

    def split(n: int, bias: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        y = torch.randint(0, 10, (n,), generator=gen)
        s = torch.where(
            torch.rand(n, generator=gen) < bias, y % 2, torch.randint(0, 2, (n,), generator=gen)
        )
        x = torch.randn(n, 32, generator=gen)
        x[:, :10] += F.one_hot(y, 10)
        x[:, 10] += 3.0 * s
        return x, y, s

    train = split(4 * samples, 0.95)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU())
    model.append(nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(100):
        opt.zero_grad()
        F.cross_entropy(model(train[0]), train[1]).backward()
        opt.step()
    deal = torch.Generator().manual_seed(1000 + n_groups)  # the groups: a balanced deal

    def labelled(n: int) -> Split:
        x, y, s = split(n, 0.5)
        groups = (torch.arange(n) % n_groups)[torch.randperm(n, generator=deal)]
        return Split(x, y, groups, s)

    return UserTask(
        model=model.eval(),
        layer="2",
        probe=labelled(samples),
        val=labelled(samples),
        test=labelled(samples),
        group_names=[f"g{i}" for i in range(n_groups)],
        concept_names=("s0", "s1"),
    )


def study(n_groups: int, samples: int):
    return parse_study(
        {
            "study": {"name": f"groups{n_groups}", "objectives": ["worst_group"]},
            "task": {
                "kind": "python",
                "factory": f"{HERE}:make_task",
                "options": {"n_groups": n_groups, "samples": samples},
                "references": ["last_layer", "leace", "retrain_head"],
            },
            "params": {"ablate": "fitted", "steps": 300, "eval_every": 300},
        },
        "bench",
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--samples", type=int, default=4000, help="per split")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, help="a JSON file for every run's numbers")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    studies = {g: study(g, args.samples) for g in COUNTS}
    contexts = {g: prepare_task(s, data_dir=None, progress=False) for g, s in studies.items()}
    scoring: dict[int, list[float]] = {g: [] for g in COUNTS}
    trial: dict[int, list[float]] = {g: [] for g in COUNTS}
    worst: dict[int, list[float]] = {g: [] for g in COUNTS}
    for _ in range(args.repeats):
        for g, s in studies.items():
            t0 = time.perf_counter()
            result, _ = run_trial(s, contexts[g], s.params, with_test=True)
            trial[g].append(time.perf_counter() - t0)
            scoring[g].append(result.timings["scoring"])
            worst[g].append(result.objectives["worst_group"])
    metrics: dict[int, float] = {}
    gen = torch.Generator().manual_seed(0)
    correct = torch.rand(100_000, generator=gen) < 0.7
    for g in COUNTS:
        ids = torch.randint(0, g, (100_000,), generator=gen)
        names = [f"g{i}" for i in range(g)]
        t0 = time.perf_counter()
        for _ in range(100):
            group_metrics(correct, ids, names)
        metrics[g] = (time.perf_counter() - t0) / 100
    base = statistics.median(scoring[COUNTS[0]])
    print(
        f"| groups | trial scoring (median of {args.repeats}, {args.samples} samples a split) "
        f"| vs 4 groups | group_metrics, 100 000 predictions |"
    )
    print("| --- | --- | --- | --- |")
    for g in COUNTS:
        med = statistics.median(scoring[g])
        print(f"| {g} | {med:.2f} s | {med / base:.2f}x | {1000 * metrics[g]:.2f} ms |")
    for g in COUNTS:
        runs = ", ".join(f"{t:.2f}" for t in scoring[g])
        print(f"{g} groups: scoring per run {runs} s; val worst group {worst[g]}")
    if args.out:
        record = {
            "command": " ".join(sys.argv),
            "seed": studies[COUNTS[0]].task.seed,
            "samples": args.samples,
            "data_sha256": {g: c.data_sha256 for g, c in contexts.items()},
            "torch_threads": torch.get_num_threads(),
            "versions": versions(),
            "scoring_s": scoring,
            "trial_s": trial,
            "val_worst_group": worst,
            "group_metrics_s": metrics,
        }
        args.out.write_text(json.dumps(record, indent=1) + "\n")


def versions() -> dict[str, str]:
    import optuna

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "optuna": optuna.__version__,
    }


if __name__ == "__main__":
    main()
