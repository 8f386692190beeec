"""Controls and the edit budget: every gain is shown beside the same edit procedure on
decompositions that learnt nothing, and a budget caps what any strategy removes."""

from __future__ import annotations

import typing

import pytest
import torch
from test_conformance import edit_source
from test_levers import small_context

from hpo.debias.controls import CONTROLS
from hpo.debias.controls.svd import singular_vectors
from hpo.debias.controls.untrained import untrained
from hpo.debias.strategies.registry import STRATEGIES
from hpo.params import SAEConfig, TrialParams
from hpo.sae.model import FaithfulSAE
from hpo.sae.training import initial_sae
from hpo.tasks.registry import get_task


def test_the_svd_control_is_an_exact_decomposition() -> None:
    torch.manual_seed(0)
    weight_t = torch.randn(6, 4)
    sae = singular_vectors(weight_t, TrialParams(top_k=2))
    assert sae.n_components == 4 and sae.top_k == 2
    torch.testing.assert_close(sae.effective_weight(), weight_t, atol=1e-5, rtol=1e-5)
    norms = [float(c.norm()) for c in sae.components().detach()]
    assert norms == sorted(norms, reverse=True)  # largest first


@pytest.mark.parametrize("init", ["xavier", "tied"])
def test_the_random_control_is_the_sae_before_training(init: str) -> None:
    weight_t = torch.randn(6, 4)
    params = TrialParams(n_components=8, top_k=2, init=init, seed=5)
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    control = untrained(weight_t, params)
    assert torch.equal(torch.rand(1), expected)  # the global random state is untouched
    start = initial_sae(weight_t, params)
    assert torch.equal(control.encoder, start.encoder)
    assert torch.equal(control.decoder, start.decoder)


def test_every_result_carries_its_controls_and_the_lift_over_them() -> None:
    ctx = small_context()
    task = get_task("colored_mnist")
    params = TrialParams(
        n_components=8, top_k=2, fit_steps=20, ablate="fitted", controls=CONTROLS.names()
    )
    torch.manual_seed(1)
    result = task.evaluate(ctx, {"0": FaithfulSAE(6, 4, 8, 2)}, params, with_test=True)
    assert result.controls() == [f"control_{c}" for c in CONTROLS]
    for name in result.controls():
        assert set(result.models[name]) == {"val", "test"}
    best = max(result.metric(c, "val").worst_group for c in result.controls())
    assert result.value("lift") == pytest.approx(result.value("worst_group") - best)
    assert result.lift("val") == pytest.approx(result.value("lift"))
    assert result.edit.labels == "group"
    assert result.value("components_removed") == result.edit.components_removed
    assert result.to_json()["lift_by_split"].keys() == {"val", "test"}
    none = task.evaluate(
        ctx,
        {"0": FaithfulSAE(6, 4, 8, 2)},
        params.model_copy(update={"controls": ()}),
        with_test=False,
    )
    assert none.controls() == [] and "lift" not in none.objectives


@pytest.mark.parametrize("budget", [1, 2, 5])
@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_honours_the_budget(name: str, budget: int) -> None:
    strategy = STRATEGIES[name]
    source, _ = edit_source(group_loss=strategy.labels == "group")
    unlimited = strategy.select(source)
    capped_source = type(source)(
        **{**source.__dict__, "config": source.config.model_copy(update={"max_components": budget})}
    )
    capped = strategy.select(capped_source)
    total = sum(len(r.components) for r in capped.values())
    assert total <= budget
    assert total == min(budget, sum(len(r.components) for r in unlimited.values())) or (
        strategy.labels == "group"  # a refit may leave a kept component under 1 %
    )
    if strategy.name != "fitted":  # whole components: the budget keeps a subset
        for layer, r in capped.items():
            assert set(r.components) <= set(unlimited[layer].components)


def test_the_budget_curve_edits_each_decomposition_within_each_budget() -> None:
    ctx = small_context()
    task = get_task("colored_mnist")
    params = TrialParams(n_components=8, top_k=2, ablate="attribution", n_ablate=3)
    torch.manual_seed(1)
    curves = task.budget_curve(ctx, {"0": FaithfulSAE(6, 4, 8, 2)}, params, [1, 2, None])
    assert set(curves) == {"debiased", "control_random", "control_svd"}
    for points in curves.values():
        assert [p.budget for p in points] == [1, 2, None]
        assert [p.removed for p in points] == [1, 2, 3]  # n_ablate = 3 without a budget
        assert all(0.0 <= p.val_worst_group <= 1.0 for p in points)


def other_value(config: SAEConfig, name: str) -> object:
    """A different valid value of one SAEConfig field."""
    value = getattr(config, name)
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 2 + 0.5
    choices = typing.get_args(SAEConfig.model_fields[name].annotation)
    return next(c for c in choices if c != value)


@pytest.mark.parametrize("name", sorted(CONTROLS))
def test_a_control_reads_only_the_fields_it_names(name: str) -> None:
    """A control's edit is cached by the fields it names: changing any other leaves its
    decomposition exactly as it was."""
    control = CONTROLS[name]
    weight_t = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    base = SAEConfig(n_components=8, top_k=2, project_faithful=True, steps=5)
    reference = control(weight_t, base).state_dict()
    for field in SAEConfig.model_fields:
        if field in control.reads:
            continue
        changed = control(weight_t, base.model_copy(update={field: other_value(base, field)}))
        assert all(torch.equal(v, changed.state_dict()[k]) for k, v in reference.items()), field


def test_the_neurons_control_is_the_weight_split_by_input_unit() -> None:
    weight_t = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    sae = CONTROLS["neurons"](weight_t, SAEConfig(top_k=3))
    assert sae.n_components == 6 and sae.top_k == 3
    torch.testing.assert_close(sae.effective_weight(), weight_t, rtol=0, atol=0)
    for unit in range(6):  # component c: input unit c's outgoing weights, nothing else
        expected = torch.zeros(6, 4)
        expected[unit] = weight_t[unit]
        torch.testing.assert_close(sae.components([unit])[0], expected)
