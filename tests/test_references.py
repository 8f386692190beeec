"""Reference methods: each is an edit of the same model, fitted on the probe split only."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from hpo.debias.references import REFERENCES, ReferenceSource
from hpo.debias.references.erasure import Leace
from hpo.debias.references.last_layer import LastLayer, final_linear
from hpo.debias.scoring import CachedSplit


def concept_data(n: int = 2000) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    concepts = torch.randint(0, 3, (n,), generator=gen)
    x = torch.randn(n, 8, generator=gen)
    x[:, 0] += 3 * (concepts == 1)
    x[:, 3] -= 2 * (concepts == 2)
    return x, concepts


def source(model: nn.Module, layer: str, x: torch.Tensor, c: torch.Tensor) -> ReferenceSource:
    probe = CachedSplit(z=x, y=c, groups=c, concepts=c, x=x)

    def inputs_of(name: str, data: torch.Tensor) -> torch.Tensor:
        captured = []
        handle = model.get_submodule(name).register_forward_pre_hook(
            lambda _, args: captured.append(args[0])
        )
        model(data)
        handle.remove()
        return captured[0].detach()

    return ReferenceSource(model, layer, probe, inputs_of, oracle=None, seed=0)


def test_leace_folded_into_the_layer_equals_erasing_its_inputs() -> None:
    from concept_erasure import LeaceEraser

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 3))
    x, c = concept_data()
    fitted = Leace().fit(source(model, "0", x, c))

    assert set(fitted.overrides) == {"0.weight", "0.bias"}
    edited = functional_call(model, dict(fitted.overrides), (x,))
    eraser = LeaceEraser.fit(x.double(), nn.functional.one_hot(c).double())
    torch.testing.assert_close(edited, model(eraser(x.double()).float()), atol=1e-5, rtol=1e-5)
    # no linear trace of the concept is left in the edited layer's outputs
    hidden = functional_call(model[0], {k[2:]: v for k, v in fitted.overrides.items()}, (x,))
    means = torch.stack([hidden[c == k].mean(0) for k in range(3)])
    torch.testing.assert_close(means - means.mean(0), torch.zeros_like(means), atol=1e-4, rtol=0)


def test_leace_on_a_layer_that_sees_sequences_erases_the_concept_from_every_token() -> None:
    """A transformer's Linear sees [N, seq, d]: the eraser is fitted on the tokens as
    rows, each labelled with its sequence's concept, and folded into the same layer."""
    torch.manual_seed(0)
    x, c = concept_data(600)
    tokens = x[:, None, :] + torch.randn(600, 5, 8, generator=torch.Generator().manual_seed(1))
    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 3))
    probe = CachedSplit(z=tokens, y=c, groups=c, concepts=c, x=tokens)
    src = ReferenceSource(model, "0", probe, lambda _, data: data, oracle=None, seed=0)
    fitted = Leace().fit(src)

    hidden = functional_call(model[0], {k[2:]: v for k, v in fitted.overrides.items()}, (tokens,))
    assert hidden.shape == (600, 5, 4)
    token_c = c.repeat_interleave(5)
    flat = hidden.reshape(-1, 4)
    means = torch.stack([flat[token_c == k].mean(0) for k in range(3)])
    torch.testing.assert_close(means - means.mean(0), torch.zeros_like(means), atol=1e-4, rtol=0)
    before = torch.stack([model[0](tokens).reshape(-1, 4)[token_c == k].mean(0) for k in range(3)])
    assert (before - before.mean(0)).abs().max() > 0.1  # there was a trace to erase


def test_last_layer_refits_only_the_final_linear_layer() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    x, c = concept_data()
    assert final_linear(model, x) == "2"

    fitted = LastLayer().fit(source(model, "0", x, c))

    assert set(fitted.overrides) == {"2.weight", "2.bias"}
    before = (model(x).argmax(-1) == c).float().mean()
    after = (functional_call(model, dict(fitted.overrides), (x,)).argmax(-1) == c).float().mean()
    assert after > max(before, 0.6)  # it learned to predict the labels it was fitted on


def test_the_final_layer_is_the_last_one_called_not_the_last_defined() -> None:
    from hpo.models.classifiers import ColorMnistMLP

    model = ColorMnistMLP().eval()  # defines fc0 (its first layer) after fc1 and fc2
    assert [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1] == "fc0"
    assert final_linear(model, torch.rand(2, 3, 28, 28)) == "fc2"


def test_every_reference_says_why_it_cannot_run() -> None:
    model = nn.Sequential(nn.Linear(8, 3))
    x, c = concept_data(50)
    src = source(model, "0", x, c)
    assert REFERENCES["oracle"].unavailable(src) == "this task does not train an oracle"
    assert "LAYERS" in REFERENCES["retrain_head"].unavailable(src)
    assert REFERENCES["leace"].unavailable(src) is None


