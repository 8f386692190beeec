"""The human-readable view of one trial's result (`hpo trial`; `--json` is `to_json`)."""

from __future__ import annotations

from hpo.outputs.group_rows import GroupSelection, select_groups
from hpo.results import TrialResult

PHASES = (
    "data",
    "factory",
    "base_model",
    "activations",
    "references",
    "load",
    "sae_training",
    "scoring",
)


def _pct(x: float | None) -> str:
    return "    -" if x is None else f"{100 * x:5.1f}"


def format_result(result: TrialResult) -> str:
    p = result.provenance
    head = result.task
    if p is not None:
        head += (
            f" · seed {p.seed} · data sha256 {p.data_sha256[:12]} · base model {p.base_model[:12]}"
        )
    lines = [head]
    if result.models:
        lines += _group_table(result)
    else:
        values = result.values()
        lines.append(" · ".join(f"{k} {v:.6g}" for k, v in values.items()))  # MMCS 0.99995
    t = result.timings
    shown = [k for k in PHASES if k in t]
    lines.append("time: " + " · ".join(f"{k.replace('_', ' ')} {t[k]:.1f} s" for k in shown))
    return "\n".join(lines)


def _group_table(result: TrialResult) -> list[str]:
    models = result.model_names()
    splits = [s for s in ("val", "test") if result.metric("original", s) is not None]
    cols = [(m, s) for m in models for s in splits]
    groups = select_groups(result.group_names, _val_groups(result))
    width = max(
        12, *(len(g) for g in groups.listed), *(len(label) for label, _ in groups.rest_rows())
    )
    top = " " * width + "".join(f"{_label(m):>{7 * len(splits)}}" for m in models)
    sub = " " * width + "".join(f"{s:>7}" for _, s in cols)
    return [
        *_edit_lines(result),
        top,
        sub,
        *_accuracy_rows(result, groups, cols, width),
        *_lift_and_gap_lines(result, splits),
    ]


def _edit_lines(result: TrialResult) -> list[str]:
    """What the edit removed and at which α, above the table; nothing without an edit."""
    edit = result.edit
    if edit is None:
        return []
    removed = "; ".join(
        f"{k} {v}" if edit.fractions is None else f"{k}: part of {len(v)}"
        for k, v in edit.components.items()
    )
    return [
        f"alpha {edit.alpha:.2f} (chosen on val) · ablated components {removed} · "
        f"faithfulness error {result.errors['faithfulness_error']:.2e}",
        regime_line(result),
    ]


def _accuracy_rows(
    result: TrialResult, groups: GroupSelection, cols: list[tuple[str, str]], width: int
) -> list[str]:
    """One row per listed group and summary statistic, then one per statistic of the
    groups not listed; a column per (model, split)."""
    lines = []
    rows = [(g, g) for g in groups.listed]
    rows += [("worst group", "worst_group"), ("mean group", "mean_group"), ("overall", "overall")]
    for label, key in rows:
        cells = []
        for m, s in cols:
            metric = result.metric(m, s)
            cells.append(f"  {_pct(None if metric is None else metric.get(key))}")
        lines.append(f"{label:<{width}}" + "".join(cells))
    for label, statistic in groups.rest_rows():  # the groups not listed, in one line each statistic
        cells = []
        for m, s in cols:
            metric = result.metric(m, s)
            value = None if metric is None else groups.summarise(metric.groups, statistic)
            cells.append(f"  {_pct(value)}")
        lines.append(f"{label:<{width}}" + "".join(cells))
    return lines


def _lift_and_gap_lines(result: TrialResult, splits: list[str]) -> list[str]:
    """Below the table: the lift over the controls, then the gap closed, split by split."""
    lines = []
    for s in splits:
        lift = result.lift(s)
        if lift is not None:
            lines.append(
                f"lift on {s}: {100 * lift:+.1f} pts worst group over the best control "
                "(ctrl: the same edit of the SAE before training, of the weight's SVD)"
            )
    for s in splits:
        gap = result.gap_closed(s)
        if gap is not None:
            lines.append(
                f"gap closed on {s}: {100 * gap[0]:.0f}% of the way from original to "
                f"{gap[1].replace('_', ' ')} (worst group)"
            )
    return lines


def _val_groups(result: TrialResult) -> list[dict[str, float | None]]:
    """Every model's validation accuracy per group: what the groups listed are chosen by."""
    found = (result.metric(m, "val") for m in result.model_names())
    return [dict(m.groups) for m in found if m is not None]


def _label(model: str) -> str:
    """A model's column heading, short enough to leave a space before it."""
    if model.startswith("control_"):
        return f"ctrl {model.removeprefix('control_')}"
    return model.replace("_", " ")


def regime_line(result: TrialResult) -> str:
    """Which probe labels the edit's fit used, and so which references it answers to."""
    edit = result.edit
    labels = None if edit is None else edit.labels
    refs = result.compare_with()
    count = 0 if edit is None else edit.components_removed
    what = {"concept": "concept labels only", "group": "group labels"}.get(labels or "", "?")
    return f"label regime: {what} on probe (compare with {refs}) · {count} components removed"
