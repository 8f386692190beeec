"""The note on the best trial (every trial of a Pareto front): what was removed, and why.

Written by `sync_best_notes`: the worker calls it as each trial ends, so the note follows
the study live, and `hpo dashboard` calls it once at start (unless read-only) to repair
the one case a worker cannot see, two trials finishing at once. Only feasible trials
lead; a note a person wrote or edited is never overwritten.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from hpo.debias.strategies.registry import get_strategy
from hpo.errors import UserError
from hpo.outputs.note_text import CONFIRMED_HEADING, OUR_HEADINGS, best_note, superseded_note
from hpo.storage import compat
from hpo.storage.attrs import BEST_NOTES_ATTR
from hpo.storage.records import (
    read_confirmations,
    read_confirmed_best,
    read_trial,
    sign,
    stored_objectives,
)


def leaders(
    trials: Sequence[FrozenTrial], directions: Sequence[StudyDirection]
) -> list[FrozenTrial]:
    """The best feasible complete trial (one objective) or the Pareto front (several)."""
    done = [
        t
        for t in trials
        if t.state == TrialState.COMPLETE
        and t.values is not None
        and all(math.isfinite(v) for v in t.values)
        and all(c <= 0 for c in t.constraints.values())
    ]
    if not done:
        return []
    signs = [sign(d) for d in directions]
    scores = {t.number: [s * v for s, v in zip(signs, t.values, strict=True)] for t in done}
    if len(directions) == 1:
        return [max(done, key=lambda t: (scores[t.number][0], -t.number))]

    def dominates(a: list[float], b: list[float]) -> bool:
        return all(x >= y for x, y in zip(a, b, strict=True)) and a != b

    return [t for t in done if not any(dominates(scores[o.number], scores[t.number]) for o in done)]


def as_complete(trial: FrozenTrial, values: Sequence[float]) -> FrozenTrial:
    """A running trial as it will be stored once its objective returns `values`."""
    return FrozenTrial(
        number=trial.number,
        state=TrialState.COMPLETE,
        value=None,
        values=list(values),
        datetime_start=trial.datetime_start,
        datetime_complete=trial.datetime_start,
        params=trial.params,
        distributions=trial.distributions,
        user_attrs=trial.user_attrs,
        system_attrs=trial.system_attrs,  # its constraints: only feasible trials lead
        intermediate_values=trial.intermediate_values,
        trial_id=compat.trial_id(trial),
    )


def sync_best_notes(
    study: optuna.Study, pending: tuple[int, Sequence[float]] | None = None
) -> list[int]:
    """Note the leading trial(s); mark trials we noted earlier that no longer lead.

    `pending` is (trial_id, values) of a trial whose objective is about to return: the
    worker counts it as complete already. A note a person wrote or edited is never
    overwritten. Returns the numbers of the trials whose note changed.
    """
    storage, study_id = compat.storage_of(study), compat.study_id(study)
    trials = list(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if pending is not None:
        trial = as_complete(storage.get_trial(pending[0]), pending[1])
        trials = [t for t in trials if compat.trial_id(t) != pending[0]] + [trial]
    front = leaders(trials, study.directions)
    if not front:
        return []
    by_id = {compat.trial_id(t): t for t in trials}
    desired = _leader_notes(study, trials, front)
    system_attrs = storage.get_study_system_attrs(study_id)
    ours: dict[str, str] = dict(system_attrs.get(BEST_NOTES_ATTR, {}))
    by = None if len(study.directions) > 1 else front[0].number
    for key, body in ours.items():
        tid = int(key)
        if tid not in desired and tid in by_id and body.startswith(OUR_HEADINGS):
            desired[tid] = superseded_note(body, by)
    changed = _save_changed(storage, study_id, system_attrs, ours, desired)
    return [by_id[tid].number for tid in changed]


def _leader_notes(
    study: optuna.Study, trials: Sequence[FrozenTrial], front: Sequence[FrozenTrial]
) -> dict[int, str]:
    """trial_id -> the note each leading trial should carry, and the confirmed best's
    (`hpo confirm`) when it is not among them."""
    objectives = stored_objectives(study) or ["value"]
    pareto = len(study.directions) > 1
    confirmed = read_confirmations(study)
    best = read_confirmed_best(study)
    extra = [t for t in trials if best is not None and t.number == best.trial and t not in front]
    how = _describer(study)
    return {
        compat.trial_id(t): best_note(
            read_trial(t),
            t.values,
            objectives,
            how=how(t),
            pareto=pareto,
            confirmation=confirmed.get(t.number),
            heading=CONFIRMED_HEADING if t in extra else None,
        )
        for t in [*front, *extra]
    }


def _save_changed(
    storage: BaseStorage,
    study_id: int,
    system_attrs: dict[str, Any],
    ours: dict[str, str],
    desired: dict[int, str],
) -> list[int]:
    """Save each desired note that is not stored yet, skipping a person's own; `ours`
    (the notes we wrote, by trial id) is updated and stored. Returns the trial ids saved."""
    changed = []
    for tid, body in desired.items():
        note = compat.get_note(system_attrs, tid)
        if note["body"] == body or (note["body"] and note["body"] != ours.get(str(tid))):
            continue  # up to date, or a person's own note
        compat.save_note(storage, study_id, tid, note["version"] + 1, body)
        ours[str(tid)] = body
        changed.append(tid)
    if changed:
        storage.set_study_system_attr(study_id, BEST_NOTES_ATTR, ours)
    return changed


def _describer(study: optuna.Study) -> Callable[[FrozenTrial], str | None]:
    """trial -> how its edit strategy chose, in its own words (None: it made no edit, or
    the stored study file no longer reads). The study file is read once per call."""
    from hpo.service.search_space import trial_params
    from hpo.service.study_file import study_file_of

    try:
        study_file = study_file_of(study)
    except UserError:
        return lambda _: None

    def how(trial: FrozenTrial) -> str | None:
        try:
            params = trial_params(study_file, trial)
            return get_strategy(params.ablate).describe(params, ())
        except ValueError:
            return None

    return how


def publish_for_dashboard(trial: optuna.Trial, store: Any, values: tuple[float, ...]) -> None:
    """The trial's charts as SVG artifacts (the dashboard previews image/* inline), and
    the note on the best trial, kept current as each trial ends (`sync_best_notes`)."""
    from optuna.artifacts import upload_artifact

    from hpo.outputs.charts import trial_charts

    with tempfile.TemporaryDirectory() as tmp:
        for name, svg in trial_charts(read_trial(trial), trial.number).items():
            path = Path(tmp) / name
            path.write_text(svg)
            upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial)
    sync_best_notes(trial.study, pending=(compat.trial_id(trial), values))
