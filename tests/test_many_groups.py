"""A task with 25 groups (5 classes × 5 spurious values), as a third-party benchmark has:
every table, note and figure stays readable (the worst groups listed, the rest in one
line each for their lowest and median accuracy), and the group metrics are exact at
any group count.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import optuna
import pytest
import torch
from optuna.trial import TrialState

from hpo.debias.scoring import group_metrics
from hpo.outputs.charts import GROUP_CHART, _draw_groups, trial_charts
from hpo.outputs.group_rows import MAX_LISTED, WORST_LISTED, select_groups
from hpo.outputs.model_card import accuracy_table
from hpo.outputs.note_text import _gain_lines
from hpo.outputs.trial_table import format_result
from hpo.results import TrialResult
from hpo.service.study_file import parse_study
from hpo.service.trial import prepare_task, run_trial
from hpo.storage.records import read_trial

FACTORY = """
import torch
from torch import nn
from hpo import Split, UserTask

K = 5  # classes, and values of the spurious attribute


def make_task(seed: int) -> UserTask:
    gen = torch.Generator().manual_seed(seed)

    def split(n, bias):
        y = torch.randint(0, K, (n,), generator=gen)
        other = torch.randint(0, K, (n,), generator=gen)
        s = torch.where(torch.rand(n, generator=gen) < bias, y, other)
        x = torch.cat([nn.functional.one_hot(y, K) + 0.8 * torch.randn(n, K, generator=gen),
                       3.0 * nn.functional.one_hot(s, K)], 1).float()
        return Split(x, y, K * y + s, s)

    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(2 * K, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, K)
    )
    train = split(2000, 0.9)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(train.x), train.y).backward()
        opt.step()
    names = [f"y{y}/s{s}" for y in range(K) for s in range(K)]
    return UserTask(
        model=model.eval(), layer="2", probe=split(1000, 0.2), val=split(1000, 0.2),
        test=split(1000, 0.2), group_names=names, concept_names=[f"s{s}" for s in range(K)],
    )
"""


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> TrialResult:
    path = tmp_path_factory.mktemp("groups") / "groups25.py"
    path.write_text(FACTORY)
    study = parse_study(
        {
            "study": {"name": "groups25", "objectives": ["worst_group"]},
            "task": {"kind": "python", "factory": f"{path}:make_task"},
            "params": {"n_components": 16, "top_k": 4, "steps": 60, "eval_every": 30},
        },
        "test",
    )
    ctx = prepare_task(study, data_dir=None, progress=False)
    out, _ = run_trial(study, ctx, study.params, with_test=True)
    return out


def val_groups(result: TrialResult) -> list[dict[str, float | None]]:
    return [dict(m.groups) for n in result.model_names() if (m := result.metric(n, "val"))]


def test_the_groups_listed_are_the_worst_and_the_rest_is_summarised(result: TrialResult) -> None:
    names = result.group_names
    assert len(names) == 25 > MAX_LISTED
    chosen = select_groups(names, val_groups(result))
    assert len(chosen.listed) == WORST_LISTED and len(chosen.rest) == 25 - WORST_LISTED

    def lowest(g: str) -> float:
        return min(v for c in val_groups(result) if (v := c.get(g)) is not None)

    assert max(lowest(g) for g in chosen.listed) <= min(lowest(g) for g in chosen.rest)
    assert [lowest(g) for g in chosen.listed] == sorted(lowest(g) for g in chosen.listed)


def test_hpo_trial_table_lists_the_worst_groups_and_two_lines_for_the_rest(
    result: TrialResult,
) -> None:
    text = format_result(result)
    chosen = select_groups(result.group_names, val_groups(result))
    rows = [line.split()[0] for line in text.splitlines()]
    assert [g for g in result.group_names if g in rows] == sorted(
        chosen.listed, key=result.group_names.index
    )
    assert "17 other groups: lowest" in text and "17 other groups: median" in text
    assert len(text.splitlines()) < 30  # was 25 group rows + summaries + headers


def test_the_model_card_and_the_dashboard_note_list_the_worst_groups(result: TrialResult) -> None:
    card = accuracy_table(result)
    table = [line for line in card if line.startswith("|")]
    assert len(table) == 2 + 3 + WORST_LISTED + 2  # header, summaries, listed, the rest
    assert table[-1].startswith("| 17 other groups: median |")
    assert "every group's numbers are in `metrics.json`" in card[-1]
    groups = {name: dict(result.models[name]["val"].groups) for name in ("original", "debiased")}
    note = _gain_lines(groups)
    listed = [line for line in note if line.startswith("| y")]
    assert len(listed) == WORST_LISTED
    assert any(line.startswith("| 17 other groups: lowest |") for line in note)


def test_the_group_chart_draws_the_worst_groups_and_says_so(result: TrialResult) -> None:
    attrs: dict[str, Any] = {
        "val_groups": {
            name: dict(result.models[name]["val"].groups) for name in ("original", "debiased")
        }
    }
    trial = optuna.trial.create_trial(state=TrialState.COMPLETE, value=0.0, user_attrs=attrs)
    record = read_trial(trial)
    svg = trial_charts(record, 3)[GROUP_CHART]
    assert svg is not None
    ET.fromstring(svg)  # well-formed (its text is drawn as paths: read the figure itself)
    (ax,) = _draw_groups(record, 3).axes
    assert "the 8 worst of 25 groups" in ax.get_title()
    assert len(ax.get_xticks()) == WORST_LISTED


@pytest.mark.parametrize("n_groups", [4, 25, 100])
def test_group_metrics_are_exact_at_any_group_count(n_groups: int) -> None:
    gen = torch.Generator().manual_seed(n_groups)
    ids = torch.randint(0, n_groups, (5000,), generator=gen)
    correct = torch.rand(5000, generator=gen) < 0.7
    names = [f"g{i}" for i in range(n_groups)]
    got = group_metrics(correct, ids, names)
    for i, name in enumerate(names):
        members = correct[ids == i]
        want = None if len(members) == 0 else float(members.double().mean())
        assert got.groups[name] == pytest.approx(want)
    assert got.worst_group == min(v for v in got.groups.values() if v is not None)
