"""Per-trial charts as small hand-written SVG files, for optuna-dashboard's trial page.

The dashboard previews an artifact inline only when its MIME type is `image/*` (it puts
it in an `<img>`); a plotly HTML file would only be a download link. SVG is text, a few
kilobytes, needs no renderer (matplotlib and kaleido are not dependencies), and a browser
never runs scripts inside an `<img>`. The charts are pure functions of a trial's user
attrs, so they can be tested without Optuna, a browser or files.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

COLORS = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#eeca3b", "#9d755d")
MODEL_COLORS = {
    "original": "#9aa5b1",
    "debiased": "#4c78a8",
    "oracle": "#54a24b",
    "last_layer": "#f58518",
}
FONT = 'font-family="Helvetica,Arial,sans-serif"'
ALPHA_CHART, GROUP_CHART, LOSS_CHART = "alpha_curve.svg", "group_accuracy.svg", "loss_curves.svg"


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About `n` round tick values covering [lo, hi] (1, 2 or 5 times a power of ten)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, n - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 12) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e4 or abs(v) < 1e-3:
        return f"{v:.0e}"
    return f"{v:.4g}"


def _limits(values: Sequence[float], pad: float = 0.05) -> tuple[float, float]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    lo, hi = min(finite), max(finite)
    if hi == lo:
        return lo - 0.5 if lo else -1.0, hi + 0.5 if hi else 1.0
    span = hi - lo
    return lo - pad * span, hi + pad * span


class _Frame:
    """A plot area inside an SVG: maps data coordinates to pixels, draws axes and grid."""

    def __init__(
        self,
        x: float,
        y: float,
        w: float,
        h: float,
        xlim: tuple[float, float],
        ylim: tuple[float, float],
    ) -> None:
        self.x, self.y, self.w, self.h = x, y, w, h
        self.xlim, self.ylim = xlim, ylim

    def px(self, v: float) -> float:
        lo, hi = self.xlim
        return self.x + (v - lo) / (hi - lo) * self.w

    def py(self, v: float) -> float:
        lo, hi = self.ylim
        return self.y + self.h - (v - lo) / (hi - lo) * self.h

    def axes(self, xlabel: str, ylabel: str, *, xticks: bool = True, size: int = 11) -> list[str]:
        out = [
            f'<rect x="{self.x:.1f}" y="{self.y:.1f}" width="{self.w:.1f}" '
            f'height="{self.h:.1f}" fill="#fff" stroke="#888"/>'
        ]
        for t in nice_ticks(*self.ylim, n=5):
            if not self.ylim[0] <= t <= self.ylim[1]:
                continue
            y = self.py(t)
            out.append(
                f'<line x1="{self.x:.1f}" y1="{y:.1f}" x2="{self.x + self.w:.1f}" '
                f'y2="{y:.1f}" stroke="#e4e4e4"/>'
            )
            out.append(
                f'<text x="{self.x - 4:.1f}" y="{y + 4:.1f}" font-size="{size}" '
                f'text-anchor="end">{_fmt(t)}</text>'
            )
        if xticks:
            for t in nice_ticks(*self.xlim, n=6):
                if not self.xlim[0] <= t <= self.xlim[1]:
                    continue
                x = self.px(t)
                out.append(
                    f'<line x1="{x:.1f}" y1="{self.y + self.h:.1f}" x2="{x:.1f}" '
                    f'y2="{self.y + self.h + 4:.1f}" stroke="#888"/>'
                )
                out.append(
                    f'<text x="{x:.1f}" y="{self.y + self.h + 16:.1f}" '
                    f'font-size="{size}" text-anchor="middle">{_fmt(t)}</text>'
                )
        if xlabel:
            out.append(
                f'<text x="{self.x + self.w / 2:.1f}" y="{self.y + self.h + 32:.1f}" '
                f'font-size="{size + 1}" text-anchor="middle">{escape(xlabel)}</text>'
            )
        if ylabel:
            cx, cy = self.x - 44, self.y + self.h / 2
            out.append(
                f'<text x="{cx:.1f}" y="{cy:.1f}" font-size="{size + 1}" '
                f'text-anchor="middle" transform="rotate(-90 {cx:.1f} {cy:.1f})">'
                f"{escape(ylabel)}</text>"
            )
        return out

    def polyline(
        self,
        xs: Sequence[float],
        ys: Sequence[float],
        color: str,
        width: float = 2.0,
        dots: bool = False,
    ) -> list[str]:
        pts = [
            (self.px(x), self.py(y))
            for x, y in zip(xs, ys, strict=True)
            if y is not None and math.isfinite(y)
        ]
        out = [
            f'<polyline fill="none" stroke="{color}" stroke-width="{width}" points="'
            + " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
            + '"/>'
        ]
        if dots:
            out += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{color}"/>' for x, y in pts]
        return out


def _svg(width: int, height: int, title: str, body: list[str]) -> str:
    return (
        "\n".join(
            [
                f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
                f'viewBox="0 0 {width} {height}" {FONT}>',
                f"<title>{escape(title)}</title>",
                f'<rect width="{width}" height="{height}" fill="#fff"/>',
                f'<text x="{width / 2:.1f}" y="22" font-size="15" font-weight="bold" '
                f'text-anchor="middle">{escape(title)}</text>',
                *body,
                "</svg>",
            ]
        )
        + "\n"
    )


def _legend(x: float, y: float, items: Sequence[tuple[str, str]]) -> list[str]:
    out = []
    for i, (label, color) in enumerate(items):
        yy = y + 16 * i
        out.append(f'<rect x="{x:.1f}" y="{yy - 9:.1f}" width="12" height="10" fill="{color}"/>')
        out.append(f'<text x="{x + 17:.1f}" y="{yy:.1f}" font-size="11">{escape(label)}</text>')
    return out


def line_chart(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    ylim: tuple[float, float] | None = None,
    mark_x: float | None = None,
    mark_label: str = "",
    width: int = 640,
    height: int = 360,
) -> str:
    """Lines, one per named series, sharing axes; an optional vertical marker at `mark_x`."""
    xs = [x for sx, _ in series.values() for x in sx]
    ys = [y for _, sy in series.values() for y in sy]
    frame = _Frame(
        70, 38, width - 70 - 150, height - 38 - 50, _limits(xs, pad=0.0), ylim or _limits(ys)
    )
    body = frame.axes(xlabel, ylabel)
    if mark_x is not None:
        x = frame.px(mark_x)
        body.append(
            f'<line x1="{x:.1f}" y1="{frame.y:.1f}" x2="{x:.1f}" '
            f'y2="{frame.y + frame.h:.1f}" stroke="#d62728" stroke-dasharray="5,4"/>'
        )
        if mark_label:  # inside the frame, on the side of the marker with more room
            right = x > frame.x + frame.w / 2
            tx, anchor = (x - 5, "end") if right else (x + 5, "start")
            body.append(
                f'<text x="{tx:.1f}" y="{frame.y + frame.h - 8:.1f}" font-size="11" '
                f'fill="#d62728" text-anchor="{anchor}">{escape(mark_label)}</text>'
            )
    colors = dict(zip(series, COLORS * 4, strict=False))
    for name, (sx, sy) in series.items():
        body += frame.polyline(sx, sy, colors[name], dots=len(sx) <= 30)
    body += _legend(frame.x + frame.w + 14, frame.y + 12, list(colors.items()))
    return _svg(width, height, title, body)


def bar_chart(
    categories: Sequence[str],
    series: Mapping[str, Sequence[float | None]],
    *,
    title: str,
    ylabel: str,
    ylim: tuple[float, float] = (0.0, 1.0),
    colors: Mapping[str, str] | None = None,
    width: int = 640,
    height: int = 360,
) -> str:
    """Grouped bars: one group per category, one bar per series, value printed on top."""
    frame = _Frame(70, 38, width - 70 - 150, height - 38 - 56, (0.0, 1.0), ylim)
    body = frame.axes("", ylabel, xticks=False)
    colors = {k: (colors or {}).get(k, c) for k, c in zip(series, COLORS * 4, strict=False)}
    slot = frame.w / max(1, len(categories))
    bar = slot * 0.8 / max(1, len(series))
    for i, cat in enumerate(categories):
        left = frame.x + i * slot + slot * 0.1
        for j, (name, values) in enumerate(series.items()):
            v = values[i]
            x = left + j * bar
            if v is None:
                body.append(
                    f'<text x="{x + bar / 2:.1f}" y="{frame.py(ylim[0]) - 4:.1f}" '
                    f'font-size="10" text-anchor="middle">n/a</text>'
                )
                continue
            top = frame.py(min(max(v, ylim[0]), ylim[1]))
            body.append(
                f'<rect x="{x:.1f}" y="{top:.1f}" width="{bar - 1:.1f}" '
                f'height="{frame.py(ylim[0]) - top:.1f}" fill="{colors[name]}"/>'
            )
            if bar >= 18:
                body.append(
                    f'<text x="{x + bar / 2:.1f}" y="{top - 3:.1f}" font-size="9" '
                    f'text-anchor="middle">{100 * v:.0f}</text>'
                )
        body.append(
            f'<text x="{left + slot * 0.4:.1f}" y="{frame.y + frame.h + 16:.1f}" '
            f'font-size="11" text-anchor="middle">{escape(cat)}</text>'
        )
    body += _legend(frame.x + frame.w + 14, frame.y + 12, list(colors.items()))
    return _svg(width, height, title, body)


def small_multiples(
    panels: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    title: str,
    xlabel: str,
    columns: int = 3,
    panel_width: int = 230,
    panel_height: int = 170,
) -> str:
    """One small line chart per named series, each on its own y scale."""
    rows = max(1, math.ceil(len(panels) / columns))
    cols = min(columns, max(1, len(panels)))
    width, height = cols * panel_width + 20, rows * panel_height + 40
    body: list[str] = []
    for i, (name, (xs, ys)) in enumerate(panels.items()):
        ox = 10 + (i % cols) * panel_width
        oy = 36 + (i // cols) * panel_height
        frame = _Frame(
            ox + 52, oy + 18, panel_width - 64, panel_height - 52, _limits(xs, pad=0.0), _limits(ys)
        )
        body.append(
            f'<text x="{ox + panel_width / 2 + 20:.1f}" y="{oy + 12:.1f}" font-size="12" '
            f'font-weight="bold" text-anchor="middle">{escape(name)}</text>'
        )
        body += frame.axes(xlabel if i // cols == rows - 1 else "", "", size=9)
        body += frame.polyline(xs, ys, COLORS[i % len(COLORS)], width=1.6)
    return _svg(width, height, title, body)


# ---- the three charts a trial carries -------------------------------------------------


def alpha_chart(attrs: Mapping[str, Any], number: int | None = None) -> str | None:
    curve = attrs.get("alpha_curve")
    if not curve:
        return None
    alphas = curve["alphas"]
    series = {
        "worst group (val)": (alphas, curve["val_worst_group"]),
        "mean group (val)": (alphas, curve["val_mean_group"]),
    }
    alpha = attrs.get("alpha")
    trial = "" if number is None else f"trial {number}: "
    return line_chart(
        series,
        title=f"{trial}accuracy vs α (validation)",
        xlabel="α (ablation strength)",
        ylabel="accuracy",
        ylim=(0.0, 1.0),
        mark_x=alpha,
        mark_label="" if alpha is None else f"chosen α = {alpha:.2f}",
    )


def group_chart(attrs: Mapping[str, Any], number: int | None = None) -> str | None:
    groups = attrs.get("val_groups")
    if not groups:
        return None
    names = list(groups["original"])
    series = {model: [groups[model].get(g) for g in names] for model in ("original", "debiased")}
    trial = "" if number is None else f"trial {number}: "
    return bar_chart(
        names,
        series,
        title=f"{trial}per-group accuracy (validation)",
        ylabel="accuracy",
        colors=MODEL_COLORS,
    )


def loss_chart(attrs: Mapping[str, Any], number: int | None = None) -> str | None:
    """One panel per named loss; terms that stayed exactly zero (weight 0) are left out."""
    history = attrs.get("loss_history")
    if not history or not history.get("step"):
        return None
    steps = history["step"]
    panels = {
        name: (steps, values)
        for name, values in history.items()
        if name != "step" and any(v for v in values)
    }
    if not panels:
        return None
    trial = "" if number is None else f"trial {number}: "
    return small_multiples(panels, title=f"{trial}training losses", xlabel="step")


def trial_charts(attrs: Mapping[str, Any], number: int | None = None) -> dict[str, str]:
    """File name → SVG text for every chart this trial's user attrs allow."""
    charts = {
        ALPHA_CHART: alpha_chart(attrs, number),
        GROUP_CHART: group_chart(attrs, number),
        LOSS_CHART: loss_chart(attrs, number),
    }
    return {name: svg for name, svg in charts.items() if svg is not None}
