"""Reference methods: each is an edit of the same model, fitted on the probe split only."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from hpo.debias.references import REFERENCES, LastLayer, Leace, ReferenceSource, final_linear
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
