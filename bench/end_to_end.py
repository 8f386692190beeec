"""What a study finds on a model nobody tuned on, run the way a user runs the service.

For each base-model seed (a new data split and base model: pick seeds no study or
benchmark used), this runs, through the command line and on an SQLite file of its own:

    hpo launch STUDY --workers W --set task.seed=S ...   # the study, its trial budget
    hpo confirm NAME --top K --seeds C                   # its top trials on fresh SAE seeds
    hpo export NAME                                      # the confirmed best, re-scored

and reports, per seed, what the exported edit scores on test (worst group: every choice
was made on validation, test is only reported), how many components it changes, its
lift over each control, the references of its label regime, the trials the study ran
and the wall time of each phase. One JSON line per seed goes to --out as it finishes
(with the seed, the data checksum and the package versions), then a table.

    HPO_DATA_DIR=../shared/data/mnist .venv/bin/python bench/end_to_end.py \\
        studies/colored_mnist_sparse.toml --seeds 41 42 43 --label cnn099 \\
        --out bench/results/end_to_end_cnn099.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import optuna  # noqa: E402

from hpo.results import REGIME_REFERENCES  # noqa: E402
from hpo.storage.records import read_confirmed_best, read_trial  # noqa: E402
from hpo.versions import package_versions  # noqa: E402


class CommandFailed(Exception):
    """An `hpo` command exited non-zero; its last line says why."""


CPU_SECONDS: dict[str, float] = {}  # per command name: user + system seconds of its processes


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def hpo(*args: str, log: Path) -> float:
    """Run one `hpo` command (its output appended to `log`); its wall time in seconds.

    The CPU seconds of the command and its workers go to `CPU_SECONDS[args[0]]`: on a
    loaded machine they, not the wall time, say what a study costs.
    """
    start, cpu = time.perf_counter(), children_cpu()
    with log.open("a") as out:
        out.write(f"$ hpo {' '.join(args)}\n")
        out.flush()
        done = subprocess.run(
            [sys.executable, "-m", "hpo", *args], cwd=ROOT, stdout=out, stderr=out, check=False
        )
    if done.returncode != 0:
        last = log.read_text().strip().splitlines()[-1:] or [""]
        raise CommandFailed(f"hpo {args[0]}: exit {done.returncode}: {last[0]} (see {log})")
    CPU_SECONDS[args[0]] = children_cpu() - cpu
    return time.perf_counter() - start


def one_seed(args: argparse.Namespace, seed: int, work: Path) -> dict[str, Any]:
    name = f"e2e-{args.label}-seed{seed}"
    url = f"sqlite:///{work / name}.db"
    log = work / f"{name}.log"
    sets = [f"task.seed={seed}", f"study.name={name}", *args.set]
    if args.timeout:
        sets.append(f"study.timeout={args.timeout}")
    launch = ["launch", args.study_file, "--workers", str(args.workers), "--storage", url]
    launch += ["--n-trials", str(args.trials)] if args.trials else []
    for item in sets:
        launch += ["--set", item]
    walls = {"study": hpo(*launch, log=log)}
    out = work / name / "export"
    confirm = ["confirm", name, "--storage", url, "--top", str(args.top)]
    try:
        walls["confirm"] = hpo(*confirm, "--seeds", str(args.seeds_per), log=log)
        walls["export"] = hpo("export", name, "--storage", url, "--out", str(out), log=log)
    except CommandFailed as err:  # e.g. no feasible trial: a result too, recorded as such
        states = [t.state.name for t in optuna.load_study(study_name=name, storage=url).trials]
        trials = {s: states.count(s) for s in sorted(set(states))}
        return {"seed": seed, "error": str(err), "wall_seconds": walls, "trials": trials}
    metrics = json.loads((out / "metrics.json").read_text())
    config = json.loads((out / "config.json").read_text())
    study = optuna.load_study(study_name=name, storage=url)
    return summary(seed, study, metrics, config, walls)


def worst_groups(models: dict[str, Any], split: str) -> dict[str, float]:
    """Each model's worst-group accuracy on `split`, where metrics.json has it."""
    return {m: splits[split]["worst_group"] for m, splits in models.items() if split in splits}


