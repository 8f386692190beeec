"""A tuned configuration against the seed's and the references, over fresh base models.

For each base-model seed (a new data split and base model, never one a study tuned on),
runs the seed's configuration (`[params]` of studies/colored_mnist.toml) and the tuned
one (`[params]` of the study file given, e.g. the confirmed best that
studies/colored_mnist_hard.toml ships) on the same task, and prints test worst-group
accuracy of every model beside the references the bundle scored on the same splits
(LEACE, last-layer retraining, retraining the head, the oracle), the faithfulness error,
the share of predictions the components change, and the gap closed towards the best
reference. α and every parameter were chosen on validation; test is only reported here.

    HPO_DATA_DIR=../shared/data/mnist .venv/bin/python bench/multi_seed.py \\
        studies/colored_mnist_hard.toml --seeds 1 2 3 [--set task.bias=0.95]

One JSON line per seed goes to --out (default: stdout only), with the seed, the data
checksum and the package versions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hpo.results import TrialResult  # noqa: E402
from hpo.service.study_file import load_study_file  # noqa: E402
from hpo.service.trial import prepare_task, run_trial  # noqa: E402
from hpo.versions import package_versions  # noqa: E402

SEED_STUDY = Path(__file__).resolve().parents[1] / "studies" / "colored_mnist.toml"
COLUMNS = ("original", "seed config", "tuned", "leace", "last_layer", "retrain_head", "oracle")


def one_seed(study_file: str, overrides: list[str], seed: int) -> dict:
    seeded = [*overrides, f"task.seed={seed}", f"params.seed={seed}"]
    tuned = load_study_file(study_file, seeded)
    seed_params = load_study_file(SEED_STUDY, [f"params.seed={seed}"]).params
    ctx = prepare_task(tuned, data_dir=None, progress=False)
    runs: dict[str, TrialResult] = {}
    for name, params in (("seed config", seed_params), ("tuned", tuned.params)):
        runs[name], _ = run_trial(tuned, ctx, params, with_test=True)
    first = runs["tuned"]
    test = {
        name: m.worst_group for name in first.model_names() if (m := first.metric(name, "test"))
    }
    row = {"seed": seed, "test_worst_group": {}, "faithfulness_error": {}, "gap_closed": {}}
    for name, result in runs.items():
        row["test_worst_group"][name] = result.metric("debiased", "test").worst_group
        row["faithfulness_error"][name] = result.errors["faithfulness_error"]
        row.setdefault("prediction_change", {})[name] = result.errors["prediction_change"]
        gap = result.gap_closed("test")
        row["gap_closed"][name] = None if gap is None else gap[0]
        row["towards"] = None if gap is None else gap[1]
        row.setdefault("alpha", {})[name] = result.edit.alpha if result.edit else None
    row["test_worst_group"].update({k: v for k, v in test.items() if k != "debiased"})
    row["data_sha256"] = ctx.data_sha256
    row["versions"] = package_versions()
    row["task"] = tuned.task.model_dump(mode="json")
    return row


def mean_std(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    if not values:
        return "–"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{scale * statistics.fmean(values):.{digits}f} ± {scale * std:.{digits}f}"


def fmt(values: list, key: str) -> str:
    present = [v for v in values if v is not None]
    if key == "faithfulness_error":
        return mean_std(present, 1.0, 3)
    return mean_std(present, 100.0, 0 if key == "gap_closed" else 1)


def line(label: str, rows: list[dict]) -> str:
    """One table row: every column as mean ± std over `rows` (one row: the value, ± 0)."""
    cells = [label]
    for col in COLUMNS:
        cells.append(fmt([r["test_worst_group"].get(col) for r in rows], "acc"))
    for key in ("faithfulness_error", "gap_closed"):
        seed = fmt([r[key]["seed config"] for r in rows], key)
        tuned = fmt([r[key]["tuned"] for r in rows], key)
        cells.append(f"{seed} / {tuned}")
    return "| " + " | ".join(cells) + " |"


def table(rows: list[dict]) -> str:
    head = ["seed", *COLUMNS, "faith. err (seed / tuned)", "gap closed % (seed / tuned)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += [line(str(r["seed"]), [r]) for r in rows]
    lines.append(line("mean ± std", rows))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("study_file", help="the study file whose [params] are the tuned config")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None, help="append one JSON line per seed")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for seed in args.seeds:
        row = one_seed(args.study_file, args.overrides, seed)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.out:
            with args.out.open("a") as f:
                f.write(json.dumps(row) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
