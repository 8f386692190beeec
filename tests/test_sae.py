"""The Faithful-SAE: its components, every loss term, and the training loop.

The losses are pure functions of tensors, so each one is checked against a direct
computation (by hand, or from torch's own linear algebra) on small random tensors.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hpo.errors import DivergedError
from hpo.params import LossWeights, TrialParams
from hpo.sae import losses
from hpo.sae.model import FaithfulSAE
from hpo.sae.objective import LOSS_NAMES, LOSSES, loss_terms, loss_weights
from hpo.sae.training import SAEData, faithful_sketch_size, train_sae


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_sae(rank: int, *, d_in: int = 6, d_out: int = 5, n: int = 4, k: int = 2) -> FaithfulSAE:
    torch.manual_seed(rank)
    return FaithfulSAE(d_in, d_out, n_components=n, top_k=k, rank=rank)


# --------------------------------------------------------------------------- model


@pytest.mark.parametrize("rank", [1, 3])
def test_components_sum_to_the_effective_weight(rank: int) -> None:
    sae = random_sae(rank)

    with torch.no_grad():
        components = sae.components()
        total = components.sum(dim=0)

    assert components.shape == (4, 6, 5)
    torch.testing.assert_close(total, sae.effective_weight())
    if rank == 1:
        assert all(torch.linalg.matrix_rank(c) == 1 for c in components)
    else:
        assert all(torch.linalg.matrix_rank(c) == rank for c in components)


@pytest.mark.parametrize("rank", [1, 2])
def test_top_k_keeps_exactly_k_components_per_sample(rank: int) -> None:
    sae = random_sae(rank, d_in=8, n=10, k=3)
    x = torch.randn(16, 8, generator=seeded())

    with torch.no_grad():
        _, sparse, pre = sae(x)

    per_component = sparse.view(16, 10, rank).abs().sum(dim=2)
    assert ((per_component != 0).sum(dim=1) == 3).all()
    assert ((sparse != 0).sum(dim=1) == 3 * rank).all()
    # what survives is the pre-activation itself, and the k strongest components
    kept = sparse != 0
    torch.testing.assert_close(sparse[kept], pre[kept])
    strength = pre.view(16, 10, rank)
    strength = strength[:, :, 0] if rank == 1 else strength.norm(dim=2)
    expected = strength.topk(3, dim=1).indices.sort(dim=1).values
    actual = per_component.nonzero()[:, 1].view(16, 3)
    assert torch.equal(actual, expected)


def test_a_wide_output_decodes_by_gathering_to_the_dense_product() -> None:
    torch.manual_seed(0)
    sae = FaithfulSAE(8, 512, n_components=16, top_k=4)  # 16 latents, 4 kept: ratio 4
    z = torch.randn(10, 16)
    with torch.no_grad():
        kept = sae.select(z)
        torch.testing.assert_close(sae.decode(kept), sae.densify(kept, z) @ sae.decoder)


def test_top_k_equal_to_n_components_keeps_everything() -> None:
    sae = FaithfulSAE(4, 3, n_components=5, top_k=5)
    x = torch.randn(7, 4, generator=seeded())
    with torch.no_grad():
        _, sparse, pre = sae(x)
    assert torch.equal(sparse, pre)


# -------------------------------------------------------------------------- losses


def test_reconstruction_is_zero_at_a_perfect_fit_and_positive_otherwise() -> None:
    target = torch.randn(8, 5, generator=seeded())

    assert losses.reconstruction(target.clone(), target) == 0
    off = losses.reconstruction(target + 0.1, target)
    assert off > 0
    assert off.item() == pytest.approx(0.01)


def test_faithfulness_is_zero_at_a_perfect_fit_and_positive_otherwise() -> None:
    sae = random_sae(1)
    with torch.no_grad():
        weight_t = sae.effective_weight().clone()

        assert losses.faithfulness(sae.effective_weight(), weight_t) == 0
        assert losses.faithfulness(sae.effective_weight(), weight_t + 0.5) > 0
        assert losses.faithfulness(sae.effective_weight(), torch.zeros_like(weight_t)) == (
            pytest.approx(weight_t.square().mean().item())
        )


def test_the_faithfulness_sketch_is_unbiased_in_value_and_gradient() -> None:
    """The mean of many sketches is the exact loss, and so is the mean of their gradients.

    One estimate's relative standard deviation is at most √(2/s) = 0.71 at s = 4
    (Gaussian probes; orthonormal ones have less); over M = 20 000 sketches the mean's is
    at most 0.005, and the probes come from a seeded generator: the 3 % tolerance is six
    standard deviations, on a draw that never changes.
    """
    gen = seeded(5)
    e = torch.randn(6, 4, generator=gen, requires_grad=True)
    d = torch.randn(4, 5, generator=gen, requires_grad=True)
    weight_t = torch.randn(6, 5, generator=gen)
    size, many = 4, 20_000

    exact = losses.faithfulness(e @ d, weight_t)
    exact_grads = torch.autograd.grad(exact, (e, d))
    probes = torch.stack([losses.sketch_probes(5, size, gen) for _ in range(many)])
    estimates = torch.stack([losses.faithfulness_sketch(e, d, weight_t, s) for s in probes])
    mean = estimates.mean()
    mean_grads = torch.autograd.grad(mean, (e, d))

    assert mean.item() == pytest.approx(exact.item(), rel=0.03)
    assert estimates.std().item() > 0.1 * exact.item()  # each one is an estimate
    for approx, true in zip(mean_grads, exact_grads, strict=True):
        assert (approx - true).norm() < 0.05 * true.norm()


def test_an_anchored_sketch_is_unbiased_and_far_less_noisy() -> None:
    """Anchored at a nearby point, the sketch keeps its mean (value and gradient) and
    loses most of its spread: the control variate cancels the probes' noise."""
    gen = seeded(6)
    e0, d0 = torch.randn(6, 4, generator=gen), torch.randn(4, 5, generator=gen)
    weight_t = torch.randn(6, 5, generator=gen)
    anchor = losses.faithfulness_anchor(e0, d0, weight_t)
    e = (e0 + 0.05 * torch.randn(6, 4, generator=gen)).requires_grad_()
    d = (d0 + 0.05 * torch.randn(4, 5, generator=gen)).requires_grad_()
    exact = losses.faithfulness(e @ d, weight_t)
    exact_grads = torch.autograd.grad(exact, (e, d))
    probes = [losses.sketch_probes(5, 2, gen) for _ in range(5_000)]
    plain = torch.stack([losses.faithfulness_sketch(e, d, weight_t, s) for s in probes])
    anchored = torch.stack([losses.faithfulness_sketch(e, d, weight_t, s, anchor) for s in probes])
    mean_grads = torch.autograd.grad(anchored.mean(), (e, d))

    assert anchored.mean().item() == pytest.approx(exact.item(), rel=0.01)
    assert anchored.std() < 0.25 * plain.std()  # 0.33 against 2.05
    for approx, true in zip(mean_grads, exact_grads, strict=True):
        assert (approx - true).norm() < 0.01 * true.norm()
    at_anchor = losses.faithfulness_sketch(e0, d0, weight_t, probes[0], anchor)
    assert at_anchor.item() == pytest.approx(anchor.value.item(), rel=1e-5)  # exact there


