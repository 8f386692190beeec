"""`hpo report`: one self-contained HTML file about a study, readable offline.

plotly.js is inlined once (with the first figure), so the file opens with no network.
Study-level figures come from Optuna's own visualisation module; the best trial's
figures read its recorded validation numbers and its re-scored test numbers
(`hpo.outputs.rescore`: computed here, after the study, never fed to the sampler). The
figures themselves are drawn in `hpo.outputs.report_figures`.
"""

from __future__ import annotations

import datetime as dt
import html
import statistics
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.errors import UserError
from hpo.outputs.group_rows import select_groups
from hpo.outputs.report_figures import (
    TITLES,
    alpha_figure,
    budget_figure,
    groups_figure,
    history_figures,
    importance_figure,
    objective_names,
    parallel_figure,
    pareto_figure,
    states_figure,
)
from hpo.outputs.rescore import Rescored, rescore
from hpo.results import MODEL_ORDER
from hpo.storage.attrs import BUDGET_ATTR
from hpo.storage.engine import mask
from hpo.storage.records import read_confirmations, read_confirmed_best, sign
from hpo.storage.urls import study_url

MAX_RESCORED = 12  # Pareto trials re-scored for the table of a multi-objective study


# ---- the page -------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    thead = f"<thead><tr>{th}</tr></thead>" if any(head) else ""
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{thead}<tbody>{body}</tbody></table>"


def _summary(study: optuna.Study, url: str, trials: list[FrozenTrial]) -> str:
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


def _best_table(r: Rescored) -> str:
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
    out = _table(["best trial", ""], rows)
    if res.models:
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
                row.append(
                    _pct(None if metric is None else groups.summarise(metric.groups, statistic))
                )
            lines.append(row)
        out += _table(head, lines)
        if groups.rest:
            out += (
                f"<p class='note'>Groups listed: the {len(groups.listed)} worst on validation "
                f"of {len(res.group_names)}; the others are summarised.</p>"
            )
    if r.mismatches:
        out += (
            "<p class='warn'>Re-scoring the stored weights does not reproduce the recorded "
            "validation numbers: " + html.escape("; ".join(r.mismatches)) + "</p>"
        )
    return out


def _front_table(rescored: list[Rescored | str], study: optuna.Study) -> str:
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


CSS = """
body { font-family: Helvetica, Arial, sans-serif; margin: 24px auto; max-width: 1100px;
       color: #222; }
h1 { margin-bottom: 4px; } h2 { margin-top: 36px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 10px 0 18px; font-size: 14px; }
td, th { border: 1px solid #ddd; padding: 4px 10px; text-align: right; }
td:first-child, th:first-child { text-align: left; }
.note { color: #666; font-style: italic; } .warn { color: #b00; font-weight: bold; }
"""


def _rescore_or_reason(study: optuna.Study, url: str, trial: FrozenTrial) -> Rescored | str:
    try:
        return rescore(study, url, trial)
    except UserError as err:
        return f"trial {trial.number}: not re-scored ({err})"


