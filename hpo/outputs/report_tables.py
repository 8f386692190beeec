"""The tables of `hpo report`: the study, its best trial (validation numbers as recorded,
test numbers re-scored from the stored weights), a Pareto front and `hpo confirm`'s
fresh-seed runs. HTML strings, built from what was stored or re-scored; the page around
them is `hpo.outputs.report`.
"""

from __future__ import annotations

import html
import statistics

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.outputs.group_rows import select_groups
from hpo.outputs.report_figures import objective_names
from hpo.outputs.rescore import Rescored
from hpo.results import MODEL_ORDER, TrialResult
from hpo.storage.attrs import BUDGET_ATTR
from hpo.storage.engine import mask
from hpo.storage.records import Confirmation, read_confirmations, read_confirmed_best


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    thead = f"<thead><tr>{th}</tr></thead>" if any(head) else ""
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{thead}<tbody>{body}</tbody></table>"


def summary_table(study: optuna.Study, url: str, trials: list[FrozenTrial]) -> str:
    """Which study, where it is stored (any password masked), its objectives and how its
    trials ended."""
    counts = {s.name: sum(1 for t in trials if t.state == s) for s in TrialState}
    names = objective_names(study)
    directions = [d.name.lower() for d in study.directions]
    rows = [
        ["study", html.escape(study.study_name)],
        ["storage", html.escape(mask(url))],
        [
            "objectives",
            html.escape(", ".join(f"{n} ({d})" for n, d in zip(names, directions, strict=False))),
        ],
        [
            "trials",
            html.escape(", ".join(f"{n.lower()} {c}" for n, c in counts.items() if c) or "none"),
        ],
        ["budget", html.escape(str(study.user_attrs.get(BUDGET_ATTR, "–")))],
    ]
    return _table(["", ""], rows)


def best_table(r: Rescored) -> str:
    """The best trial: its params, edit and validation values, then its accuracy per
    model and split, and a warning when re-scoring does not reproduce it."""
    out = _table(["best trial", ""], _best_rows(r))
    if r.result.models:
        out += _accuracy_table(r.result)
    if r.mismatches:
        out += (
            "<p class='warn'>Re-scoring the stored weights does not reproduce the recorded "
            "validation numbers: " + html.escape("; ".join(r.mismatches)) + "</p>"
        )
    return out


def _best_rows(r: Rescored) -> list[list[str]]:
    res = r.result
    rows = [
        ["trial", str(r.trial.number)],
        [
            "values (val)",
            html.escape(
                ", ".join(
                    f"{n} = {v:.4g}"
                    for n, v in zip(objective_names(r.study), r.trial.values, strict=False)
                )
            ),
        ],
    ]
    rows += [
        [html.escape(k), html.escape(f"{v:.4g}" if isinstance(v, float) else str(v))]
        for k, v in sorted(r.trial.params.items())
    ]
    if res.edit is not None:
        for layer, removal in res.edit.plan.removal.items():
            rows.append([f"removed from {html.escape(layer)}", html.escape(removal.describe())])
        rows.append(["α (chosen on val)", f"{res.edit.alpha:.3g}"])
    for key, value in res.values().items():
        rows.append([key.replace("_", " ") + " (val)", f"{value:.3g}"])
    rows.append(
        [
            "seed · data sha256",
            html.escape(f"{r.record.seed} · {str(r.record.data_sha256)[:16]}…"),
        ]
    )
    if r.record.device is not None:
        rows.append(["trained on", html.escape(r.record.device)])
    return rows


