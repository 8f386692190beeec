"""The words of the note on a leading trial: what was removed, what it gained, and how
it held up over fresh seeds. Markdown only, from what the trial stored; `hpo.outputs.notes`
decides which trials get a note and writes it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from hpo.outputs.group_rows import select_groups
from hpo.results import CONTROL_PREFIX, Edit
from hpo.storage.records import Confirmation, TrialRecord

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
        lines += _decomposition_lines(record)
    lines += _errors_line(record)
    if groups:
        lines.append("Test numbers: `hpo report`, `hpo export` (never shown to the sampler).")
    return "\n".join(lines)


def _decomposition_lines(record: TrialRecord) -> list[str]:
    """A trial with no groups (the toy): how well it recovered the true features, and
    what the controls, which learnt nothing, score on the same measure."""
    lines: list[str] = []
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
    return lines


def _errors_line(record: TrialRecord) -> list[str]:
    """The SAE's errors, seed and device in one line (none when nothing was recorded)."""
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
    return [" · ".join(tail) + ".", ""] if tail else []


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
