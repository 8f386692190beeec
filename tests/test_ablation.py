"""Editing the weight and scoring the edit: formulas, architecture, the batched α sweep.

A debiased model must be the base model's own class with one tensor changed, so that it
loads anywhere the base model loads; and the α sweep's one batched pass must agree with
scoring each edited model on its own.
"""

from __future__ import annotations

import pytest
import torch

from hpo.debias import ablation, scoring
from hpo.models.classifiers import BASE_MODELS, ColoredMnistClassifier
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


def test_swept_weights_stack_one_debiased_weight_per_alpha() -> None:
    weight, ablated_t = torch.randn(3, 4), torch.randn(4, 3)
    alphas = torch.tensor([0.0, 0.3, 1.0])

    stacked = ablation.swept_weights(weight, ablated_t, alphas)

    assert stacked.shape == (3, 3, 4)
    for i, a in enumerate(alphas.tolist()):
        torch.testing.assert_close(stacked[i], ablation.debiased_weight(weight, ablated_t, a))


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("layer", ["fc1", "fc2"])
def test_debiased_model_keeps_the_architecture(kind: str, layer: str) -> None:
    base = base_model(kind)
    with torch.no_grad():
        ablated_t = ablation.ablated_sum(sae_for(base, layer), [0, 1])
    new_weight = ablation.debiased_weight(getattr(base, layer).weight, ablated_t, 0.8).detach()

    debiased = ablation.debiased_model(base, layer, new_weight)

    assert type(debiased) is type(base)
    base_state, state = base.state_dict(), debiased.state_dict()
    assert list(state) == list(base_state)
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in base_state.items()}
    fresh = BASE_MODELS[kind]()
    fresh.load_state_dict(state, strict=True)
    assert sum(p.numel() for p in debiased.parameters()) == sum(
        p.numel() for p in base.parameters()
    )
    changed = [k for k in state if not torch.equal(state[k], base_state[k])]
    assert changed == [f"{layer}.weight"]
    torch.testing.assert_close(getattr(base, layer).weight, base_state[f"{layer}.weight"])

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

    assert m["groups"]["a"] == pytest.approx(2 / 3)
    assert m["groups"]["b"] == pytest.approx(1 / 2)
    assert m["groups"]["c"] == pytest.approx(2 / 3)
    assert m["worst_group"] == pytest.approx(1 / 2)  # the empty group does not count
    assert m["mean_group"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
    assert m["overall"] == pytest.approx(5 / 8)


def sweep_setup(
    layer: str,
) -> tuple[ColoredMnistClassifier, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    model = base_model("mlp")
    with torch.no_grad():
        z = model.layer_input(images(), layer)
        ablated_t = ablation.ablated_sum(sae_for(model, layer), [0, 1, 2]) * 20
    digits, group_ids = labels()
    return model, z, digits, group_ids, ablated_t


@pytest.mark.parametrize("layer", ["fc1", "fc2"])
def test_alpha_zero_scores_like_the_original_model(layer: str) -> None:
    model, z, digits, group_ids, ablated_t = sweep_setup(layer)

    sweep = scoring.alpha_sweep(
        model, layer, z, digits, group_ids, NAMES, ablated_t, torch.tensor([0.0, 1.0])
    )

    assert sweep[0] == scoring.score_weight(model, layer, z, digits, group_ids, NAMES)


@pytest.mark.parametrize("layer", ["fc1", "fc2"])
def test_the_batched_sweep_matches_scoring_each_edited_model(layer: str) -> None:
    model, z, digits, group_ids, ablated_t = sweep_setup(layer)
    alphas = scoring.alpha_grid(1.2, 7)

    sweep = scoring.alpha_sweep(model, layer, z, digits, group_ids, NAMES, ablated_t, alphas)

    assert len(sweep) == 7
    weight = getattr(model, layer).weight
    for alpha, metrics in zip(alphas.tolist(), sweep, strict=True):
        edited = ablation.debiased_model(
            model, layer, ablation.debiased_weight(weight, ablated_t, alpha)
        )
        assert metrics == scoring.score_weight(edited, layer, z, digits, group_ids, NAMES)
    # the edit is strong enough that α matters at all
    assert len({m["overall"] for m in sweep}) > 1


def metrics(worst: float, mean: float) -> dict:
    return {"worst_group": worst, "mean_group": mean, "overall": mean, "groups": {}}


def test_pick_alpha_prefers_worst_group_then_mean_group_then_smaller_alpha() -> None:
    assert scoring.pick_alpha([metrics(0.2, 0.9), metrics(0.6, 0.7), metrics(0.5, 0.95)]) == 1
    assert scoring.pick_alpha([metrics(0.6, 0.7), metrics(0.6, 0.8), metrics(0.1, 0.9)]) == 1
    tied = [metrics(0.3, 0.5), metrics(0.7, 0.8), metrics(0.7, 0.8), metrics(0.7, 0.8)]
    assert scoring.pick_alpha(tied) == 1


def test_alpha_grid_runs_from_zero_to_alpha_max() -> None:
    grid = scoring.alpha_grid(1.2, 13)
    assert grid[0] == 0 and grid[-1].item() == pytest.approx(1.2) and len(grid) == 13