def test_last_layer_says_it_cannot_retrain_a_final_layer_that_sees_sequences() -> None:
    """Per-token logits averaged afterwards: there is no per-sample input to refit on."""

    class PerToken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.out = nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(x).mean(dim=1)

    model = PerToken()
    x, c = concept_data(50)
    tokens = x[:, None, :].expand(50, 4, 8)
    why = LastLayer().unavailable(source(model, "out", tokens, c))
    assert why is not None and "out" in why and "sequences" in why
    assert LastLayer().unavailable(source(nn.Sequential(nn.Linear(8, 3)), "0", x, c)) is None


def test_gap_closed_is_measured_towards_the_best_ceiling() -> None:
    from hpo.results import GroupMetrics, TrialResult

    def worst(w: float) -> dict[str, GroupMetrics]:
        return {"test": GroupMetrics(w, w, w, {"a": w})}

    result = TrialResult(
        task="t",
        objectives={},
        errors={},
        models={
            "original": worst(0.5),
            "debiased": worst(0.8),
            "oracle": worst(0.85),
            "last_layer": worst(0.9),
            "leace": worst(0.95),  # a baseline, not a ceiling
        },
    )
    fraction, towards = result.gap_closed("test")
    assert fraction == pytest.approx(0.75) and towards == "last_layer"
    assert result.gap_closed("val") is None
    assert result.to_json()["gap_closed"]["test"]["towards"] == "last_layer"


def spurious_data(n: int, bias: float, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Feature 0 carries the label (noisily), feature 1 the spurious attribute (cleanly);
    with probability `bias` the attribute equals the label."""
    y = torch.randint(0, 2, (n,), generator=gen)
    agree = torch.rand(n, generator=gen) < bias
    a = torch.where(agree, y, 1 - y)
    x = torch.randn(n, 6, generator=gen)
    x[:, 0] += 1.5 * (2 * y - 1)
    x[:, 1] += 4.0 * (2 * a - 1)
    return x, y, 2 * y + a, a


def test_dfr_refits_the_last_layer_on_the_core_feature_and_folds_the_scaling_in() -> None:
    from hpo.debias.dfr import C_GRID, dfr_layer

    gen = torch.Generator().manual_seed(0)
    probe_x, probe_y, probe_g, _ = spurious_data(800, 0.5, gen)  # balanced: held-out data
    val_x, val_y, val_g, _ = spurious_data(400, 0.5, gen)
    weight, bias = dfr_layer(probe_x, probe_y, probe_g, val_x, val_y, val_g, n_out=2, seed=0)
    assert weight.shape == (2, 6) and bias.shape == (2,)
    margin = weight[1] - weight[0]
    assert margin[0].abs() > 3 * margin[1].abs()  # it reads the label's feature
    pred = (val_x.double() @ weight.T + bias).argmax(1)
    worst = min(float((pred[val_g == g] == val_y[val_g == g]).double().mean()) for g in range(4))
    assert worst > 0.8
    assert len(C_GRID) == 7 and max(C_GRID) == 1.0  # the published grid


def test_dfr_of_a_final_layer_without_a_bias_holds_in_the_weight_alone() -> None:
    """GPT-2's score layer has no bias: nothing can hold an intercept or the centring, so
    DFR scales without centring and fits no intercept, and W x alone decides. Here the
    label's feature sits far from 0 and one feature is near-constant (as a LayerNorm's
    output often has): uncentred, the fit uses it as its intercept; a centred fit with
    its intercept dropped would call almost every sample one class."""
    from hpo.debias.dfr import dfr_layer

    gen = torch.Generator().manual_seed(0)
    probe_x, probe_y, probe_g, _ = spurious_data(800, 0.5, gen)
    val_x, val_y, val_g, _ = spurious_data(400, 0.5, gen)
    for x in (probe_x, val_x):
        x[:, 0] += 6.0
        x[:, 2] = 5.0 + 0.1 * x[:, 2]
    weight, bias = dfr_layer(
        probe_x, probe_y, probe_g, val_x, val_y, val_g, n_out=2, seed=0, has_bias=False
    )
    assert torch.equal(bias, torch.zeros(2, dtype=bias.dtype))
    pred = (val_x.double() @ weight.T).argmax(1)
    worst = min(float((pred[val_g == g] == val_y[val_g == g]).double().mean()) for g in range(4))
    assert worst > 0.8  # 0.0 with the intercept and centring dropped (the bug this fixes)


def test_dfr_is_an_edit_of_the_final_layer_that_beats_the_biased_one() -> None:
    gen = torch.Generator().manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 6), nn.Linear(6, 3)).eval()  # 3 outputs, 2 classes used
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(6))
        model[0].bias.zero_()
        model[1].weight.zero_()
        model[1].weight[1, 1] = 1.0  # the biased model reads the attribute only
        model[1].bias.copy_(torch.tensor([0.0, 0.0, -5.0]))
    probe_x, probe_y, probe_g, probe_a = spurious_data(800, 0.5, gen)
    val_x, val_y, val_g, val_a = spurious_data(400, 0.5, gen)
    src = source(model, "0", probe_x, probe_a)
    src.probe = CachedSplit(z=probe_x, y=probe_y, groups=probe_g, concepts=probe_a, x=probe_x)
    src.val = CachedSplit(z=val_x, y=val_y, groups=val_g, concepts=val_a, x=val_x)
    fitted = REFERENCES["dfr"].fit(src)
    assert set(fitted.overrides) == {"1.weight", "1.bias"}

    def worst(overrides: dict[str, torch.Tensor] | None) -> float:
        with torch.no_grad():
            pred = functional_call(model, overrides or {}, (val_x,)).argmax(1)
        return min(float((pred[val_g == g] == val_y[val_g == g]).float().mean()) for g in range(4))

    assert worst(None) < 0.1 and worst(fitted.overrides) > 0.8
    assert fitted.overrides["1.bias"][2] < -1e3  # a class no probe sample has: never predicted


def test_the_bundle_key_covers_the_math_the_references_call() -> None:
    """A change to DFR's regression, the pooling, LEACE's math or the head retraining
    (imported inside a function) must rebuild cached bundles (their references were
    fitted by it): their modules are in the key's code, and so is scikit-learn's version."""
    from hpo.debias import dfr, leace
    from hpo.debias.references import CODE
    from hpo.debias.references import pooled as pooling
    from hpo.models import linear_layers, training
    from hpo.versions import numerics_versions

    assert {dfr, leace, pooling, training, linear_layers} <= set(CODE)
    assert "scikit-learn" in numerics_versions()


def test_dfr_says_once_how_many_of_its_fits_stopped_at_the_iteration_limit() -> None:
    """liblinear warns per fit; DFR runs 55 of them per reference, so its users get one
    warning with the count instead of a screenful."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    from hpo.debias.dfr import one_warning_for_non_convergence

    gen = torch.Generator().manual_seed(0)
    x, y, _, _ = spurious_data(400, 0.9, gen)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with one_warning_for_non_convergence(fits=4):
            for seed in range(3):
                LogisticRegression(solver="liblinear", max_iter=1, random_state=seed).fit(x, y)
            warnings.warn("something else", UserWarning, stacklevel=1)
    kinds = [w.category for w in caught]
    assert ConvergenceWarning not in kinds and kinds.count(UserWarning) == 1
    (summary,) = [w for w in caught if w.category is RuntimeWarning]
    assert "in 3 of its 4" in str(summary.message)


