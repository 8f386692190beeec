"""The per-trial charts the dashboard shows inline: what a browser gets in an `<img>`.

Each chart must be well-formed SVG that renders offline (glyphs drawn as paths, nothing
fetched, no script), the same bytes for the same trial, and a chart with holes in its
data is drawn without them or skipped, never an exception at the end of a trial.
"""

from __future__ import annotations

import math
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from hpo.outputs.charts import ALPHA_CHART, GROUP_CHART, LOSS_CHART
from hpo.outputs.charts import trial_charts as charts_of_record
from hpo.storage.records import read_trial

XLINK = "{http://www.w3.org/1999/xlink}href"


def trial_charts(attrs: dict[str, Any], number: int | None = None) -> dict[str, str]:
    """The charts of a trial that stored `attrs`, read back as every reader reads it."""
    trial = optuna.trial.create_trial(state=TrialState.COMPLETE, value=0.0, user_attrs=attrs)
    return charts_of_record(read_trial(trial), number)


NAN = float("nan")


def colored_mnist_attrs() -> dict[str, Any]:
    """User attrs as a colored-MNIST trial records them (hpo.service.objective.record)."""
    alphas = [i / 10 for i in range(11)]
    groups = ("red/0-4", "red/5-9", "green/0-4", "green/5-9")
    return {
        "alpha": 0.6,
        "alpha_curve": {
            "alphas": alphas,
            "val_worst_group": [0.1 + 0.6 * a * (1.6 - a) for a in alphas],
            "val_mean_group": [0.9 - 0.1 * a for a in alphas],
        },
        "val_groups": {
            "original": dict(zip(groups, (0.98, 0.12, 0.15, 0.97), strict=True)),
            "debiased": dict(zip(groups, (0.9, 0.7, 0.66, 0.88), strict=True)),
        },
        "loss_history": toy_attrs()["loss_history"],
    }


def toy_attrs() -> dict[str, Any]:
    """A toy-task trial: losses only, one term switched off (weight 0, stays 0)."""
    steps = list(range(10, 410, 10))
    return {
        "loss_history": {
            "step": steps,
            "recon": [100 * math.exp(-s / 60) for s in steps],
            "faithful": [1 / s for s in steps],
            "rank": [0.0 for _ in steps],
            "total": [100 * math.exp(-s / 60) + 1 / s for s in steps],
        }
    }


def check_svg(svg: str) -> ET.Element:
    """Well-formed SVG about 480 px wide that a browser can show offline, without scripts."""
    root = ET.fromstring(svg)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert root.get("width") == "360pt"  # 480 px: fits the dashboard's trial page
    tags = {el.tag.rsplit("}", 1)[-1] for el in root.iter()}
    assert "script" not in tags and "<script" not in svg.lower()
    assert "foreignObject" not in tags and "image" not in tags
    assert "text" not in tags  # glyphs are paths: no font needed where it is shown
    for el in root.iter():
        assert not any(name.lower().startswith("on") for name in el.attrib), el.attrib
        assert el.get(XLINK, "#").startswith("#")  # nothing fetched
    assert len(svg.encode()) < 60_000
    return root


def test_a_colored_mnist_trial_gets_its_three_charts() -> None:
    charts = trial_charts(colored_mnist_attrs(), 7)
    assert set(charts) == {ALPHA_CHART, GROUP_CHART, LOSS_CHART}
    for svg in charts.values():
        check_svg(svg)
    # matplotlib keeps each label's text in a comment next to its glyphs
    assert "trial 7: accuracy vs α (validation)" in charts[ALPHA_CHART]
    assert "chosen α = 0.60" in charts[ALPHA_CHART]
    assert "green/0-4" in charts[GROUP_CHART]
    assert "faithful" in charts[LOSS_CHART]


def test_a_toy_trial_gets_only_its_losses_and_no_panel_for_a_term_switched_off() -> None:
    charts = trial_charts(toy_attrs(), 3)
    assert set(charts) == {LOSS_CHART}
    check_svg(charts[LOSS_CHART])
    assert "<!-- recon -->" in charts[LOSS_CHART]
    assert "<!-- rank -->" not in charts[LOSS_CHART]