def _accuracy_table(res: TrialResult) -> str:
    """Accuracy by group, a column per model and split; past a dozen groups the worst on
    validation are listed and the rest summarised."""
    cols = [(m, s) for m in res.model_names() for s in ("val", "test") if res.metric(m, s)]
    head = ["accuracy", *(f"{m.replace('_', ' ')} {s}" for m, s in cols)]
    lines = []
    val = [vm.groups for name in res.model_names() if (vm := res.metric(name, "val"))]
    groups = select_groups(res.group_names, val)
    for label, key in [
        ("worst group", "worst_group"),
        ("mean group", "mean_group"),
        ("overall", "overall"),
        *((g, g) for g in groups.listed),
    ]:
        row = [f"<b>{html.escape(label)}</b>" if key == "worst_group" else html.escape(label)]
        for m, s in cols:
            metric = res.metric(m, s)
            row.append(_pct(None if metric is None else metric.get(key)))
        lines.append(row)
    for label, statistic in groups.rest_rows():
        row = [html.escape(label)]
        for m, s in cols:
            metric = res.metric(m, s)
            row.append(_pct(None if metric is None else groups.summarise(metric.groups, statistic)))
        lines.append(row)
    out = _table(head, lines)
    if groups.rest:
        out += (
            f"<p class='note'>Groups listed: the {len(groups.listed)} worst on validation "
            f"of {len(res.group_names)}; the others are summarised.</p>"
        )
    return out


def front_table(rescored: list[Rescored | str], study: optuna.Study) -> str:
    """A Pareto front's trials: validation values and re-scored test accuracy, or why a
    trial could not be re-scored."""
    names = objective_names(study)
    rows = []
    for r in rescored:
        if isinstance(r, str):
            rows.append([html.escape(r), *([""] * (len(names) + 2))])
            continue
        metric = r.result.metric("debiased", "test")
        test = {} if metric is None else vars(metric)
        rows.append(
            [
                str(r.trial.number),
                *(f"{v:.4g}" for v in r.trial.values),
                _pct(test.get("worst_group")),
                _pct(test.get("mean_group")),
            ]
        )
    return _table(
        ["trial", *(f"{n} (val)" for n in names), "worst group (test)", "mean group (test)"], rows
    )


def confirmation_table(study: optuna.Study) -> str:
    """One row per confirmed trial: mean ± std over its fresh seeds, validation first;
    test and the references (each run's own) for reporting only."""
    records = read_confirmations(study)
    if not records:
        return ""
    objective = objective_names(study)[0]
    confirmed = read_confirmed_best(study)
    best = None if confirmed is None else confirmed.trial
    models = sorted(
        {m for r in records.values() for run in r.runs for m in run.test_worst_group},
        key=lambda m: (MODEL_ORDER.index(m) if m in MODEL_ORDER else len(MODEL_ORDER), m),
    )
    rows = [
        _confirmation_row(number, r, objective, models, best)
        for number, r in sorted(records.items())
    ]
    head = [
        "trial",
        "seeds",
        f"{objective} (val)",
        *(f"{m.replace('_', ' ')} (test)" for m in models),
        "faithfulness error",
        "gap closed (test)",
        "lift over controls (test)",
    ]
    note = (
        "<p class='note'>★ the confirmed best, by mean validation value: what hpo export "
        "exports. Test worst-group accuracy in %, mean ± std over the seeds; each run's "
        "references are its own (a new base model has new ones).</p>"
    )
    return _table(head, rows) + note


def _confirmation_row(
    number: int, r: Confirmation, objective: str, models: list[str], best: int | None
) -> list[str]:
    val = r.val[objective]
    gaps = [run.gap_closed[0] for run in r.runs if run.gap_closed]
    errors = [
        run.errors["faithfulness_error"] for run in r.runs if "faithfulness_error" in run.errors
    ]
    return [
        f"{number}{' ★' if best == number else ''}",
        f"{len(r.seeds)}{' (new base model)' if r.new_base_model else ''}",
        f"{val.mean:.4f} ± {val.std:.4f}",
        *(
            _spread([run.test_worst_group[m] for run in r.runs if m in run.test_worst_group])
            for m in models
        ),
        _spread(errors, 1.0, 3),
        _spread(gaps, 100.0, 0) + ("%" if gaps else ""),
        "–" if r.test_lift is None else _spread(r.test_lift.values) + " pts",
    ]


def _spread(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    """mean ± std of `values` times `scale` (std 0 for one value; – for none)."""
    if not values:
        return "–"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{scale * statistics.fmean(values):.{digits}f} ± {scale * std:.{digits}f}"