def test_the_faithfulness_sketch_is_exact_at_zero_residual_or_as_many_probes_as_outputs() -> None:
    sae = random_sae(2)  # rank 2, 5 outputs
    with torch.no_grad():
        weight_t = sae.effective_weight().clone()
        probes = losses.sketch_probes(5, 3, seeded(0))
        value = losses.faithfulness_sketch(sae.encoder, sae.decoder, weight_t, probes)
        assert value.item() == pytest.approx(0.0, abs=1e-10)

        other = torch.randn(6, 5, generator=seeded(1))
        exact = losses.faithfulness(sae.effective_weight(), other)
        for size in (5, 8):  # s ≥ out: orthonormal probes, S·Sᵀ = I
            probes = losses.sketch_probes(5, size, seeded(size))
            assert probes.shape == (5, 5)
            value = losses.faithfulness_sketch(sae.encoder, sae.decoder, other, probes)
            assert value.item() == pytest.approx(exact.item(), rel=1e-5)
        few = losses.sketch_probes(5, 2, seeded(2))
        assert losses.faithfulness_sketch(sae.encoder, sae.decoder, other, few) != exact


def test_auto_sketches_wide_layers_and_keeps_small_ones_exact() -> None:
    auto = TrialParams()  # C = 1024, sketch_size 64
    assert faithful_sketch_size(auto, 128, 64) is None  # colored MNIST's fc1: exact
    assert faithful_sketch_size(auto, 4096, 2048) == 64
    forced = TrialParams(faithful_estimate="sketch", sketch_size=8)
    assert faithful_sketch_size(forced, 128, 64) == 8
    assert faithful_sketch_size(TrialParams(faithful_estimate="exact"), 4096, 2048) is None