def test_dfr_counts_one_vs_rest_fits_and_keeps_its_warnings_when_a_fit_raises() -> None:
    import warnings

    from sklearn.linear_model import LogisticRegression

    from hpo.debias.dfr import one_warning_for_non_convergence

    gen = torch.Generator().manual_seed(0)
    x, y, _, _ = spurious_data(400, 0.9, gen)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match="the fit failed"):
            with one_warning_for_non_convergence(fits=2):
                LogisticRegression(solver="liblinear", max_iter=1).fit(x, y)
                warnings.warn("why it failed", UserWarning, stacklevel=1)
                raise ValueError("the fit failed")
    messages = [str(w.message) for w in caught]
    assert "why it failed" in messages
    assert any("in 1 of its 2" in m for m in messages)


def test_a_bias_free_dfr_never_predicts_a_class_the_probe_split_lacks() -> None:
    """Three outputs, probe labels 1 and 2 only: without a bias the absent class's logit
    is 0, and the present classes' scores must not all fall below it."""
    from hpo.debias.dfr import dfr_layer

    gen = torch.Generator().manual_seed(0)
    probe_x, probe_y, probe_g, _ = spurious_data(800, 0.5, gen)
    val_x, val_y, val_g, _ = spurious_data(400, 0.5, gen)
    for x in (probe_x, val_x):
        x[:, 0] -= 6.0  # every sample's score of the fitted class below 0
        x[:, 2] = 5.0 + 0.1 * x[:, 2]  # near-constant: the fit's intercept
    weight, bias = dfr_layer(
        probe_x, probe_y + 1, probe_g, val_x, val_y + 1, val_g, n_out=3, seed=0, has_bias=False
    )
    pred = (val_x.double() @ weight.T + bias).argmax(1)
    assert not bool((pred == 0).any())
    worst = min(
        float((pred[val_g == g] == val_y[val_g == g] + 1).double().mean()) for g in range(4)
    )
    assert worst > 0.8
