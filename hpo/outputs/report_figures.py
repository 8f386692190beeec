"""The figures of `hpo report`: plotly figures, or one sentence saying why there is none.

Study-level figures come from Optuna's own visualisation module; the best trial's read
its recorded validation numbers (alpha curve) and its re-scored numbers (groups).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.outputs.charts import MODEL_COLORS
from hpo.outputs.group_rows import select_groups
from hpo.outputs.rescore import Rescored
from hpo.storage.records import TrialRecord, stored_objectives
from hpo.tasks.base import BUDGETS
from hpo.tasks.registry import get_task

TEMPLATE = "plotly_white"
STATE_COLORS = {
    "COMPLETE": "#54a24b",
    "PRUNED": "#eeca3b",
    "FAIL": "#e45756",
    "RUNNING": "#4c78a8",
    "WAITING": "#9aa5b1",
}
TITLES = {
    "history": "Optimization history",
    "parallel": "Parallel coordinates of the sampled parameters",
    "importance": "Parameter importances",
    "states": "Trial states",
    "alpha": "Worst-group accuracy vs alpha (best trial, validation)",
    "groups": "Per-group accuracy: original vs debiased (best trial, val and test)",
    "pareto": "Pareto front",
    "budget": "What the decomposition is worth: worst-group accuracy vs components removed "
    "(the best trial edit procedure at each budget, for its SAE and the controls)",
}


def objective_names(study: optuna.Study) -> list[str]:
    """The study file's objective names, else "objective 0", "objective 1", ..."""
    names = stored_objectives(study)
    return list(names) if names else [f"objective {i}" for i in range(len(study.directions))]


def _titled(fig: Any, title: str) -> Any:
    fig.update_layout(
        title=title, template=TEMPLATE, height=460, margin={"l": 60, "r": 30, "t": 60, "b": 50}
    )
    return fig