def test_quadratic_ramp_goes_from_zero_to_one() -> None:
    assert losses.quadratic_ramp(0, 100) == 0
    assert losses.quadratic_ramp(50, 100) == pytest.approx(0.25)
    assert losses.quadratic_ramp(100, 100) == 1


@pytest.mark.parametrize("p", [0.5, 1.0, 2.0])
def test_schatten_rank_one_is_the_product_of_factor_norms(p: float) -> None:
    sae = random_sae(1)
    e, d = sae.factors()

    with torch.no_grad():
        loss = losses.schatten_rank(e, d, p)
        by_hand = (
            sum((e[c].norm() * d[c].norm()) ** p for c in range(sae.n_components))
            / sae.n_components
        )

    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)


@pytest.mark.parametrize("rank", [1, 2])
@pytest.mark.parametrize("p", [0.5, 1.0, 2.0])
def test_schatten_rank_matches_the_singular_values_of_each_component(rank: int, p: float) -> None:
    sae = random_sae(rank)
    e, d = sae.factors()

    with torch.no_grad():
        loss = losses.schatten_rank(e, d, p)
        # the explicit in x out matrices, and their r nonzero singular values
        sv = torch.linalg.svdvals(sae.components())[:, :rank]
        expected = sv.pow(p).sum(dim=1).mean()

    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)


@pytest.mark.parametrize("rank", [1, 2])
def test_schatten_rank_is_differentiable(rank: int) -> None:
    sae = random_sae(rank)
    losses.schatten_rank(*sae.factors(), p=1.0).backward()
    assert sae.encoder.grad is not None and torch.isfinite(sae.encoder.grad).all()


def test_conditioning_is_bce_with_logits_on_the_first_latents() -> None:
    pre = torch.randn(6, 5, generator=seeded())
    concepts = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0, 1]])

    loss = losses.conditioning(pre, concepts)

    x, y = pre[:, :2], concepts
    by_hand = -(y * torch.log(torch.sigmoid(x)) + (1 - y) * torch.log(1 - torch.sigmoid(x)))
    assert loss.item() == pytest.approx(by_hand.mean().item(), rel=1e-5)


def test_conditioning_reads_the_first_column_of_each_component_at_higher_rank() -> None:
    pre = torch.randn(6, 8, generator=seeded())  # 4 components of rank 2
    concepts = (torch.rand(6, 2, generator=seeded(1)) > 0.5).float()

    loss = losses.conditioning(pre, concepts, rank=2)

    expected = F.binary_cross_entropy_with_logits(pre[:, [0, 2]], concepts)
    assert loss.item() == pytest.approx(expected.item())


def test_conditioning_is_lower_when_the_latent_agrees_with_the_label() -> None:
    concepts = F.one_hot(torch.tensor([0, 1, 1, 0, 1]), 2).float()
    agree = torch.cat([(2 * concepts - 1) * 3.0, torch.zeros(5, 3)], dim=1)
    disagree = torch.cat([(1 - 2 * concepts) * 3.0, torch.zeros(5, 3)], dim=1)

    assert losses.conditioning(agree, concepts) < math.log(2)  # better than logit 0
    assert losses.conditioning(disagree, concepts) > math.log(2)


