"""`hpo confirm`: re-run the best configurations with fresh seeds before trusting one.

The best of many trials on one validation split is optimistic: some of its lead is the
luck of its seed. Confirmation re-runs the top N feasible configurations with S new SAE
seeds (and, as an option, new base-model seeds: a new base model, new data split), and
records mean ± std of every objective on validation in the study (user attr
`confirmation`, by trial number). The test numbers are recorded beside them for reporting only; the
confirmed best is chosen by mean validation value. `hpo export` then exports it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.config import StudyFile
from hpo.errors import DivergedError, UserError
from hpo.results import TrialResult
from hpo.storage.records import (
    Confirmation,
    ConfirmationRun,
    ConfirmedBest,
    Spread,
    sign,
    write_confirmation,
    write_confirmed_best,
)
from hpo.tasks.base import TaskContext

SEED_OFFSET = 1000  # confirmation seeds never repeat a study's own seed (0, 1, ...)


def feasible(t: FrozenTrial) -> bool:
    return all(c <= 0 for c in t.constraints.values())


def top_trials(study: optuna.Study, n: int) -> list[FrozenTrial]:
    """The n best feasible complete trials by the first objective."""
    done = [
        t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if feasible(t)
    ]
    if not done:
        raise UserError(f"study {study.study_name!r} has no complete feasible trial to confirm")
    first = sign(study.directions[0])
    return sorted(done, key=lambda t: (-first * t.values[0], t.number))[:n]


def confirm_trial(
    study: optuna.Study,
    study_file: StudyFile,
    trial: FrozenTrial,
    ctx: TaskContext,
    *,
    seeds: list[int],
    new_base_model: bool,
    data_dir: str | None,
) -> Confirmation:
    """Re-run one trial's configuration with each seed; mean ± std per objective."""
    from hpo.service.search_space import trial_params
    from hpo.service.trial import prepare_task, run_trial

    base = trial_params(study_file, trial)
    objectives = list(study_file.study.objectives)
    collected = _Runs(val={name: [] for name in objectives})
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
            collected.diverged += 1
            continue
        collected.add(seed, result)
        _say(
            f"trial {trial.number} seed {seed}: "
            + ", ".join(f"{n} {result.value(n):.4f}" for n in objectives)
        )
    if not collected.val[objectives[0]]:
        raise UserError(f"trial {trial.number}: every confirmation run diverged")
    return collected.confirmation(seeds, new_base_model)


@dataclass
class _Runs:
    """What one configuration's confirmation runs gave so far, in seed order: each
    objective's validation values, test worst-group, lifts, and the runs that diverged."""

    val: dict[str, list[float]]
    test: list[float] = field(default_factory=list)
    lifts: dict[str, list[float]] = field(default_factory=lambda: {"val": [], "test": []})
    runs: list[ConfirmationRun] = field(default_factory=list)
    diverged: int = 0

    def add(self, seed: int, result: TrialResult) -> None:
        for name, values in self.val.items():
            values.append(result.value(name))
        metric = result.metric("debiased", "test")
        if metric is not None:
            self.test.append(metric.worst_group)
        for split, values in self.lifts.items():
            if (lift := result.lift(split)) is not None:
                values.append(lift)
        self.runs.append(run_record(seed, result))

    def confirmation(self, seeds: list[int], new_base_model: bool) -> Confirmation:
        """Mean ± std of what was collected (a spread of nothing is left out)."""
        lifts = self.lifts
        return Confirmation(
            seeds=seeds,
            new_base_model=new_base_model,
            diverged=self.diverged,
            val={name: Spread.of(v) for name, v in self.val.items()},
            test_worst_group=Spread.of(self.test) if self.test else None,
            runs=self.runs,
            val_lift=Spread.of(lifts["val"]) if lifts["val"] else None,
            test_lift=Spread.of(lifts["test"]) if lifts["test"] else None,
        )


def run_record(seed: int, result: TrialResult) -> ConfirmationRun:
    """One confirmation run as the report reads it: test worst-group of every model (the
    references are the run's own: a new base model has new ones), errors, gap closed."""
    return ConfirmationRun(
        seed=seed,
        val=dict(result.objectives),
        errors=dict(result.errors),
        test_worst_group={
            name: m.worst_group
            for name in result.model_names()
            if (m := result.metric(name, "test")) is not None
        },
        gap_closed=result.gap_closed("test"),
    )


def confirm(
    name: str,
    cli_url: str | None,
    *,
    top: int,
    seeds: int,
    new_base_model: bool,
    data_dir: str | None,
    on_confirmed: Callable[[optuna.Study], object] | None = None,
) -> list[Confirmed]:
    """Re-run the `top` best feasible trials with `seeds` fresh seeds; store each trial's
    record and the confirmed best in the study, then call `on_confirmed(study)` (the CLI
    passes hpo.outputs.notes.sync_best_notes: the dashboard notes show the confirmation;
    what it returns is not used)."""
    from hpo.service.studies import load_study, worker_context
    from hpo.service.study_file import study_file_of
    from hpo.storage.urls import study_url

    if top < 1 or seeds < 1:
        raise UserError(f"--top and --seeds must be at least 1, got {top} and {seeds}")
    url = study_url(name, cli_url)
    study = load_study(name, url)
    study_file = study_file_of(study)
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
        write_confirmation(study, trial.number, record)
        rows.append(Confirmed(trial.number, trial.values[0], record))
    _write_best(study, study_file.study.objectives[0], rows, len(seed_list), new_base_model)
    if on_confirmed is not None:
        on_confirmed(study)
    return rows


def _write_best(
    study: optuna.Study, objective: str, rows: list[Confirmed], seeds: int, new_base_model: bool
) -> None:
    """Store the confirmed best: the highest mean validation value of the first
    objective (by its direction), the lower trial number on a tie."""
    first = sign(study.directions[0])
    best = max(rows, key=lambda r: (first * r.record.val[objective].mean, -r.trial))
    write_confirmed_best(
        study,
        ConfirmedBest(
            trial=best.trial,
            objective=objective,
            mean=best.record.val[objective].mean,
            seeds=seeds,
            top=len(rows),
            new_base_model=new_base_model,
        ),
    )


@dataclass(frozen=True)
class Confirmed:
    """One confirmed trial: its number, its value in the study, its confirmation."""

    trial: int
    value: float
    record: Confirmation


def format_rows(rows: list[Confirmed], objective: str) -> str:
    def spread(x: Spread | None) -> str:
        return "-" if x is None else f"{100 * x.mean:.1f} ± {100 * x.std:.1f}"

    lines = [
        f"{'trial':>5}  {'study value':>11}  {objective + ' (val) mean ± std':>28}  "
        f"{'test worst group':>18}  {'lift over controls (test)':>26}"
    ]
    for r in rows:
        v = r.record.val[objective]
        test, lift = spread(r.record.test_worst_group), spread(r.record.test_lift)
        lines.append(
            f"{r.trial:>5}  {r.value:>11.4f}  {v.mean:>19.4f} ± {v.std:.4f}  {test + '%':>18}  "
            f"{(lift + ' pts') if r.record.test_lift else '-':>26}"
        )
    return "\n".join(lines)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