def _safe(make: Callable[[], Any], why: str) -> Any | str:
    """A figure, or one sentence saying why there is none (too few trials, ...)."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return make()
    except (ValueError, RuntimeError, ZeroDivisionError) as err:
        return f"{why} ({err})"


def history_figures(study: optuna.Study, complete: list[FrozenTrial]) -> list[Any | str]:
    from optuna.visualization import plot_optimization_history

    if not complete:
        return ["No complete trial yet."]
    names = objective_names(study)
    if len(names) == 1:
        fig = _safe(lambda: plot_optimization_history(study, target_name=names[0]), "no history")
        return [fig if isinstance(fig, str) else _titled(fig, TITLES["history"])]
    out = []
    for i, name in enumerate(names):

        def history(i: int = i, name: str = name) -> Any:
            return plot_optimization_history(study, target=lambda t: t.values[i], target_name=name)

        fig = _safe(history, "no history")
        out.append(fig if isinstance(fig, str) else _titled(fig, f"{TITLES['history']}: {name}"))
    return out


def parallel_figure(study: optuna.Study, complete: list[FrozenTrial]) -> Any | str:
    from optuna.visualization import plot_parallel_coordinate

    if not any(t.params for t in complete):
        return "No sampled parameters (the study file has no [search]) or no complete trial."
    names = objective_names(study)
    target = None if len(names) == 1 else (lambda t: t.values[0])
    fig = _safe(
        lambda: plot_parallel_coordinate(study, target=target, target_name=names[0]),
        "no parallel coordinates",
    )
    return fig if isinstance(fig, str) else _titled(fig, TITLES["parallel"])


def importance_figure(study: optuna.Study, complete: list[FrozenTrial]) -> Any | str:
    from optuna.visualization import plot_param_importances

    if len(complete) < 2 or not any(t.params for t in complete):
        return (
            f"Parameter importances need at least two complete trials with sampled "
            f"parameters; this study has {len(complete)} complete."
        )
    names = objective_names(study)
    fig = _safe(
        lambda: (
            plot_param_importances(study, target_name=names[0])
            if len(names) == 1
            else plot_param_importances(study)
        ),
        "importances could not be computed",
    )
    return fig if isinstance(fig, str) else _titled(fig, TITLES["importance"])


def states_figure(trials: list[FrozenTrial]) -> Any:
    import plotly.graph_objects as go

    counts = {s.name: 0 for s in TrialState}
    for t in trials:
        counts[t.state.name] += 1
    names = [n for n in STATE_COLORS if counts.get(n)] or ["COMPLETE"]
    fig = go.Figure(
        go.Bar(
            x=names,
            y=[counts.get(n, 0) for n in names],
            marker_color=[STATE_COLORS[n] for n in names],
            text=[counts.get(n, 0) for n in names],
            textposition="auto",
        )
    )
    fig.update_yaxes(title="trials")
    return _titled(fig, TITLES["states"])


def alpha_figure(record: TrialRecord) -> Any | str:
    import plotly.graph_objects as go

    curve = None if record.edit is None else record.edit.alpha_curve
    if not curve:
        return "This task has no ablation strength α to sweep."
    fig = go.Figure()
    fig.add_scatter(
        x=curve["alphas"],
        y=curve["val_worst_group"],
        mode="lines+markers",
        name="worst group (val)",
        line_color="#4c78a8",
    )
    fig.add_scatter(
        x=curve["alphas"],
        y=curve["val_mean_group"],
        mode="lines+markers",
        name="mean group (val)",
        line_color="#f58518",
    )
    alpha = None if record.edit is None else record.edit.alpha
    if alpha is not None:
        fig.add_vline(
            x=alpha,
            line_dash="dash",
            line_color="#d62728",
            annotation_text=f"chosen α = {alpha:.2f}",
        )
    fig.update_xaxes(title="α (ablation strength)")
    fig.update_yaxes(title="accuracy", range=[0, 1.02])
    return _titled(fig, f"{TITLES['alpha']}: trial {record.number}")


def groups_figure(r: Rescored) -> Any | str:
    from plotly.subplots import make_subplots

    if not r.result.models:
        return "This task has no groups."
    val = [m.groups for n in r.result.model_names() if (m := r.result.metric(n, "val"))]
    shown = select_groups(r.result.group_names, val)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("validation", "test"), shared_yaxes=True)
    for col, split in enumerate(("val", "test"), start=1):
        for name in r.result.model_names():
            metrics = r.result.metric(name, split)
            if metrics is None:
                continue
            groups = [g for g in shown.listed if g in metrics.groups]
            fig.add_bar(
                x=groups,
                y=[metrics.groups[g] for g in groups],
                name=name.replace("_", " "),
                marker_color=MODEL_COLORS.get(name),
                legendgroup=name,
                showlegend=col == 1,
                visible=True if name in ("original", "debiased") else "legendonly",
                text=[f"{100 * (metrics.groups[g] or 0):.0f}" for g in groups],
                textposition="outside",
                row=1,
                col=col,
            )
    fig.update_yaxes(range=[0, 1.1], title="accuracy", row=1, col=1)
    fig.update_layout(barmode="group")
    return _titled(fig, f"{TITLES['groups']}: trial {r.trial.number}{shown.title_note}")


def budget_figure(r: Rescored) -> Any | str:
    """Test worst-group accuracy (val dotted) against the components removed, for the
    trial's SAE and each control: the same strategy, fit and α choice at every budget."""
    import plotly.graph_objects as go

    if r.result.edit is None:
        return "This task makes no edit."
    task = get_task(r.study_file.task.kind)
    curves = task.budget_curve(r.ctx, r.saes, r.params, BUDGETS)
    if not curves:
        return "This task makes no edit."
    fig = go.Figure()
    for name, points in curves.items():
        label = name.replace("_", " ").replace("debiased", "Faithful-SAE")
        x = [p.removed for p in points]
        hover = [f"budget {p.budget or 'none'}" for p in points]
        color = MODEL_COLORS.get(name)
        fig.add_scatter(
            x=x,
            y=[p.test_worst_group for p in points],
            mode="lines+markers",
            name=f"{label} (test)",
            line_color=color,
            hovertext=hover,
        )
        fig.add_scatter(
            x=x,
            y=[p.val_worst_group for p in points],
            mode="lines",
            line_dash="dot",
            name=f"{label} (val)",
            line_color=color,
            hovertext=hover,
            visible="legendonly",
        )
    fig.update_xaxes(title="components removed (budget 1, 2, 4, … 32, none)", type="log")
    fig.update_yaxes(title="worst-group accuracy", range=[0, 1.02])
    return _titled(fig, f"{TITLES['budget']}: trial {r.trial.number}")


def pareto_figure(study: optuna.Study) -> Any | str:
    from optuna.visualization import plot_pareto_front

    names = objective_names(study)
    if len(names) not in (2, 3):
        return f"A Pareto front plot needs 2 or 3 objectives; this study has {len(names)}."
    fig = _safe(lambda: plot_pareto_front(study, target_names=names), "no Pareto front")
    return fig if isinstance(fig, str) else _titled(fig, TITLES["pareto"])
