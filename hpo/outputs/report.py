"""`hpo report`: one self-contained HTML file about a study, readable offline.

plotly.js is inlined once (with the first figure), so the file opens with no network.
Study-level figures come from Optuna's own visualisation module; the best trial's
figures read its recorded validation numbers and its re-scored test numbers
(`hpo.outputs.rescore`: computed here, after the study, never fed to the sampler). The
figures themselves are drawn in `hpo.outputs.report_figures`, the tables in
`hpo.outputs.report_tables`.
"""

from __future__ import annotations

import datetime as dt
import html
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.errors import UserError
from hpo.outputs.report_figures import (
    TITLES,
    alpha_figure,
    budget_figure,
    groups_figure,
    history_figures,
    importance_figure,
    parallel_figure,
    pareto_figure,
    states_figure,
)
from hpo.outputs.report_tables import best_table, confirmation_table, front_table, summary_table
from hpo.outputs.rescore import Rescored, rescore
from hpo.storage.records import sign
from hpo.storage.urls import study_url

MAX_RESCORED = 12  # Pareto trials re-scored for the table of a multi-objective study


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
    return best, front_table(rescored, study)


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
        summary_table(study, url, trials),
    ]
    if isinstance(best, Rescored):
        parts.append(best_table(best))
    if front_html:
        parts += ["<h2>Pareto front trials (re-scored)</h2>", front_html]
    confirmed = confirmation_table(study)
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