def _confirmation_table(study: optuna.Study) -> str:
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

    def spread(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
        if not values:
            return "–"
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{scale * statistics.fmean(values):.{digits}f} ± {scale * std:.{digits}f}"

    rows = []
    for number, r in sorted(records.items()):
        val = r.val[objective]
        gaps = [run.gap_closed[0] for run in r.runs if run.gap_closed]
        errors = [
            run.errors["faithfulness_error"] for run in r.runs if "faithfulness_error" in run.errors
        ]
        rows.append(
            [
                f"{number}{' ★' if best == number else ''}",
                f"{len(r.seeds)}{' (new base model)' if r.new_base_model else ''}",
                f"{val.mean:.4f} ± {val.std:.4f}",
                *(
                    spread([run.test_worst_group[m] for run in r.runs if m in run.test_worst_group])
                    for m in models
                ),
                spread(errors, 1.0, 3),
                spread(gaps, 100.0, 0) + ("%" if gaps else ""),
                "–" if r.test_lift is None else spread(r.test_lift.values) + " pts",
            ]
        )
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


def _best(study: optuna.Study, url: str, complete: list[FrozenTrial]) -> tuple[Any, str]:
    """The best trial re-scored (the lead of a Pareto front: the best by the first
    objective), or why not; and the re-scored front's table for a multi-objective study."""
    if not complete:
        return None, ""
    if len(study.directions) == 1:
        return _rescore_or_reason(study, url, study.best_trial), ""
    front = sorted(study.best_trials, key=lambda t: t.number)
    first = sign(study.directions[0])
    lead = max(front, key=lambda t: first * t.values[0])
    rescored = [_rescore_or_reason(study, url, t) for t in front[:MAX_RESCORED]]
    best = next(
        (r for r in rescored if not isinstance(r, str) and r.trial is lead), None
    ) or _rescore_or_reason(study, url, lead)
    return best, _front_table(rescored, study)


def _sections(
    study: optuna.Study, trials: list[FrozenTrial], best: Rescored | str | None
) -> list[tuple[str, list[Any | str]]]:
    """What the study found first (the best trial), then how the search went."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if isinstance(best, Rescored):
        found = [(TITLES["groups"], [groups_figure(best)])]
        found.append((TITLES["alpha"], [alpha_figure(best.record)]))
        found.append((TITLES["budget"], [budget_figure(best)]))
    else:
        reason = best or "No complete trial yet."
        found = [(TITLES["groups"], [reason]), (TITLES["alpha"], [reason])]
    search: list[tuple[str, list[Any | str]]] = [
        (TITLES["history"], history_figures(study, complete)),
        (TITLES["parallel"], [parallel_figure(study, complete)]),
        (TITLES["importance"], [importance_figure(study, complete)]),
        (TITLES["states"], [states_figure(trials)]),
    ]
    if len(study.directions) > 1:
        search.append((TITLES["pareto"], [pareto_figure(study)]))
    return found + search


def _figures_html(sections: list[tuple[str, list[Any | str]]]) -> list[str]:
    parts, plotly_js = [], True  # plotly.js inlined once, with the first figure
    for title, figures in sections:
        parts.append(f"<h2>{html.escape(title)}</h2>")
        for fig in figures:
            if isinstance(fig, str):
                parts.append(f"<p class='note'>{html.escape(fig)}</p>")
                continue
            parts.append(
                fig.to_html(
                    full_html=False, include_plotlyjs=plotly_js, config={"displaylogo": False}
                )
            )
            plotly_js = False
    return parts


def build_report(study: optuna.Study, url: str) -> str:
    trials = study.get_trials(deepcopy=False)
    best, front_html = _best(study, url, [t for t in trials if t.state == TrialState.COMPLETE])
    parts = [
        "<!DOCTYPE html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(study.study_name)}: hpo report</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>Study {html.escape(study.study_name)}</h1>",
        f"<p class='note'>hpo report, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC. "
        "Validation numbers chose every parameter and α; test numbers are computed here, "
        "from the stored weights, and were never shown to the sampler.</p>",
        _summary(study, url, trials),
    ]
    if isinstance(best, Rescored):
        parts.append(_best_table(best))
    if front_html:
        parts += ["<h2>Pareto front trials (re-scored)</h2>", front_html]
    confirmed = _confirmation_table(study)
    if confirmed:
        parts += ["<h2>Confirmation over fresh seeds (hpo confirm)</h2>", confirmed]
    parts += [*_figures_html(_sections(study, trials, best)), "</body></html>"]
    return "\n".join(parts)


def write_report(name: str, cli_url: str | None, out: str | None) -> Path:
    from hpo.files import atomic_write_bytes
    from hpo.paths import check_writable_file
    from hpo.service.studies import load_study

    target = check_writable_file(Path(out) if out else Path(f"{name}-report.html"), "--out")
    url = study_url(name, cli_url)
    study = load_study(name, url)  # re-scoring comes after every check
    atomic_write_bytes(target, build_report(study, url).encode(), public=True)
    return target