def test_every_model_in_val_groups_is_drawn_original_and_debiased_first() -> None:
    attrs = colored_mnist_attrs()
    groups = attrs["val_groups"]
    attrs["val_groups"] = {
        "last_layer": {g: 0.7 for g in groups["original"]},
        **groups,
        "leace": {g: 0.6 for g in groups["original"]},
    }
    svg = trial_charts(attrs)[GROUP_CHART]
    check_svg(svg)
    where = [svg.index(f"<!-- {m} -->") for m in ("original", "debiased", "last_layer", "leace")]
    assert where == sorted(where)


def test_same_trial_same_bytes_in_any_thread() -> None:
    attrs = colored_mnist_attrs()
    first = trial_charts(attrs, 1)
    results: list[dict[str, str]] = []
    threads = [
        threading.Thread(target=lambda: results.append(trial_charts(attrs, 1))) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [first] * 3


@pytest.mark.slow  # a fresh interpreter importing hpo (and torch)
def test_drawing_sets_no_global_matplotlib_state() -> None:
    """No pyplot (a global backend and figure registry); the rcParams a chart sets while
    it draws are as they were afterwards."""
    code = (
        "import sys, matplotlib\n"
        "from hpo.outputs.charts import RC, trial_charts\n"
        "before = {k: matplotlib.rcParams[k] for k in RC}\n"
        "import optuna\n"
        "from hpo.storage.records import read_trial\n"
        f"t = optuna.trial.create_trial(state=optuna.trial.TrialState.COMPLETE, value=0.0, "
        f"user_attrs={colored_mnist_attrs()!r})\n"
        "assert trial_charts(read_trial(t))\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
        "assert {k: matplotlib.rcParams[k] for k in RC} == before\n"
        "assert matplotlib.rcParams['svg.hashsalt'] is None\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


HOLES = {
    "nothing": {},
    "None everywhere": {
        "alpha": None,
        "alpha_curve": None,
        "val_groups": None,
        "loss_history": None,
    },
    "NaN and None values": {
        "alpha": NAN,
        "alpha_curve": {"alphas": [0, 0.5, 1], "val_worst_group": [0.2, None, NAN]},
        "val_groups": {
            "original": {"a": None, "b": NAN},
            "debiased": {"a": 0.5, "b": None},
            "oracle": None,
        },
        "loss_history": {"step": [1, 2, 3], "recon": [NAN, 2.0, None], "rank": [None] * 3},
    },
    "lengths that disagree": {
        "alpha": "0.3",
        "alpha_curve": {"alphas": [0, 1], "val_worst_group": [0.1, 0.2, 0.3], "val_mean_group": []},
        "val_groups": {"debiased": {"a": 0.5}, "original": {"b": float("inf")}},
        "loss_history": {"step": [1, 2], "recon": [3.0], "faithful": [1, 2, 3, 4]},
    },
    "wrong types": {
        "alpha": [1],
        "alpha_curve": {"alphas": "abc", "val_worst_group": 3},
        "val_groups": {"original": [0.5], "debiased": "x"},
        "loss_history": {"step": None, "recon": [1.0]},
    },
    "all values missing": {
        "alpha_curve": {"alphas": [0, 1], "val_worst_group": [None, NAN]},
        "val_groups": {"original": {"a": None}, "debiased": {}},
        "loss_history": {"step": [1, 2], "recon": [0.0, 0.0], "total": [NAN, NAN]},
    },
}


@pytest.mark.parametrize("attrs", HOLES.values(), ids=HOLES.keys())
def test_missing_none_and_nan_values_never_raise(attrs: dict[str, Any]) -> None:
    for svg in trial_charts(attrs, 0).values():
        check_svg(svg)


def test_holes_are_drawn_around_and_empty_charts_skipped() -> None:
    assert trial_charts(HOLES["all values missing"]) == {}
    assert set(trial_charts(HOLES["NaN and None values"])) == {
        ALPHA_CHART,
        GROUP_CHART,
        LOSS_CHART,
    }
    assert "n/a" in trial_charts(HOLES["NaN and None values"])[GROUP_CHART]
