"""`hpo confirm`: re-run the best configurations with fresh seeds before trusting one.

The best of many trials on one validation split is optimistic: some of its lead is the
luck of its seed. Confirmation re-runs the top N feasible configurations with S new SAE
seeds (and, as an option, new base-model seeds: a new base model, new data split), and
records mean ± std of every objective on validation in the study (user attr
`confirmation`, by trial number). The test numbers are recorded beside them for reporting only; the
confirmed best is chosen by mean validation value. `hpo export` then exports it.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.config import StudyFile
from hpo.errors import DivergedError, UserError
from hpo.storage.attrs import CONFIRMATION_ATTR, CONFIRMED_BEST_ATTR, STUDY_FILE_ATTR

SEED_OFFSET = 1000  # confirmation seeds never repeat a study's own seed (0, 1, ...)


def summarize(values: list[float]) -> dict[str, Any]:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "values": values}


def feasible(t: FrozenTrial) -> bool:
    return all(c <= 0 for c in t.constraints.values())


def top_trials(study: optuna.Study, n: int) -> list[FrozenTrial]:
    """The n best feasible complete trials by the first objective."""
    done = [
        t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if feasible(t)
    ]
    if not done:
        raise UserError(f"study {study.study_name!r} has no complete feasible trial to confirm")
    sign = 1 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else -1
    return sorted(done, key=lambda t: (-sign * t.values[0], t.number))[:n]


def confirm_trial(
    study: optuna.Study,
    study_file: StudyFile,
    trial: FrozenTrial,
    ctx: Any,
    *,
    seeds: list[int],
    new_base_model: bool,
    data_dir: str | None,
) -> dict[str, Any]:
    """Re-run one trial's configuration with each seed; mean ± std per objective."""
    from hpo.service.search_space import trial_params
    from hpo.service.trial import prepare_task, run_trial

    base = trial_params(study_file, trial)
    objectives = list(study_file.study.objectives)
    val: dict[str, list[float]] = {name: [] for name in objectives}
    test: list[float] = []
    runs: list[dict[str, Any]] = []
    diverged = 0
    for seed in seeds:
        params = base.model_copy(update={"seed": seed})
        run_file, run_ctx = study_file, ctx
        if new_base_model:
            task = study_file.task.model_copy(update={"seed": seed})
            run_file = study_file.model_copy(update={"task": task})
            run_ctx = prepare_task(run_file, data_dir=data_dir, progress=False)
        try:
            result, _ = run_trial(run_file, run_ctx, params, with_test=True)
        except DivergedError:
            diverged += 1
            continue
        for name in objectives:
            val[name].append(result.value(name))
        metric = result.metric("debiased", "test")
        if metric is not None:
            test.append(metric.worst_group)
        runs.append(run_record(seed, result))
        _say(
            f"trial {trial.number} seed {seed}: "
            + ", ".join(f"{n} {result.value(n):.4f}" for n in objectives)
        )
    if not val[objectives[0]]:
        raise UserError(f"trial {trial.number}: every confirmation run diverged")
    return {
        "seeds": seeds,
        "new_base_model": new_base_model,
        "diverged": diverged,
        "val": {name: summarize(v) for name, v in val.items()},
        "test_worst_group": summarize(test) if test else None,
        "runs": runs,
    }


def run_record(seed: int, result: Any) -> dict[str, Any]:
    """One confirmation run as the report reads it: test worst-group of every model (the
    references are the run's own: a new base model has new ones), errors, gap closed."""
    gap = result.gap_closed("test")
    return {
        "seed": seed,
        "val": dict(result.objectives),
        "errors": dict(result.errors),
        "test_worst_group": {
            name: m.worst_group
            for name in result.model_names()
            if (m := result.metric(name, "test")) is not None
        },
        "gap_closed": None if gap is None else {"fraction": gap[0], "towards": gap[1]},
    }


def confirm(
    name: str,
    cli_url: str | None,
    *,
    top: int,
    seeds: int,
    new_base_model: bool,
    data_dir: str | None,
    on_confirmed: Callable[[optuna.Study], None] | None = None,
) -> list[dict[str, Any]]:
    """Re-run the `top` best feasible trials with `seeds` fresh seeds; store each trial's
    record and the confirmed best in the study, then call `on_confirmed(study)` (the CLI
    passes hpo.outputs.notes.sync_best_notes: the dashboard notes show the confirmation)."""
    from hpo.service.studies import load_study, worker_context
    from hpo.service.study_file import stored_study_file
    from hpo.storage.urls import study_url

    if top < 1 or seeds < 1:
        raise UserError(f"--top and --seeds must be at least 1, got {top} and {seeds}")
    url = study_url(name, cli_url)
    study = load_study(name, url)
    study_file = stored_study_file(study.user_attrs[STUDY_FILE_ATTR], name)
    ctx = worker_context(study, study_file, url)
    chosen = top_trials(study, top)
    seed_list = [SEED_OFFSET + i for i in range(seeds)]
    rows = []
    for trial in chosen:
        record = confirm_trial(
            study,
            study_file,
            trial,
            ctx,
            seeds=seed_list,
            new_base_model=new_base_model,
            data_dir=data_dir,
        )
        # A finished trial cannot change: confirmations live in the study, by trial number.
        done = dict(study.user_attrs.get(CONFIRMATION_ATTR, {}))
        done[str(trial.number)] = record
        study.set_user_attr(CONFIRMATION_ATTR, done)
        rows.append({"trial": trial.number, "value": trial.values[0], **record})
    objective = study_file.study.objectives[0]
    sign = 1 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else -1
    best = max(rows, key=lambda r: (sign * r["val"][objective]["mean"], -r["trial"]))
    study.set_user_attr(
        CONFIRMED_BEST_ATTR,
        {
            "trial": best["trial"],
            "objective": objective,
            "mean": best["val"][objective]["mean"],
            "seeds": len(seed_list),
            "top": len(rows),
            "new_base_model": new_base_model,
        },
    )
    if on_confirmed is not None:
        on_confirmed(study)
    return rows


def format_rows(rows: list[dict[str, Any]], objective: str) -> str:
    lines = [
        f"{'trial':>5}  {'study value':>11}  {objective + ' (val) mean ± std':>28}  "
        f"{'test worst group':>18}"
    ]
    for r in rows:
        v = r["val"][objective]
        t = r["test_worst_group"]
        test = "-" if t is None else f"{100 * t['mean']:.1f} ± {100 * t['std']:.1f}%"
        lines.append(
            f"{r['trial']:>5}  {r['value']:>11.4f}  {v['mean']:>19.4f} ± {v['std']:.4f}  {test:>18}"
        )
    return "\n".join(lines)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
