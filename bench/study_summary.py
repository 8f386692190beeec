"""Summarise a finished study for BENCHMARKS.md: counts, wall time, best val worst-group
accuracy and that trial's test worst-group accuracy (re-scored from its stored weights).

    python bench/study_summary.py STUDY [--storage URL]
"""

from __future__ import annotations

import argparse

import optuna

from hpo.outputs.rescore import rescore
from hpo.service.studies import load_study, trial_counts
from hpo.storage.attrs import PRUNED_AT_STEP_ATTR
from hpo.storage.urls import study_url


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("study")
    ap.add_argument("--storage")
    args = ap.parse_args()
    url = study_url(args.study, args.storage)
    study = load_study(args.study, url)
    trials = study.get_trials(deepcopy=False)
    counts = trial_counts(study)
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    wall = (max(ends) - min(starts)).total_seconds() if starts and ends else float("nan")
    best = study.best_trial
    r = rescore(study, url, best)
    print(f"| study | {args.study} |")
    print(
        f"| trials complete / pruned / failed | {counts['complete']} / {counts['pruned']} / "
        f"{counts['failed']} |"
    )
    print(f"| wall time (first start to last end) | {wall / 60:.1f} min |")
    print(
        f"| best trial | {best.number} (alpha {r.result.edit.alpha}, params "
        f"{ {k: round(v, 4) if isinstance(v, float) else v for k, v in best.params.items()} }) |"
    )
    for name in r.result.model_names():
        val, test = r.result.metric(name, "val"), r.result.metric(name, "test")
        print(
            f"| {name} worst-group val / test | {100 * val.worst_group:.1f} % / "
            f"{100 * test.worst_group:.1f} % |"
        )
    pruned_at = [
        t.user_attrs.get(PRUNED_AT_STEP_ATTR)
        for t in trials
        if t.state == optuna.trial.TrialState.PRUNED
    ]
    print(f"| pruned at steps | {sorted(pruned_at)} |")
    if r.mismatches:
        print(f"| re-score mismatches | {r.mismatches} |")


if __name__ == "__main__":
    main()
