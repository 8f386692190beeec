"""DFR on a final layer that sees every token: the features of the token the model reads
(or the tokens' mean), found from the model's own logits; any other pooling leaves DFR
out of a default list with a note, and is a one-line error where it is named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from hpo.debias.references.pooled import pooled_inputs
from hpo.errors import UserError
from hpo.service.study_file import parse_study
from hpo.service.trial import prepare_task


def tokens_and_layer(seed: int = 0) -> tuple[torch.Tensor, nn.Linear]:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    return torch.randn(40, 7, 5, generator=gen), nn.Linear(5, 3)


def test_the_token_the_model_reads_is_found_per_sample() -> None:
    tokens, layer = tokens_and_layer()
    read = torch.randint(0, 7, (40,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = layer(tokens)[torch.arange(40), read]
    features, why = pooled_inputs(layer, tokens, logits)
    assert why == "the token the model reads"
    assert features is not None
    torch.testing.assert_close(features, tokens[torch.arange(40), read])


def test_mean_pooling_gives_the_mean_of_the_tokens_inputs() -> None:
    tokens, layer = tokens_and_layer()
    with torch.no_grad():
        logits = layer(tokens).mean(dim=1)
    features, why = pooled_inputs(layer, tokens, logits)
    assert why == "the mean over tokens" and features is not None
    torch.testing.assert_close(features, tokens.mean(dim=1))


def test_max_pooling_has_no_per_sample_features() -> None:
    tokens, layer = tokens_and_layer()
    with torch.no_grad():
        logits = layer(tokens).amax(dim=1)
    features, why = pooled_inputs(layer, tokens, logits)
    assert features is None and "neither the layer's output at one token" in why


MAX_POOLED = """
import torch
from torch import nn
from hpo import Split, UserTask


class Tokens(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(6, 8)
        self.mix = nn.Linear(8, 8)
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        h = torch.relu(self.mix(self.embed(x)))
        return self.out(h).amax(dim=1)  # POOLING


def make_task(seed: int) -> UserTask:
    gen = torch.Generator().manual_seed(seed)

    def split(n):
        y = torch.randint(0, 2, (n,), generator=gen)
        s = torch.randint(0, 2, (n,), generator=gen)
        x = torch.randint(0, 4, (n, 5), generator=gen)
        x[:, 0] = 4 + y
        x[:, 1] = 4 + s
        return Split(x, y, 2 * y + s, s)

    torch.manual_seed(seed)
    return UserTask(
        model=Tokens().eval(), layer="mix", probe=split(96), val=split(64), test=split(64),
        group_names=("y0/s0", "y0/s1", "y1/s0", "y1/s1"), concept_names=("s0", "s1"),
    )
"""


def token_study(tmp_path: Path, pooling: str, **task: Any) -> Any:
    source = MAX_POOLED.replace(".amax(dim=1)  # POOLING", pooling)
    path = tmp_path / "tokens_factory.py"
    path.write_text(source)
    doc = {
        "study": {"name": "pooled"},
        "task": {"kind": "python", "factory": f"{path}:make_task", **task},
        "params": {"n_components": 16, "top_k": 4, "steps": 40, "eval_every": 20},
    }
    return parse_study(doc, "test")


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HPO_CACHE_DIR", str(tmp_path / "cache"))


def test_a_last_token_model_gets_dfr(tmp_path: Path) -> None:
    ctx = prepare_task(token_study(tmp_path, "[:, -1]"), data_dir=None, progress=False)
    assert "dfr" in ctx.references


def test_max_pooling_leaves_default_dfr_out_and_a_named_one_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ctx = prepare_task(token_study(tmp_path, ".amax(dim=1)"), data_dir=None, progress=False)
    assert {"last_layer", "leace"} <= set(ctx.references) and "dfr" not in ctx.references
    err = capsys.readouterr().err
    assert "dfr left out: its final layer (out) on the probe split: the model's logits are" in err

    named = token_study(tmp_path, ".amax(dim=1)", references=["dfr"])
    with pytest.raises(UserError, match=r"task.references: dfr cannot run here: its final layer"):
        prepare_task(named, data_dir=None, progress=False)


MASKED_MEAN = "(self.out(h) * (x > 0)[..., None]).sum(dim=1) / (x > 0).sum(dim=1, keepdim=True)"


def test_a_pooling_only_the_whole_split_rules_out_leaves_dfr_out_after_all(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A mean over the tokens that are not padding (token 0): on the first samples, which
    have no padding, it is the plain mean, so the sample check passes; the fit on every
    sample finds it is not, and DFR is left out of a default list (named, an error)."""
    source = MAX_POOLED.replace("self.out(h).amax(dim=1)  # POOLING", MASKED_MEAN).replace(
        "x = torch.randint(0, 4, (n, 5), generator=gen)",
        "x = torch.randint(0, 4, (n, 5), generator=gen)\n"
        "        x[:16] = torch.randint(1, 4, (16, 5), generator=gen)",
    )
    path = tmp_path / "masked_factory.py"
    path.write_text(source)
    doc: dict[str, Any] = {
        "study": {"name": "masked"},
        "task": {"kind": "python", "factory": f"{path}:make_task"},
        "params": {"n_components": 16, "top_k": 4, "steps": 40, "eval_every": 20},
    }
    ctx = prepare_task(parse_study(doc, "test"), data_dir=None, progress=False)
    assert "last_layer" in ctx.references and "dfr" not in ctx.references
    err = capsys.readouterr().err
    assert "note: reference dfr left out: its final layer (out) on the probe split: " in err

    doc["task"]["references"] = ["dfr"]
    with pytest.raises(UserError, match=r"dfr cannot run here: its final layer \(out\) on the"):
        prepare_task(parse_study(doc, "test"), data_dir=None, progress=False)
