"""Per-trial charts as small SVG files, drawn with matplotlib, for optuna-dashboard's trial page.

The dashboard previews an artifact inline only when its MIME type is `image/*` (it puts
it in an `<img>`); a plotly HTML file would only be a download link. An SVG is text, a
few tens of kilobytes, and a browser never runs scripts inside an `<img>`. matplotlib
draws the axes, ticks and legends so this module need not; its glyphs are written as
paths (`svg.fonttype = "path"`), so a chart renders offline with no font installed.

Global state: pyplot is never imported (it would pick a global backend and keep a
registry of open figures); each chart is a `matplotlib.figure.Figure` saved as SVG. The
rcParams a chart needs (a fixed `svg.hashsalt`, so the same attrs give the same bytes)
are set with `rc_context` while it is drawn, under a lock, since rcParams are global.
matplotlib is imported inside the functions: only a finished trial pays for it.

The charts are pure functions of a trial's user attrs: testable without Optuna, a
browser or files. Missing, `None` or NaN values leave a gap or skip a chart, never raise.
"""

from __future__ import annotations

import io
import math
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from hpo.outputs.group_rows import select_groups
from hpo.storage.records import TrialRecord

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.typing import RcKeyType

ALPHA_CHART, GROUP_CHART, LOSS_CHART = "alpha_curve.svg", "group_accuracy.svg", "loss_curves.svg"
COLORS = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#eeca3b", "#9d755d")
# One colour per model wherever models are compared (these charts and the report's).
MODEL_COLORS = {
    "original": "#9aa5b1",
    "debiased": "#4c78a8",
    "oracle": "#54a24b",
    "last_layer": "#f58518",
    "dfr": "#e8a33d",
    "retrain_head": "#b279a2",
    "leace": "#72b7b2",
    "control_random": "#e45756",
    "control_svd": "#9d755d",
}
FIRST_MODELS = ("original", "debiased")
WIDTH = 5.0  # inches: 480 px in a browser (SVG sizes are in pt, 96 px per inch)
RC: dict[RcKeyType, Any] = {
    "svg.fonttype": "path",  # glyphs as paths: no font needed where the SVG is shown
    "svg.hashsalt": "hpo-trial-charts",  # ids from content, not uuid4: same input, same bytes
    "font.family": "DejaVu Sans",  # shipped with matplotlib, so every machine draws the same
    "font.size": 8.0,
    "axes.titlesize": 9.0,
    "axes.titley": 1.0,  # a fixed title position: placing it around the ticks is slow
    "axes.labelsize": 8.0,
    "xtick.labelsize": 7.0,
    "ytick.labelsize": 7.0,
    "legend.fontsize": 7.0,
    "figure.titlesize": 10.0,
    "grid.color": "#e4e4e4",
    "axes.spines.top": False,
    "axes.spines.right": False,
}
_LOCK = threading.Lock()


def _floats(values: Any) -> list[float]:
    """A sequence of numbers as floats; None, NaN, inf and non-numbers become NaN (a gap)."""
    if not isinstance(values, Sequence) or isinstance(values, str | bytes):
        return []
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            f = math.nan
        out.append(f if math.isfinite(f) else math.nan)
    return out


def _finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


def _title(text: str, number: int | None) -> str:
    return text if number is None else f"trial {number}: {text}"


def _render(draw: Callable[..., Figure | None], *args: Any) -> str | None:
    """SVG text of the figure `draw(*args)` builds, or None when it has nothing to draw."""
    import matplotlib

    with _LOCK, matplotlib.rc_context(RC):
        fig = draw(*args)
        if fig is None:
            return None
        buf = io.StringIO()
        fig.savefig(
            buf, format="svg", metadata=dict.fromkeys(("Creator", "Date", "Format", "Type"))
        )
    # matplotlib indents every element and breaks every path segment onto its own line;
    # the white space means nothing in SVG (there is no text element) and is a tenth of it.
    return re.sub(r"\s*\n\s*", " ", re.sub(r">\s+<", "><", buf.getvalue())) + "\n"


def _figure(height: float, left: float, right: float, top: float, bottom: float) -> Figure:
    """A figure `height` px tall, margins in px: fixed margins draw much faster than
    matplotlib's constrained layout, which runs at the end of every trial."""
    from matplotlib.figure import Figure

    width = WIDTH * 96
    fig = Figure(figsize=(WIDTH, height / 96))
    fig.subplots_adjust(
        left=left / width, right=1 - right / width, top=1 - top / height, bottom=bottom / height
    )
    return fig


# ---- the three charts a trial carries -------------------------------------------------


def _draw_alpha(record: TrialRecord, number: int | None) -> Figure | None:
    curve = None if record.edit is None else record.edit.alpha_curve
    if not isinstance(curve, Mapping):
        return None
    alphas = _floats(curve.get("alphas"))
    series = {
        label: _floats(curve.get(key))[: len(alphas)]
        for label, key in (
            ("worst group (val)", "val_worst_group"),
            ("mean group (val)", "val_mean_group"),
        )
    }
    series = {k: v for k, v in series.items() if _finite(v)}
    if not series:
        return None
    fig = _figure(300, left=46, right=12, top=26, bottom=38)
    ax = fig.subplots()
    for (label, ys), color in zip(series.items(), COLORS, strict=False):
        xs = alphas[: len(ys)]
        ax.plot(xs, ys, color=color, lw=1.8, marker="o" if len(xs) <= 30 else "", ms=3, label=label)
    alpha = _floats([None if record.edit is None else record.edit.alpha])[0]
    if math.isfinite(alpha):
        ax.axvline(alpha, color="#d62728", ls="--", lw=1.2, label=f"chosen α = {alpha:.2f}")
    ax.set(ylim=(0.0, 1.02), xlabel="α (ablation strength)", ylabel="accuracy")
    ax.grid()
    ax.set_title(_title("accuracy vs α (validation)", number))
    ax.legend(loc="best")
    return fig


