"""Editing the weight and scoring the edit: formulas, architecture, the two scoring paths.

A debiased model must be the base model's own class with one tensor changed, so that it
loads anywhere the base model loads; and scoring from cached layer inputs must agree with
running the whole edited model.
"""

from __future__ import annotations

import pytest
import torch

from hpo.debias import ablation, scoring
from hpo.debias.edit import alpha as alphas
from hpo.models.classifiers import BASE_MODELS, ColoredMnistClassifier
from hpo.results import GroupMetrics
from hpo.sae.model import FaithfulSAE

NAMES = ("red/0-4", "red/5-9", "green/0-4", "green/5-9")


def base_model(kind: str) -> ColoredMnistClassifier:
    torch.manual_seed(0)
    return BASE_MODELS[kind]().eval()


def sae_for(model: ColoredMnistClassifier, layer: str) -> FaithfulSAE:
    weight = getattr(model, layer).weight  # out x in
    torch.manual_seed(1)
    return FaithfulSAE(weight.shape[1], weight.shape[0], n_components=8, top_k=2)


def images(n: int = 24) -> torch.Tensor:
    return torch.rand(n, 3, 28, 28, generator=torch.Generator().manual_seed(2))


def labels(n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    digits = torch.randint(0, 10, (n,), generator=gen)
    return digits, torch.randint(0, len(NAMES), (n,), generator=gen)


def test_debiased_weight_subtracts_alpha_times_the_ablated_components() -> None:
    weight = torch.randn(3, 4)  # torch layout: out x in
    ablated_t = torch.randn(4, 3)  # SAE layout: in x out

    new = ablation.debiased_weight(weight, ablated_t, 0.5)

    torch.testing.assert_close(new, weight - 0.5 * ablated_t.T)
    torch.testing.assert_close(ablation.debiased_weight(weight, ablated_t, 0.0), weight)


def test_ablated_sum_adds_the_chosen_components() -> None:
    sae = FaithfulSAE(5, 3, n_components=6, top_k=2)
    with torch.no_grad():
        total = ablation.ablated_sum(sae, [1, 4])
        expected = sae.components()[1] + sae.components()[4]
        torch.testing.assert_close(total, expected)
        everything = ablation.ablated_sum(sae, list(range(6)))
        torch.testing.assert_close(everything, sae.effective_weight())
        part = ablation.ablated_sum(sae, [1, 4], [0.25, 0.5])
        torch.testing.assert_close(part, 0.25 * sae.components()[1] + 0.5 * sae.components()[4])


def test_ablated_sum_of_rank_2_components() -> None:
    sae = FaithfulSAE(5, 3, n_components=4, top_k=2, rank=2)
    with torch.no_grad():
        part = ablation.ablated_sum(sae, [0, 3], [1.0, 0.5])
        torch.testing.assert_close(part, sae.components()[0] + 0.5 * sae.components()[3])


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("layer", ["fc1", "fc2"])
def test_the_edited_state_dict_keeps_the_architecture(kind: str, layer: str) -> None:
    base = base_model(kind)
    with torch.no_grad():
        ablated_t = ablation.ablated_sum(sae_for(base, layer), [0, 1])
    new_weight = ablation.debiased_weight(getattr(base, layer).weight, ablated_t, 0.8).detach()
    base_state = base.state_dict()
    state = {**base_state, f"{layer}.weight": new_weight}

    fresh = BASE_MODELS[kind]()
    fresh.load_state_dict(state, strict=True)

    x = images()
    with torch.no_grad():
        direct = fresh.eval()(x)
        via_head = base.head(base.layer_input(x, layer), layer, new_weight)
    torch.testing.assert_close(direct, via_head)


# ------------------------------------------------------------------------- scoring


def test_group_metrics_on_a_hand_made_example() -> None:
    correct = torch.tensor([True, True, False, True, False, False, True, True])
    groups = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])

    m = scoring.group_metrics(correct, groups, ("a", "b", "c", "empty"))

    assert m.groups["a"] == pytest.approx(2 / 3)
    assert m.groups["b"] == pytest.approx(1 / 2)
    assert m.groups["c"] == pytest.approx(2 / 3)
    assert m.groups["empty"] is None
    assert m.worst_group == pytest.approx(1 / 2)  # the empty group does not count
    assert m.mean_group == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
    assert m.overall == pytest.approx(5 / 8)


