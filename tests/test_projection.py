"""Projecting a trained decomposition onto its weight (`params.project_faithful`)."""

from __future__ import annotations

import pytest
import torch
from test_sae import layer_data, relative_faithfulness_error, short_params

from hpo.debias.controls.untrained import untrained
from hpo.sae.model import FaithfulSAE
from hpo.sae.projection import project_to_weight, ridge_step
from hpo.sae.training import train_sae


def unfaithful_sae(d_in: int, d_out: int, n_components: int, rank: int = 1) -> tuple:
    gen = torch.Generator().manual_seed(0)
    weight_t = torch.randn(d_in, d_out, generator=gen) / d_in**0.5
    sae = FaithfulSAE(d_in, d_out, n_components, 4, rank)
    with torch.no_grad():
        sae.tie_to(weight_t)  # E·D = W·DᵀD, then moved further off
        sae.encoder.add_(0.3 * torch.randn(sae.encoder.shape, generator=gen))
    return sae, weight_t


def error(sae: FaithfulSAE, weight_t: torch.Tensor) -> float:
    with torch.no_grad():
        return float((weight_t - sae.effective_weight()).square().sum() / weight_t.square().sum())


@pytest.mark.parametrize("rank", [1, 2])
def test_an_encoder_that_spans_the_inputs_is_made_exactly_faithful(rank: int) -> None:
    sae, weight_t = unfaithful_sae(12, 6, 32, rank)
    assert error(sae, weight_t) > 0.1

    project_to_weight(sae, weight_t)

    assert error(sae, weight_t) < 1e-9


def test_the_decoder_step_is_the_least_change_that_closes_the_gap() -> None:
    """With E of full row rank, D + E⁺(W − E·D): no other decoder that sums to W is
    closer to the trained one."""
    sae, weight_t = unfaithful_sae(12, 6, 32)
    e, d0, w = sae.encoder.detach().double(), sae.decoder.detach().double(), weight_t.double()

    d = ridge_step(e, w, d0, 1e-9)

    least = d0 + torch.linalg.pinv(e) @ (w - e @ d0)
    assert torch.allclose(d, least, atol=1e-6)
    other = least + (torch.eye(32, dtype=e.dtype) - torch.linalg.pinv(e) @ e)[:, :6]
    assert torch.allclose(e @ other, w, atol=1e-9)  # also sums to W, moved further
    assert (other - d0).norm() > (d - d0).norm()


def test_a_narrow_encoder_gets_closer_without_getting_worse() -> None:
    """in > C·r: the decoder step alone cannot close the gap; the encoder steps help."""
    sae, weight_t = unfaithful_sae(40, 30, 8)
    before = error(sae, weight_t)
    best_rank_8 = torch.linalg.svdvals(weight_t)[8:].square().sum() / weight_t.square().sum()

    project_to_weight(sae, weight_t)

    assert error(sae, weight_t) < 0.5 * before
    assert error(sae, weight_t) >= float(best_rank_8) - 1e-6  # no rank-8 product does better


def test_training_with_the_projection_ends_faithful_and_scores_projected_copies() -> None:
    data = layer_data()
    seen: list[float] = []
    trained_ids: set[int] = set()

    def on_eval(step: int, sae: FaithfulSAE) -> None:
        seen.append(error(sae, data.weight_t))
        trained_ids.add(id(sae))

    plain = train_sae(data, short_params())
    projected = train_sae(data, short_params(project_faithful=True), on_eval=on_eval)

    assert relative_faithfulness_error(plain, data) > 1e-3
    assert relative_faithfulness_error(projected, data) < 1e-9
    assert seen and max(seen) < 1e-9  # each pruning evaluation sees a projected copy
    assert id(projected.sae) not in trained_ids  # training went on from the unprojected one


def test_the_untrained_control_is_projected_like_the_trial() -> None:
    data = layer_data()
    params = short_params(init="tied")

    assert error(untrained(data.weight_t, params), data.weight_t) > 1e-3
    projected = untrained(data.weight_t, params.model_copy(update={"project_faithful": True}))
    assert error(projected, data.weight_t) < 1e-9
