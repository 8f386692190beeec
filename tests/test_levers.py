"""The debiasing levers a study can search: which components go, how many latents each
concept gets, which layer, and an α grid that grows when the best α is at its edge."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from hpo.config import TrialParams
from hpo.debias.scoring import CachedSplit
from hpo.results import GroupMetrics
from hpo.sae.model import FaithfulSAE
from hpo.tasks import get_task
from hpo.tasks.bundle import ClassifierContext
from hpo.tasks.colored_mnist import ColoredMnistTask


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
    base = ctx.weight_of(ctx.layer).detach().clone()
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
    task = get_task("colored_mnist")
    cond = TrialParams(ablate="conditioned", concept_latents=3, n_components=12, top_k=2)
    both = cond.model_copy(update={"ablate": "both", "n_ablate": 2})
    attribution = cond.model_copy(update={"ablate": "attribution", "n_ablate": 2})
    assert task.ablated_components(ctx, ctx.layer, sae, cond) == list(range(6))  # 3 per concept
    chosen = task.ablated_components(ctx, ctx.layer, sae, both)
    assert chosen[:6] == list(range(6)) and len(chosen) == 8
    assert len(task.ablated_components(ctx, ctx.layer, sae, attribution)) == 2


def test_any_linear_layer_of_the_base_model_can_be_decomposed() -> None:
    assert ColoredMnistTask(base_model="mlp", layer="fc0").layer == "fc0"
    with pytest.raises(ValueError, match=r"'fc0' is not an nn.Linear of the cnn.*fc1, fc2"):
        ColoredMnistTask(base_model="cnn", layer="fc0")


def test_ablate_bias_keeps_the_layers_mean_output_on_probe() -> None:
    ctx = small_context()
    sae = FaithfulSAE(6, 4, n_components=8, top_k=2)
    task = get_task("colored_mnist")
    with torch.no_grad():
        ablated_t = sae.components([0, 1]).sum(0)
    z = ctx.splits["probe"].z
    layer = ctx.model.get_submodule("0")

    def mean_output(edit: dict[str, torch.Tensor]) -> torch.Tensor:
        bias = edit.get("0.bias", layer.bias)
        return (z @ edit["0.weight"].T + bias).mean(0)

    plain = task.model_edit(ctx, {"0": ablated_t}, 1.5, TrialParams())
    moved = task.model_edit(ctx, {"0": ablated_t}, 1.5, TrialParams(ablate_bias=True))
    assert set(plain) == {"0.weight"} and set(moved) == {"0.weight", "0.bias"}
    torch.testing.assert_close(moved["0.weight"], plain["0.weight"])
    with torch.no_grad():
        original = layer(z).mean(0)
    torch.testing.assert_close(mean_output(moved), original, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(mean_output(plain), original, atol=1e-3)