def scorers(layer: str) -> tuple[scoring.Scorer, scoring.Scorer, torch.Tensor]:
    """The same model and split scored from cached layer inputs and by a whole forward."""
    model = base_model("mlp")
    x = images()
    digits, group_ids = labels()
    with torch.no_grad():
        z = model.layer_input(x, layer)
        ablated_t = ablation.ablated_sum(sae_for(model, layer), [0, 1, 2]) * 20
    cached = scoring.CachedSplit(z=z, y=digits, groups=group_ids)
    full = scoring.CachedSplit(z=z, y=digits, groups=group_ids, x=x)
    return (
        scoring.Scorer(model, layer, {"val": cached}, NAMES),
        scoring.Scorer(model, layer, {"val": full}, NAMES),
        ablated_t,
    )


@pytest.mark.parametrize("layer", ["fc1", "fc2"])
def test_scoring_from_cached_inputs_matches_the_whole_model(layer: str) -> None:
    fast, whole, ablated_t = scorers(layer)
    weight = fast.model.get_submodule(layer).weight
    seen = set()
    for alpha in alphas.alpha_grid(1.2, 7):
        edit = {f"{layer}.weight": ablation.debiased_weight(weight, ablated_t, alpha)}
        torch.testing.assert_close(fast.logits("val", edit), whole.logits("val", edit))
        assert fast.metrics("val", edit) == whole.metrics("val", edit)
        seen.add(fast.metrics("val", edit).overall)
    assert len(seen) > 1  # the edit is strong enough that α matters at all
    assert fast.metrics("val") == whole.metrics("val")  # no edit: the original model


def test_scoring_an_edit_leaves_the_model_unchanged() -> None:
    fast, _, ablated_t = scorers("fc1")
    before = {k: v.clone() for k, v in fast.model.state_dict().items()}
    weight = fast.model.fc1.weight
    fast.metrics("val", {"fc1.weight": ablation.debiased_weight(weight, ablated_t, 1.0)})
    after = fast.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def metrics(worst: float, mean: float) -> GroupMetrics:
    return GroupMetrics(worst_group=worst, mean_group=mean, overall=mean, groups={})


def test_pick_alpha_prefers_worst_group_then_mean_group_then_smaller_alpha() -> None:
    assert alphas.pick_alpha([metrics(0.2, 0.9), metrics(0.6, 0.7), metrics(0.5, 0.95)]) == 1
    assert alphas.pick_alpha([metrics(0.6, 0.7), metrics(0.6, 0.8), metrics(0.1, 0.9)]) == 1
    tied = [metrics(0.3, 0.5), metrics(0.7, 0.8), metrics(0.7, 0.8), metrics(0.7, 0.8)]
    assert alphas.pick_alpha(tied) == 1


def test_alpha_grid_runs_from_zero_to_alpha_max() -> None:
    grid = alphas.alpha_grid(1.2, 13)
    assert grid[0] == 0 and grid[-1] == pytest.approx(1.2) and len(grid) == 13
    assert 0.7 in alphas.alpha_grid(1.2, 13)  # recorded α re-scores to the same float


def test_removing_no_component_removes_nothing() -> None:
    sae = FaithfulSAE(5, 3, n_components=4, top_k=2, rank=2)
    with torch.no_grad():
        assert torch.equal(ablation.ablated_sum(sae, []), torch.zeros(5, 3))


def many_groups(accuracies: list[float]) -> GroupMetrics:
    groups = {f"g{i}": a for i, a in enumerate(accuracies)}
    return GroupMetrics(min(accuracies), sum(accuracies) / len(accuracies), 0.5, groups)


def test_with_every_worst_group_at_zero_alpha_still_ranks_by_the_worst_quarter() -> None:
    """25 groups, the worst at 0 for every α: the mean of the worst 7 decides, then the
    mean over groups; the worst group stays what is reported."""
    flat = many_groups([0.0] * 7 + [0.9] * 18)
    better = many_groups([0.0, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2] + [0.5] * 18)
    assert better.worst_groups_mean > flat.worst_groups_mean
    assert better.mean_group < flat.mean_group  # the worst quarter decides before the mean
    assert alphas.pick_alpha([flat, better, flat]) == 1
    assert better.worst_group == 0.0


def test_the_tie_break_never_reorders_distinct_worst_groups() -> None:
    n = 300  # groups of at most 300 samples: accuracies are multiples of 1/n_g
    low = GroupMetrics(199 / 299, 0.9, 0.9, {"a": 199 / 299, "b": 1.0})
    high = GroupMetrics(200 / 300, 0.0, 0.0, {"a": 200 / 300, "b": 0.0})
    assert high.worst_group > low.worst_group  # by 1/(299·300)
    assert high.ranked_worst_group(n) > low.ranked_worst_group(n)
    tie_a, tie_b = many_groups([0.0, 0.1, 0.9]), many_groups([0.0, 0.3, 0.9])
    assert tie_b.ranked_worst_group(n) > tie_a.ranked_worst_group(n) > 0.0
    assert tie_b.ranked_worst_group(n) - tie_b.worst_group < 1 / n**2