def summary(
    seed: int,
    study: optuna.Study,
    metrics: dict[str, Any],
    config: dict[str, Any],
    walls: dict[str, float],
) -> dict[str, Any]:
    models = metrics["models"]
    test, val = (worst_groups(models, split) for split in ("test", "val"))
    regime = metrics.get("labels")
    states = [t.state.name for t in study.trials]
    records = [read_trial(t) for t in study.trials if t.state.name == "COMPLETE"]
    timings = {
        phase: statistics.fmean(r.timings[phase] for r in records if phase in r.timings)
        for phase in ("sae_training", "scoring", "edit", "controls")
        if any(phase in r.timings for r in records)
    }
    confirmed = read_confirmed_best(study)
    controls = {m: v for m, v in test.items() if m.startswith("control_")}
    return {
        "seed": seed,
        "exported_trial": metrics.get("trial"),
        "confirmed_trial": None if confirmed is None else confirmed.trial,
        "labels": regime,
        "test_worst_group": test,
        "val_worst_group": val,  # what chose α and ranked the trials
        "components": metrics.get("components_removed"),
        "edit_settings": metrics.get("edit_settings", {}),
        "lift_test": {m: test["debiased"] - v for m, v in controls.items()},
        "references": list(REGIME_REFERENCES.get(regime or "", ())),
        "trials": {s: states.count(s) for s in sorted(set(states))},
        "mean_trial_seconds": timings,
        "wall_seconds": walls,
        "cpu_seconds": {
            "study": CPU_SECONDS.get("launch"),
            **{k: CPU_SECONDS.get(k) for k in ("confirm", "export")},
        },
        "data_sha256": config["provenance"]["data_sha256"],
        "task": config["task"],
        "params": config["params"],
        "versions": config["provenance"]["versions"],
        "bench_versions": package_versions(),
    }


def pct(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.fmean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def table(rows: list[dict[str, Any]], split: str = "test") -> str:
    """Per-seed rows and their mean, worst-group accuracy on `split` ("test", or "val"
    where the run recorded it)."""
    key = f"{split}_worst_group"
    rows = [r for r in rows if key in r]
    if not rows:
        return f"(no run recorded {key})"
    names = ["debiased", "control_random", "control_svd"]
    refs = [r for r in rows[0]["references"] if r in rows[0][key]]
    names += [*refs, "original"]
    head = ["seed", "components", *names, "lift", "trials", "study min", "all min"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        t = r[key]
        cells = [str(r["seed"]), str(r["components"])]
        cells += [f"{100 * t[n]:.1f}" if n in t else "–" for n in names]
        controls = [v for m, v in t.items() if m.startswith("control_")]
        cells.append(f"{100 * (t['debiased'] - max(controls)):+.1f}" if controls else "–")
        cells += [
            str(r["trials"].get("COMPLETE", 0) + r["trials"].get("PRUNED", 0)),
            f"{r['wall_seconds']['study'] / 60:.1f}",
            f"{sum(r['wall_seconds'].values()) / 60:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    means = ["mean", "–"]
    means += [pct([r[key][n] for r in rows if n in r[key]]) for n in names]
    lifts = [
        r[key]["debiased"] - max(v for m, v in r[key].items() if m.startswith("control_"))
        for r in rows
    ]
    lines.append("| " + " | ".join(means + [pct(lifts), "", "", ""]) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("study_file", nargs="?")
    parser.add_argument("--seeds", type=int, nargs="+")
    parser.add_argument("--label", help="names the studies and their files")
    parser.add_argument(
        "--tables",
        type=Path,
        nargs="+",
        help="print the tables of earlier --out files, run nothing",
    )
    parser.add_argument(
        "--split", choices=["test", "val"], default="test", help="which split --tables shows"
    )
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--trials", type=int, help="study-wide trial budget (default: the file's)")
    parser.add_argument("--timeout", type=float, help="study.timeout in seconds")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--top", type=int, default=3, help="hpo confirm --top")
    parser.add_argument("--seeds-per", type=int, default=2, help="hpo confirm --seeds")
    parser.add_argument("--work", type=Path, help="folder for the studies (default: a temp one)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.tables:
        for path in args.tables:
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            print(f"{path}:\n{table([r for r in rows if 'error' not in r], args.split)}\n")
        return 0
    if not (args.study_file and args.seeds and args.label and args.out):
        parser.error("a run needs STUDY_FILE, --seeds, --label and --out")
    work = args.work or Path(tempfile.mkdtemp(prefix="e2e-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HPO_LOG_LEVEL", "WARNING")
    rows = []
    for seed in args.seeds:
        row = one_seed(args, seed, work)
        rows.append(row)
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
    done = [r for r in rows if "error" not in r]
    if done:
        print(table(done))
    for r in rows:
        if "error" in r:
            print(f"seed {r['seed']}: {r['error']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
