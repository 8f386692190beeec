"""What a configuration is worth over fresh base models: the SAE against its controls per
edit budget, beside the references of its label regime.

For each base-model seed (a new data split and base model, never one a study tuned on),
runs the study file's `[params]` (with `--set` overrides) as one trial, then its edit
procedure at each budget (`--budgets`, "all" = no limit) on the trained SAE and on each
control (the same SAE untrained; the weight's SVD). Prints test worst-group accuracy
(α and every parameter chosen on validation; test is only reported), the lift over the
best control, and the references: LEACE for the concept-label regime, last-layer
retraining (DFR) and retrain_head for the group-label regime, and the oracle.

    HPO_DATA_DIR=../shared/data/mnist .venv/bin/python bench/multi_seed.py \\
        studies/colored_mnist_sparse.toml --seeds 11 12 13 --budgets 4 8 16 all

One JSON line per seed goes to --out (and stdout), with the seed, the data checksum and
the package versions; the tables follow.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hpo.service.study_file import load_study_file  # noqa: E402
from hpo.service.trial import prepare_task, run_trial  # noqa: E402
from hpo.tasks.registry import get_task  # noqa: E402
from hpo.versions import package_versions  # noqa: E402

REFERENCES = ("leace", "last_layer", "retrain_head", "oracle")
DECOMPOSITIONS = ("debiased", "control_random", "control_svd")


def one_seed(study_file: str, overrides: list[str], seed: int, budgets: list[int | None]) -> dict:
    study = load_study_file(study_file, [*overrides, f"task.seed={seed}", f"params.seed={seed}"])
    ctx = prepare_task(study, data_dir=None, progress=False)
    result, trained = run_trial(study, ctx, study.params, with_test=True)
    saes = {layer: t.sae for layer, t in trained.items()}
    curves = get_task(study.task.kind).budget_curve(ctx, saes, study.params, budgets)
    test = {n: m.worst_group for n in result.model_names() if (m := result.metric(n, "test"))}
    return {
        "seed": seed,
        "labels": result.edit.labels if result.edit else None,
        "trial": {
            "test_worst_group": test,
            "val_lift": result.lift("val"),
            "test_lift": result.lift("test"),
            "components_removed": result.value("components_removed"),
            "faithfulness_error": result.errors["faithfulness_error"],
            "prediction_change": result.errors["prediction_change"],
        },
        "budgets": {
            str(b if b is not None else "all"): {
                name: {"removed": p.removed, "val": p.val_worst_group, "test": p.test_worst_group}
                for name, points in curves.items()
                for p in points
                if p.budget == b
            }
            for b in budgets
        },
        "data_sha256": ctx.data_sha256,
        "task": study.task.model_dump(mode="json"),
        "params": study.params.model_dump(mode="json"),
        "versions": package_versions(),
        "torch_threads": torch.get_num_threads(),
    }


def pct(values: list[float]) -> str:
    if not values:
        return "–"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    mean = statistics.fmean(values)
    return f"{100 * mean:.1f}" if len(values) == 1 else f"{100 * mean:.1f} ± {100 * std:.1f}"


def budget_table(rows: list[dict]) -> str:
    head = ["budget", "removed", "SAE", "random", "SVD", "lift (SAE − best control)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for budget in rows[0]["budgets"]:
        at = [r["budgets"][budget] for r in rows]
        removed = f"{statistics.fmean(a['debiased']['removed'] for a in at):.1f}"
        cells = [pct([a[d]["test"] for a in at]) for d in DECOMPOSITIONS]
        lift = [
            a["debiased"]["test"] - max(a["control_random"]["test"], a["control_svd"]["test"])
            for a in at
        ]
        lines.append(f"| {budget} | {removed} | " + " | ".join(cells) + f" | {pct(lift)} |")
    return "\n".join(lines)


def reference_table(rows: list[dict]) -> str:
    head = ["seed", "labels", "original", "trial (SAE)", *REFERENCES]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, group in [*((str(r["seed"]), [r]) for r in rows), ("mean ± std", rows)]:
        t = [r["trial"]["test_worst_group"] for r in group]
        cells = [pct([x["original"] for x in t]), pct([x["debiased"] for x in t])]
        cells += [pct([x[n] for x in t if n in x]) for n in REFERENCES]
        lines.append(f"| {label} | {group[0]['labels']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("study_file", help="the study file whose [params] are run")
    ap.add_argument("--seeds", type=int, nargs="+", default=[11, 12, 13])
    ap.add_argument("--budgets", nargs="+", default=["4", "8", "16", "all"])
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None, help="append one JSON line per seed")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    budgets = [None if b == "all" else int(b) for b in args.budgets]
    rows = []
    for seed in args.seeds:
        row = one_seed(args.study_file, args.overrides, seed, budgets)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.out:
            with args.out.open("a") as f:
                f.write(json.dumps(row) + "\n")
    print("\nTest worst-group accuracy (%) by edit budget, mean ± std over seeds", args.seeds)
    print(budget_table(rows))
    print("\nThe trial as configured, and the references (test worst-group %)")
    print(reference_table(rows))


if __name__ == "__main__":
    main()
