"""Which trial `hpo export` hands over, and the sentence that says why.

One objective: the confirmed best (`hpo confirm`: the mean over fresh seeds) where there
is one, else Optuna's best feasible trial, or the trial `--trial` names. Several
objectives have no single best: `--trial` must name a trial of the Pareto front.
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.errors import UserError
from hpo.storage.records import read_confirmed_best, stored_objectives


def _front_text(front: list[FrozenTrial], objectives: list[str]) -> str:
    return "; ".join(
        f"trial {t.number} ("
        + ", ".join(f"{n}={v:.4g}" for n, v in zip(objectives, t.values, strict=False))
        + ")"
        for t in sorted(front, key=lambda t: t.number)
    )


def pick_trial(study: optuna.Study, number: int | None) -> tuple[FrozenTrial, str]:
    """The best trial, or trial `number`; on a multi-objective study, one of the front."""
    objectives = stored_objectives(study) or [f"value{i}" for i in range(len(study.directions))]
    complete = {t.number: t for t in study.get_trials(states=(TrialState.COMPLETE,))}
    if not complete:
        raise UserError(f"study {study.study_name!r} has no complete trial yet")
    if len(study.directions) > 1:
        front = study.best_trials
        listing = _front_text(front, objectives)
        if number is None:
            raise UserError(
                f"study {study.study_name!r} has {len(study.directions)} objectives: pick a "
                f"trial of its Pareto front with --trial N: {listing}"
            )
        if number not in {t.number for t in front}:
            raise UserError(
                f"--trial {number}: not on the Pareto front of study "
                f"{study.study_name!r}; the front: {listing}"
            )
        return complete[number], f"trial {number}: chosen with --trial from the Pareto front"
    if number is None:
        confirmed = read_confirmed_best(study)
        if confirmed is not None and confirmed.trial in complete:
            why = (
                f"trial {confirmed.trial}: the confirmed best by mean validation "
                f"{confirmed.objective} ({confirmed.mean:.4f}) over {confirmed.seeds} "
                f"fresh seeds among the top {confirmed.top} trials (hpo confirm)"
            )
            return complete[confirmed.trial], why
        best = study.best_trial
        why = (
            f"trial {best.number}: the best feasible trial by validation value "
            f"({best.value:.4f}); hpo confirm would choose by the mean over fresh seeds"
        )
        return best, why
    if number not in complete:
        raise UserError(
            f"--trial {number}: study {study.study_name!r} has no complete trial {number}; "
            f"complete trials: {', '.join(str(n) for n in sorted(complete))}"
        )
    return complete[number], f"trial {number}: chosen with --trial"
