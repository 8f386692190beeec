"""The note on the best trial (every trial of a Pareto front): what was removed, and why.

Written by `sync_best_notes`: the worker calls it as each trial ends, so the note follows
the study live, and `hpo dashboard` calls it once at start (unless read-only) to repair
the one case a worker cannot see, two trials finishing at once. Only feasible trials
lead; a note a person wrote or edited is never overwritten.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from hpo.debias.strategies.registry import get_strategy
from hpo.errors import UserError
from hpo.outputs.group_rows import select_groups
from hpo.results import CONTROL_PREFIX, Edit
from hpo.storage import compat
from hpo.storage.attrs import BEST_NOTES_ATTR
from hpo.storage.records import (
    Confirmation,
    TrialRecord,
    read_confirmations,
    read_confirmed_best,
    read_trial,
    sign,
    stored_objectives,
)

BEST_HEADING = "### ★ Best trial"
FRONT_HEADING = "### ★ On the Pareto front"
SUPERSEDED_HEADING = "### Was best until trial"
LEFT_FRONT_HEADING = "### Left the Pareto front"
CONFIRMED_HEADING = "### ✓ Confirmed best (by mean validation over fresh seeds)"
OUR_HEADINGS = (BEST_HEADING, FRONT_HEADING, CONFIRMED_HEADING)


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _gain(before: float | None, after: float | None) -> str:
    if before is None or after is None:
        return "–"
    return f"{100 * (after - before):+.1f} pts"


def _summary(groups: Mapping[str, float | None]) -> tuple[float | None, float | None]:
    present = [v for v in groups.values() if v is not None]
    if not present:
        return None, None
    return min(present), sum(present) / len(present)


def _values_text(objectives: Sequence[str], values: Sequence[float]) -> str:
    return ", ".join(f"{name} = {v:.4g}" for name, v in zip(objectives, values, strict=False))


def best_note(
    record: TrialRecord,
    values: Sequence[float],
    objectives: Sequence[str],
    *,
    how: str | None = None,
    pareto: bool = False,
    confirmation: Confirmation | None = None,
    heading: str | None = None,
) -> str:
    """Markdown: what the trial removed (`how`: its edit strategy's words), what it
    gained on validation, and how it held up over fresh seeds (`hpo confirm`)."""
    heading = heading or (FRONT_HEADING if pareto else BEST_HEADING)
    lines = [f"{heading} ({_values_text(objectives, values)})", ""]
    if confirmation is not None:
        lines += [*confirmation_lines(confirmation, objectives[0]), ""]
    groups = record.val_groups
    if groups and record.edit is not None:
        lines += [*_edit_lines(record.edit, how), *_gain_lines(groups)]
        if "lift" in record.values:
            lines += [
                f"**Lift over the best control: {100 * record.values['lift']:+.1f} pts** "
                "(worst group, validation).",
                "",
            ]
    else:
        shown = [k for k in ("mmcs", "ml2r") if k in record.values]
        if shown:
            lines += [" · ".join(f"{k.upper()} {record.values[k]:.4f}" for k in shown), ""]
        controls = [  # the toy's: "control_random_mmcs", ...
            f"{k.removeprefix(CONTROL_PREFIX).removesuffix('_mmcs')} {v:.4f}"
            for k, v in record.values.items()
            if k.startswith(CONTROL_PREFIX) and k.endswith("_mmcs")
        ]
        if controls:
            lines += ["MMCS of the controls (learnt nothing): " + " · ".join(controls), ""]
    tail = [
        f"{label} {record.values[k]:.2e}"
        for k, label in (
            ("faithfulness_error", "faithfulness error"),
            ("reconstruction_error", "reconstruction error"),
            ("prediction_change", "predictions changed by ΣP"),
        )
        if k in record.values
    ]
    if record.seed is not None:
        tail.append(f"seed {record.seed}")
    if record.device is not None:
        tail.append(f"trained on {record.device}")
    if tail:
        lines += [" · ".join(tail) + ".", ""]
    if groups:
        lines.append("Test numbers: `hpo report`, `hpo export` (never shown to the sampler).")
    return "\n".join(lines)


def _edit_lines(edit: Edit, how: str | None) -> list[str]:
    """Short lines: the dashboard's note box does not wrap wide content."""
    removed = [
        f"- **Removed** part of **{len(removal.components)}** Faithful-SAE components "
        f"of the `{layer}` weight"
        if removal.fractions is not None
        else f"- **Removed** Faithful-SAE component(s) **{', '.join(map(str, removal.components))}"
        f"** of the `{layer}` weight"
        for layer, removal in edit.plan.removal.items()
    ]
    regime = {"concept": "concept labels only", "group": "group labels"}.get(edit.labels or "")
    return [
        *removed,
        f"- picked by: {how or edit.strategy}",
        *([f"- label regime: {regime} on probe"] if regime else []),
        f"- **α = {edit.alpha:.2f}**, chosen on validation",
        "",
    ]


def _gain_lines(groups: Mapping[str, Mapping[str, float | None]]) -> list[str]:
    lines = ["| validation | original | debiased | gain |", "|---|---:|---:|---:|"]
    o_worst, o_mean = _summary(groups["original"])
    d_worst, d_mean = _summary(groups["debiased"])
    lines.append(
        f"| **worst group** | {_pct(o_worst)} | {_pct(d_worst)} | **{_gain(o_worst, d_worst)}** |"
    )
    lines.append(f"| mean group | {_pct(o_mean)} | {_pct(d_mean)} | {_gain(o_mean, d_mean)} |")
    shown = select_groups(list(groups["original"]), [groups["original"], groups["debiased"]])
    for g in shown.listed:
        before, after = groups["original"].get(g), groups["debiased"].get(g)
        lines.append(f"| {g} | {_pct(before)} | {_pct(after)} | {_gain(before, after)} |")
    for label, statistic in shown.rest_rows():
        before = shown.summarise(groups["original"], statistic)
        after = shown.summarise(groups["debiased"], statistic)
        lines.append(f"| {label} | {_pct(before)} | {_pct(after)} | {_gain(before, after)} |")
    controls = [m for m in groups if m.startswith(CONTROL_PREFIX)]
    refs = [m for m in groups if m not in ("original", "debiased", *controls)]
    if controls:
        worst = ", ".join(
            f"{m.removeprefix(CONTROL_PREFIX)} {_pct(_summary(groups[m])[0])}" for m in controls
        )
        lines += ["", f"Controls (the same edit, decompositions that learnt nothing): {worst}."]
    if refs:
        worst = ", ".join(f"{m.replace('_', ' ')} {_pct(_summary(groups[m])[0])}" for m in refs)
        lines += ["", f"References, worst group on validation: {worst}."]
    lines.append("")
    return lines


def confirmation_lines(record: Confirmation, objective: str) -> list[str]:
    """`hpo confirm`'s record of a trial, in a few short lines."""
    val = record.val[objective]
    what = "new SAE and base model" if record.new_base_model else "new SAE"
    lines = [
        f"- **Confirmed** over {len(record.seeds)} fresh seeds ({what} each): {objective} "
        f"**{val.mean:.4f} ± {val.std:.4f}** (val)"
    ]
    test = record.test_worst_group
    if test is not None:
        lines.append(
            f"- test worst-group {_pct(test.mean)} ± {100 * test.std:.1f} pts "
            "(reported, never searched on)"
        )
    if record.test_lift is not None:
        lines.append(
            f"- lift over the controls {100 * record.test_lift.mean:+.1f} ± "
            f"{100 * record.test_lift.std:.1f} pts (test)"
        )
    if record.diverged:
        lines.append(f"- {record.diverged} run(s) diverged")
    return lines


def superseded_note(body: str, by: int | None) -> str:
    """The note of a trial that no longer leads (`by`: the trial that took over, None when
    it left a Pareto front): kept, with a heading that says so."""
    first, _, rest = body.partition("\n")
    was = first.split("(", 1)[1].rstrip(")") if "(" in first else ""
    heading = LEFT_FRONT_HEADING if by is None else f"{SUPERSEDED_HEADING} {by}"
    return f"{heading} ({was})\n{rest}"


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
    objectives = stored_objectives(study) or ["value"]
    pareto = len(study.directions) > 1
    by_id = {compat.trial_id(t): t for t in trials}
    confirmed = read_confirmations(study)
    best = read_confirmed_best(study)
    extra = [t for t in trials if best is not None and t.number == best.trial and t not in front]
    how = _describer(study)
    desired: dict[int, str] = {}
    for t in list(front) + extra:
        desired[compat.trial_id(t)] = best_note(
            read_trial(t),
            t.values,
            objectives,
            how=how(t),
            pareto=pareto,
            confirmation=confirmed.get(t.number),
            heading=CONFIRMED_HEADING if t in extra else None,
        )
    system_attrs = storage.get_study_system_attrs(study_id)
    ours: dict[str, str] = dict(system_attrs.get(BEST_NOTES_ATTR, {}))
    for key, body in ours.items():
        tid = int(key)
        if tid not in desired and tid in by_id and body.startswith(OUR_HEADINGS):
            desired[tid] = superseded_note(body, None if pareto else front[0].number)
    changed = []
    for tid, body in desired.items():
        note = compat.get_note(system_attrs, tid)
        if note["body"] == body or (note["body"] and note["body"] != ours.get(str(tid))):
            continue  # up to date, or a person's own note
        compat.save_note(storage, study_id, tid, note["version"] + 1, body)
        ours[str(tid)] = body
        changed.append(by_id[tid].number)
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
