"""The debiasing levers a study can search: which components go, how many latents each
concept gets, which layer, and an α grid that grows when the best α is at its edge."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from hpo.debias import ablation
from hpo.debias.edit.procedure import plan_edit
from hpo.debias.scoring import CachedSplit
from hpo.params import TrialParams
from hpo.results import GroupMetrics
from hpo.sae.model import FaithfulSAE
from hpo.tasks import classifier_metrics
from hpo.tasks.classifier_context import ClassifierContext
from hpo.tasks.colored_mnist import ColoredMnistTask
from hpo.tasks.registry import get_task


def small_context() -> ClassifierContext:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    x = torch.randn(64, 6)
    concepts = torch.arange(64) % 2
    split = CachedSplit(z=x, y=concepts, groups=concepts, concepts=concepts, x=x)
    return ClassifierContext(
        model=model,
        layer="0",
        splits={"probe": split, "val": split, "test": split},
        group_names=("a", "b"),
        concept_names=("c0", "c1"),
        references={},
        data_sha256="",
        bundle_key="",
        bundle_path=Path(),
        card={},
    )


def peaked_at(best: float):
    """A fake validation score that rises with α up to `best`, then falls."""

    def metrics(split: str, overrides: dict | None = None) -> GroupMetrics:
        w = overrides["0.weight"]
        alpha = float((base - w).abs().sum() / unit)
        score = 1 - abs(alpha - best) / 10
        return GroupMetrics(score, score, score, {"a": score, "b": score})

    ctx = small_context()
    sae = FaithfulSAE(6, 4, n_components=8, top_k=2)
    base = ctx.model.get_submodule(ctx.layer).weight.detach().clone()
    with torch.no_grad():
        unit = (sae.components([0, 1]).sum(0)).abs().sum()
    ctx.scorer.metrics = metrics  # type: ignore[method-assign]
    return ctx, sae


@pytest.mark.parametrize(
    ("best", "extend", "chosen"), [(0.6, 3, 0.6), (2.0, 3, 2.0), (9.0, 1, 2.4), (9.0, 0, 1.2)]
)
def test_an_alpha_at_the_grids_edge_extends_the_grid(
    best: float, extend: int, chosen: float
) -> None:
    ctx, sae = peaked_at(best)
    params = TrialParams(alpha_max=1.2, alpha_steps=13, alpha_extend=extend)
    result = get_task("colored_mnist").evaluate(ctx, {ctx.layer: sae}, params, with_test=False)
    assert result.edit.alpha == pytest.approx(chosen, abs=1e-6)
    alphas = result.edit.alpha_curve["alphas"]
    assert alphas[:13] == [round(0.1 * i, 6) for i in range(13)]
    assert alphas == sorted(alphas) and len(set(alphas)) == len(alphas)
    assert max(alphas) <= 1.2 * (1 + extend) + 1e-9


def test_ablate_both_takes_the_conditioned_latents_and_more_by_attribution() -> None:
    ctx = small_context()
    sae = FaithfulSAE(6, 4, n_components=12, top_k=2)
    cond = TrialParams(ablate="conditioned", concept_latents=3, n_components=12, top_k=2)
    both = cond.model_copy(update={"ablate": "both", "n_ablate": 2})
    attribution = cond.model_copy(update={"ablate": "attribution", "n_ablate": 2})

    def chosen(params: TrialParams) -> list[int]:
        removal = plan_edit({ctx.layer: sae}, ctx.edit_target, params).removal[ctx.layer]
        assert removal.fractions is None  # whole components
        return removal.components

    assert chosen(cond) == list(range(6))  # 3 per concept
    assert chosen(both)[:6] == list(range(6)) and len(chosen(both)) == 8
    assert len(chosen(attribution)) == 2


def test_any_linear_layer_of_the_base_model_can_be_decomposed() -> None:
    assert ColoredMnistTask(base_model="mlp", layer="fc0").layer == "fc0"
    with pytest.raises(ValueError, match=r"'fc0' is not an nn.Linear of the cnn.*fc1, fc2"):
        ColoredMnistTask(base_model="cnn", layer="fc0")


def test_ablate_bias_keeps_the_layers_mean_output_on_probe() -> None:
    ctx = small_context()
    sae = FaithfulSAE(6, 4, n_components=8, top_k=2)
    with torch.no_grad():
        ablated_t = sae.components([0, 1]).sum(0)
    z = ctx.splits["probe"].z
    layer = ctx.model.get_submodule("0")

    def mean_output(edit: dict[str, torch.Tensor]) -> torch.Tensor:
        bias = edit.get("0.bias", layer.bias)
        return (z @ edit["0.weight"].T + bias).mean(0)

    plain = ctx.edit_target.overrides({"0": ablated_t}, 1.5, compensate_bias=False)
    moved = ctx.edit_target.overrides({"0": ablated_t}, 1.5, compensate_bias=True)
    assert set(plain) == {"0.weight"} and set(moved) == {"0.weight", "0.bias"}
    torch.testing.assert_close(moved["0.weight"], plain["0.weight"])
    with torch.no_grad():
        original = layer(z).mean(0)
    torch.testing.assert_close(mean_output(moved), original, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(mean_output(plain), original, atol=1e-3)


def test_a_fitted_removal_takes_away_what_the_loss_wants_gone_and_nothing_it_needs() -> None:
    torch.manual_seed(0)
    factors = {  # E_c [C, in, r], D_c [C, r, out]; rank 2 in "b"
        "a": (torch.randn(4, 3, 1), torch.randn(4, 1, 2)),
        "b": (torch.randn(2, 3, 2), torch.randn(2, 2, 2)),
    }
    components = {k: e @ d for k, (e, d) in factors.items()}
    target = {"a": components["a"][1] + components["a"][3], "b": components["b"][0]}

    def loss(removed: dict[str, torch.Tensor], _: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum((removed[k] - target[k]).square().sum() for k in target)

    fitted = ablation.fit_removal(factors, loss, steps=600, lr=0.05, l1=0.0).fractions

    assert fitted["a"][[1, 3]].min() > 0.9 and fitted["a"][[0, 2]].max() < 0.1
    assert fitted["b"][0] > 0.9 and fitted["b"][1] < 0.1
    assert all(((f >= 0) & (f <= 1)).all() for f in fitted.values())  # removal only
    sparse = ablation.fit_removal(factors, loss, steps=600, lr=0.05, l1=100.0).fractions
    assert sparse["a"].sum() < fitted["a"].sum()  # the l1 keeps removal small


def test_ablate_fitted_scores_the_edit_it_records_in_two_layers() -> None:
    ctx = small_context()
    ctx.probe_inputs["2"] = torch.relu(ctx.model[0](ctx.splits["probe"].z)).detach()
    task = get_task("colored_mnist")
    params = TrialParams(ablate="fitted", layers="0+2", n_components=8, top_k=2, fit_steps=50)
    torch.manual_seed(1)
    saes = {"0": FaithfulSAE(6, 4, n_components=8, top_k=2), "2": FaithfulSAE(4, 2, 8, 2)}

    result = task.evaluate(ctx, saes, params, with_test=True)

    edit = result.edit
    assert edit.strategy == "fitted" and set(edit.components) == set(edit.fractions) == {"0", "2"}
    for layer in ("0", "2"):
        assert len(edit.components[layer]) == len(edit.fractions[layer])
        assert all(0.01 <= f <= 1 for f in edit.fractions[layer])
    state = task.edited_state_dict(ctx, saes, params, result)
    changed = {k for k, v in ctx.model.state_dict().items() if not torch.equal(v, state[k])}
    assert changed <= {"0.weight", "2.weight"}
    overrides = {k: state[k] for k in ("0.weight", "2.weight")}
    assert ctx.scorer.metrics("test", overrides) == result.metric("debiased", "test")


def test_prediction_change_is_zero_for_an_exact_decomposition_and_not_for_a_wrong_one() -> None:
    ctx = small_context()
    w_t = ctx.edit_target.weight_t("0")  # (in × out) = (6 × 4)
    exact = FaithfulSAE(6, 4, n_components=8, top_k=2)
    with torch.no_grad():
        exact.encoder.zero_()
        exact.decoder.zero_()
        exact.encoder[:, :4] = w_t
        exact.decoder[:4, :] = torch.eye(4)
    torch.testing.assert_close(exact.effective_weight(), w_t)
    wrong = FaithfulSAE(6, 4, n_components=8, top_k=2)
    with torch.no_grad():
        wrong.encoder[:, :4] = -w_t
        wrong.decoder.zero_()
        wrong.decoder[:4, :] = torch.eye(4)

    assert classifier_metrics.prediction_change(ctx, {"0": exact}) == 0.0
    assert classifier_metrics.prediction_change(ctx, {"0": wrong}) > 0.05  # the layer negated


def test_signed_fractions_amplify_what_the_loss_wants_more_of() -> None:
    torch.manual_seed(0)
    factors = {"a": (torch.randn(3, 3, 1), torch.randn(3, 1, 2))}
    components = factors["a"][0] @ factors["a"][1]
    target = -0.8 * components[1]  # "remove −0.8 of component 1": amplify it by 0.8

    def loss(removed: dict[str, torch.Tensor], _: dict[str, torch.Tensor]) -> torch.Tensor:
        return (removed["a"] - target).square().sum()

    removal_only = ablation.fit_removal(factors, loss, steps=600, lr=0.05, l1=0.0).fractions
    signed = ablation.fit_removal(factors, loss, steps=600, lr=0.05, l1=0.0, low=-1.0).fractions
    assert removal_only["a"].min() >= 0  # it cannot go below no removal
    assert signed["a"][1] == pytest.approx(-0.8, abs=0.02)
    assert signed["a"][[0, 2]].abs().max() < 0.02
    assert ((signed["a"] >= -1) & (signed["a"] <= 1)).all()


def test_a_fit_moves_a_bias_freely_or_only_along_the_components_output_directions() -> None:
    torch.manual_seed(0)
    factors = {"a": (torch.randn(2, 3, 1), torch.randn(2, 1, 4))}
    wanted = torch.tensor([1.0, -2.0, 0.5, 3.0])

    def loss(removed: dict[str, torch.Tensor], shifts: dict[str, torch.Tensor]) -> torch.Tensor:
        return (shifts["a"] - wanted).square().sum() + removed["a"].square().sum()

    free = ablation.fit_removal(
        factors, loss, steps=800, lr=0.05, l1=0.0, shifts={"a": "free"}
    ).shifts["a"]
    torch.testing.assert_close(free, wanted, atol=1e-2, rtol=0)
    along = ablation.fit_removal(
        factors, loss, steps=800, lr=0.05, l1=0.0, shifts={"a": "components"}
    ).shifts["a"]
    directions = factors["a"][1].reshape(2, 4)  # D_c: the move lies in their span
    coef = torch.linalg.lstsq(directions.T, along[:, None]).solution
    torch.testing.assert_close(directions.T @ coef, along[:, None], atol=1e-4, rtol=0)
    best = directions.T @ torch.linalg.lstsq(directions.T, wanted[:, None]).solution
    torch.testing.assert_close(along[:, None], best, atol=1e-2, rtol=0)


@pytest.mark.parametrize(("fit_bias", "moved"), [("first", {"0"}), ("layers", {"0", "2"})])
def test_a_fitted_bias_move_is_recorded_and_replayed_at_the_chosen_alpha(
    fit_bias: str, moved: set[str]
) -> None:
    ctx = small_context()
    ctx.probe_inputs["2"] = torch.relu(ctx.model[0](ctx.splits["probe"].z)).detach()
    task = get_task("colored_mnist")
    params = TrialParams(
        ablate="fitted",
        layers="0+2",
        n_components=8,
        top_k=2,
        fit_steps=50,
        amplify=1.0,
        fit_bias=fit_bias,
        max_components=3,
    )
    torch.manual_seed(1)
    saes = {"0": FaithfulSAE(6, 4, n_components=8, top_k=2), "2": FaithfulSAE(4, 2, 8, 2)}

    result = task.evaluate(ctx, saes, params, with_test=True)

    plan = result.edit.plan
    assert set(plan.bias_shift or {}) == moved and plan.components_removed <= 3
    assert all(-1 <= f <= 1 for r in plan.removal.values() for f in r.fractions or [])
    state = task.edited_state_dict(ctx, saes, params, result)
    alpha = result.edit.alpha
    for layer in moved:
        shift = torch.tensor(plan.removal[layer].bias_shift)
        bias = ctx.model.get_submodule(layer).bias.detach()
        torch.testing.assert_close(state[f"{layer}.bias"], bias + alpha * shift)
    overrides = {k: state[k] for k in ("0.weight", "0.bias", "2.weight", "2.bias")}
    assert ctx.scorer.metrics("test", overrides) == result.metric("debiased", "test")


def test_an_edit_search_chooses_on_held_out_probe_and_never_on_validation() -> None:
    from hpo.debias.edit.search import choose_edit

    ctx = small_context()
    ctx.probe_inputs["2"] = torch.relu(ctx.model[0](ctx.splits["probe"].z)).detach()
    torch.manual_seed(1)
    saes = {"0": FaithfulSAE(6, 4, n_components=8, top_k=2), "2": FaithfulSAE(4, 2, 8, 2)}
    params = TrialParams(
        ablate="fitted",
        layers="0+2",
        n_components=8,
        top_k=2,
        fit_steps=30,
        edit_search={"max_components": (1, 3), "amplify": (0.0, 1.0)},
    )
    chosen, tried = choose_edit(saes, ctx.edit_target, params.edit_config, params.alpha_grid)
    assert [c.settings for c in tried] == [
        {"max_components": m, "amplify": a} for m in (1, 3) for a in (0.0, 1.0)
    ]
    best = max(tried, key=lambda c: c.rank())
    assert (chosen.max_components, chosen.amplify) == tuple(best.settings.values())
    assert chosen.edit_search.size == 0

    # another validation split: the same choice, the same held-out scores
    other = small_context()
    val = other.splits["val"]
    other.splits["val"] = CachedSplit(z=val.z, y=1 - val.y, groups=val.groups, x=val.x)
    other.probe_inputs["2"] = ctx.probe_inputs["2"]
    again, tried_again = choose_edit(saes, other.edit_target, params.edit_config, params.alpha_grid)
    assert again == chosen and [c.to_json() for c in tried_again] == [c.to_json() for c in tried]

    result = get_task("colored_mnist").evaluate(ctx, saes, params, with_test=True)
    assert len(result.edit.search) == 4 and result.edit.plan.settings == best.settings
    assert result.edit.components_removed <= best.settings["max_components"]
    for name, control in result.control_edits.items():  # the controls search the same way
        assert len(control.search) == 4, name


def test_a_field_the_trial_searches_is_not_also_the_samplers() -> None:
    from hpo.errors import UserError
    from hpo.service.study_file import parse_study

    doc = {
        "study": {"name": "s", "objectives": ["mmcs"]},
        "task": {"kind": "toy_superposition"},
        "params": {"ablate": "fitted", "edit_search": {"removal_l1": [1.0, 10.0]}},
        "search": {"removal_l1": {"low": 1.0, "high": 10.0}},
    }
    with pytest.raises(UserError, match="search.removal_l1: also in params.edit_search"):
        parse_study(doc, "s.toml")
    doc = {**doc, "search": {}, "params": {"edit_search": {"ablate": ["fitted", "both"]}}}
    with pytest.raises(UserError, match="mixes strategies of the concept and the group"):
        parse_study(doc, "s.toml")