def _models(groups: Mapping[str, Any]) -> list[str]:
    """The models in `val_groups`: original and debiased first, then the others as recorded."""
    present = [m for m in groups if isinstance(groups[m], Mapping)]
    return [m for m in FIRST_MODELS if m in present] + [m for m in present if m not in FIRST_MODELS]


def _draw_groups(record: TrialRecord, number: int | None) -> Figure | None:
    groups = record.val_groups
    if not isinstance(groups, Mapping):
        return None
    models = _models(groups)
    every = list(dict.fromkeys(g for m in models for g in groups[m]))
    shown = select_groups(every, [groups[m] for m in models])
    names = list(shown.listed)
    values = {m: _floats([groups[m].get(g) for g in names]) for m in models}
    if not names or not any(_finite(v) for v in values.values()):
        return None
    labels = [str(g) for g in names]
    rotate = len(names) > 6 or max(len(g) for g in labels) > 10
    columns = min(len(models), 5)
    legend_rows = math.ceil(len(models) / columns)
    fig = _figure(300, left=46, right=12, top=28 + 14 * legend_rows, bottom=60 if rotate else 22)
    ax: Axes = fig.subplots()
    width = 0.8 / len(models)
    for j, model in enumerate(models):
        color = MODEL_COLORS.get(model, COLORS[(j + 2) % len(COLORS)])
        xs = [i - 0.4 + width * (j + 0.5) for i in range(len(names))]
        heights = [0.0 if math.isnan(v) else v for v in values[model]]
        bars = ax.bar(xs, heights, width * 0.92, color=color, label=model)
        if len(names) * len(models) <= 16:  # room to print each value (in %) on its bar
            texts = ["n/a" if math.isnan(v) else f"{100 * v:.0f}" for v in values[model]]
            ax.bar_label(bars, texts, padding=1, fontsize=6)
    ax.set_xticks(
        range(len(names)), labels, rotation=30 if rotate else 0, ha="right" if rotate else "center"
    )
    ax.tick_params(axis="x", length=0)
    ax.set(xlim=(-0.5, len(names) - 0.5), ylim=(0.0, 1.06), ylabel="accuracy")  # room for 100
    ax.set_yticks([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.grid(axis="y")
    title = _title(f"per-group accuracy (validation){shown.title_note}", number)
    ax.set_title(title, pad=4 + 14 * legend_rows)
    ax.legend(
        loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=columns, frameon=False, borderpad=0.2
    )
    return fig


def _draw_losses(record: TrialRecord, number: int | None) -> Figure | None:
    """One panel per named loss; terms that stayed exactly zero (weight 0) are left out."""
    from matplotlib.ticker import MaxNLocator, NullLocator

    history = record.loss_history
    if not isinstance(history, Mapping):
        return None
    steps = _floats(history.get("step"))
    panels = {str(k): _floats(v)[: len(steps)] for k, v in history.items() if k != "step"}
    panels = {k: ys for k, ys in panels.items() if any(v != 0 for v in _finite(ys))}
    if not panels:
        return None
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    height = 52 + 118 * rows
    fig = _figure(height, left=44, right=10, top=40, bottom=36)
    fig.subplots_adjust(hspace=40 / (118 - 40), wspace=0.35)
    fig.suptitle(_title("training losses", number), y=1 - 6 / height, va="top")
    fig.supxlabel("step", y=4 / height, va="bottom")
    grid = fig.add_gridspec(rows, cols)
    xlim = (min(_finite(steps), default=0.0), max(_finite(steps), default=1.0))
    for i, (name, ys) in enumerate(panels.items()):
        ax = fig.add_subplot(grid[i // cols, i % cols])  # no grid lines: a third of the file
        ax.plot(steps[: len(ys)], ys, color=COLORS[i % len(COLORS)], lw=1.4)
        ax.set_title(name, pad=3)
        if xlim[1] > xlim[0]:  # the same steps in every panel, even where one has gaps
            ax.set_xlim(*xlim)
        # steps under the lowest panel of each column only: ticks are most of the drawing time
        below = i + cols < len(panels)
        ax.xaxis.set_major_locator(NullLocator() if below else MaxNLocator(nbins=3))
        finite = _finite(ys)
        if min(finite) > 0 and max(finite) / min(finite) >= 100:  # spans decades: log scale
            ax.set_yscale("log")
            ax.yaxis.set_minor_locator(NullLocator())
        else:
            ax.yaxis.set_major_locator(MaxNLocator(nbins=3))
    return fig


def alpha_chart(record: TrialRecord, number: int | None = None) -> str | None:
    """Validation worst/mean group accuracy against α, the chosen α marked."""
    return _render(_draw_alpha, record, number)


def group_chart(record: TrialRecord, number: int | None = None) -> str | None:
    """Validation accuracy per group, one bar per model in `val_groups`."""
    return _render(_draw_groups, record, number)


def loss_chart(record: TrialRecord, number: int | None = None) -> str | None:
    """The SAE's training losses, one small panel each."""
    return _render(_draw_losses, record, number)


def trial_charts(record: TrialRecord, number: int | None = None) -> dict[str, str]:
    """File name → SVG text for every chart this trial's record allows (`number`: the
    trial number in the titles)."""
    charts = {
        ALPHA_CHART: alpha_chart(record, number),
        GROUP_CHART: group_chart(record, number),
        LOSS_CHART: loss_chart(record, number),
    }
    return {name: svg for name, svg in charts.items() if svg is not None}