def test_sparsity_is_the_mean_absolute_latent() -> None:
    pre = torch.tensor([[1.0, -2.0], [0.0, 3.0]])
    assert losses.sparsity(pre).item() == pytest.approx(1.5)
    weighed = losses.sparsity(pre, decoder_norms=torch.tensor([2.0, 0.5]))
    assert weighed.item() == pytest.approx((2 + 1 + 0 + 1.5) / 4)


def test_weighed_sparsity_does_not_fade_when_scale_moves_to_the_decoder() -> None:
    """E·s, D/s changes no component: the weighed L1 stays, the plain one drops by s
    (which is how training shrinks it without sparser latents)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(32, 6, generator=gen)
    weight_t = torch.randn(6, 3, generator=gen)
    sae = FaithfulSAE(6, 3, 8, 2)

    def sparsity(scale: float, weighed: bool) -> float:
        moved = FaithfulSAE(6, 3, 8, 2)
        with torch.no_grad():
            moved.encoder.copy_(sae.encoder * scale)
            moved.decoder.copy_(sae.decoder / scale)
        params = TrialParams(n_components=8, top_k=2, sparsity_decoder_norm=weighed)
        weights = loss_weights(params, 0)
        terms = loss_terms(moved, x, x @ weight_t, x[:, :0], weight_t, params, weights)
        return terms["sparsity"].item()

    assert sparsity(0.1, weighed=True) == pytest.approx(sparsity(1.0, weighed=True))
    assert sparsity(0.1, weighed=False) == pytest.approx(0.1 * sparsity(1.0, weighed=False))


def off_diagonal_covariance(latents: torch.Tensor) -> torch.Tensor:
    """The decorrelation loss straight from its definition, via torch.cov."""
    cov = torch.cov(latents.T)
    off = cov - torch.diag(torch.diag(cov))
    return off.square().sum() / latents.shape[1]


@pytest.mark.parametrize("batch", [5, 50], ids=["B<C", "B>=C"])
def test_decorrelation_equals_the_off_diagonal_covariance(batch: int) -> None:
    latents = torch.randn(batch, 8, generator=seeded(), dtype=torch.float64)

    loss = losses.decorrelation(latents)

    assert loss.item() == pytest.approx(off_diagonal_covariance(latents).item(), rel=1e-9)


def test_decorrelation_penalises_duplicated_latents() -> None:
    independent = torch.randn(2000, 8, generator=seeded())
    duplicated = independent.clone()
    duplicated[:, 4:] = duplicated[:, :4]

    low = losses.decorrelation(independent)
    high = losses.decorrelation(duplicated)

    assert low < 0.01
    assert high > 0.3  # four pairs with covariance ~1, over 8 latents: ~2 * 4 / 8
    assert losses.decorrelation(torch.randn(1, 8)) == 0  # one sample has no covariance


# ---------------------------------------------------------------------- training


def layer_data(n: int = 256, d_in: int = 12, d_out: int = 6, m: int = 2) -> SAEData:
    gen = seeded(3)
    inputs = torch.randn(n, d_in, generator=gen)
    weight_t = torch.randn(d_in, d_out, generator=gen) / d_in**0.5
    concepts = F.one_hot(torch.randint(0, m, (n,), generator=gen), m).float()
    return SAEData(inputs=inputs, targets=inputs @ weight_t, weight_t=weight_t, concepts=concepts)


def short_params(**changes: object) -> TrialParams:
    fields = {
        "n_components": 16,
        "top_k": 4,
        "steps": 40,
        "batch_size": 32,
        "eval_every": 10,
        "rank_weight": 0.01,
        **changes,
    }
    return TrialParams(**fields)


def test_every_loss_weight_field_has_one_table_entry() -> None:
    """A loss is one LOSSES entry reading its LossWeights field; no weight goes unused:
    each field, set alone, weighs exactly one loss."""
    zero = {name: 0.0 for name in LossWeights.model_fields}
    for name in LossWeights.model_fields:
        alone = LossWeights(**{**zero, name: 1.0})
        assert [loss.weight(alone) for loss in LOSSES.values()].count(1.0) == 1, name
    assert sum(loss.weight(LossWeights(**zero)) for loss in LOSSES.values()) == 0
    assert all(n.endswith("_weight") for n in LossWeights.model_fields)
    params = TrialParams(faithful_ramp=True, steps=100)
    weights = loss_weights(params, 50)
    assert list(weights) == list(LOSS_NAMES)
    assert weights["recon"] == params.recon_weight
    assert weights["faithful"] == params.faithful_weight * losses.quadratic_ramp(50, 100)


def test_train_sae_logs_every_loss_by_name() -> None:
    evals: list[int] = []

    result = train_sae(layer_data(), short_params(), on_eval=lambda step, sae: evals.append(step))

    assert set(result.history) == {"step", "total", *LOSS_NAMES}
    assert result.history["step"][-1] == 40
    lengths = {len(values) for values in result.history.values()}
    assert lengths == {len(result.history["step"])}
    assert all(math.isfinite(v) for values in result.history.values() for v in values)
    for name in ("recon", "faithful", "rank", "cond", "sparsity", "decorr"):
        assert result.history[name][-1] > 0, name
    assert evals == [10, 20, 30]  # not at the last step: the caller scores that itself
    assert result.sae.n_components == 16 and result.seconds > 0


def test_train_sae_lowers_the_faithfulness_loss() -> None:
    result = train_sae(layer_data(), short_params(steps=200, lr=1e-2))

    assert result.history["faithful"][-1] < 0.5 * result.history["faithful"][0]


def relative_faithfulness_error(result: object, data: SAEData) -> float:
    with torch.no_grad():
        w = data.weight_t
        return float((w - result.sae.effective_weight()).square().sum() / w.square().sum())


def test_training_with_the_sketch_is_as_faithful_as_with_the_exact_loss() -> None:
    data = layer_data()
    params = short_params(steps=300, lr=1e-2, faithful_weight=5.0)
    exact = train_sae(data, params.model_copy(update={"faithful_estimate": "exact"}))
    sketch = train_sae(
        data, params.model_copy(update={"faithful_estimate": "sketch", "sketch_size": 3})
    )
    start = relative_faithfulness_error(
        train_sae(data, params.model_copy(update={"steps": 1})), data
    )

    err_exact = relative_faithfulness_error(exact, data)
    err_sketch = relative_faithfulness_error(sketch, data)
    assert err_sketch < 0.1 * start  # it trains
    assert err_sketch < 2 * err_exact + 0.01, (err_sketch, err_exact)
    again = train_sae(
        data, params.model_copy(update={"faithful_estimate": "sketch", "sketch_size": 3})
    )
    assert torch.equal(again.sae.encoder, sketch.sae.encoder)  # deterministic by seed


def test_train_sae_is_deterministic_by_seed() -> None:
    a = train_sae(layer_data(), short_params(seed=7))
    b = train_sae(layer_data(), short_params(seed=7))
    c = train_sae(layer_data(), short_params(seed=8))

    assert torch.equal(a.sae.encoder, b.sae.encoder)
    assert a.history["total"] == b.history["total"]
    assert not torch.equal(a.sae.encoder, c.sae.encoder)


def test_a_nan_input_makes_training_diverge() -> None:
    data = layer_data()
    inputs = data.inputs.clone()
    inputs[:, 0] = float("nan")
    bad = SAEData(
        inputs=inputs, targets=data.targets, weight_t=data.weight_t, concepts=data.concepts
    )

    with pytest.raises(DivergedError) as info:
        train_sae(bad, short_params())

    assert info.value.step >= 1
    assert not math.isfinite(info.value.losses["recon"])
    assert "non-finite" in str(info.value)
