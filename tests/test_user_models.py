"""Models users bring: the layer types they have, and scoring them from their layer.

A user model is scored from the values cached at its decomposed layer, as the built-in
models are: the service cuts the exported graph there (or takes the user's own `head`,
checked once), so fits, α sweeps, controls and references never rerun the trunk. These
tests build real models (a transformer with a residual stream, GPT-2 from a config, a
convolutional net with a 1×1 convolution), hand them over as a user would, and check
what a user relies on: the head gives the whole model's logits with any edit, the
bundle keeps no raw inputs, the trial runs, and mistakes are one line naming the field.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from hpo import Split, UserTask
from hpo.errors import UserError
from hpo.models.layer_types import editable_type, weight_override
from hpo.service.study_file import parse_study
from hpo.service.trial import prepare_task, run_trial
from hpo.tasks.cut import WholeModelScoring
from hpo.tasks.user import validate_user_task

ROOT = Path(__file__).resolve().parents[1]
TINY = {"n_components": 16, "top_k": 4, "steps": 40, "eval_every": 20, "batch_size": 64}


def study_of(factory: str, *, options: dict[str, Any] | None = None, **task: Any) -> Any:
    doc = {
        "study": {"name": "user-models", "objectives": ["worst_group"]},
        "task": {"kind": "python", "factory": factory, "options": options or {}, **task},
        "params": TINY,
    }
    return parse_study(doc, "test")


def factory_file(tmp_path: Path, source: str, name: str = "factory") -> str:
    path = tmp_path / f"{name}.py"
    path.write_text(source)
    return f"{path}:make_task"


def transformers_or_skip() -> Any:
    return pytest.importorskip(
        "transformers",
        reason="the Hugging Face tests need transformers: pip install -e '.[transformers]'",
    )


# --------------------------------------------------------------------- the layer types


def conv1d(n_in: int, n_out: int) -> nn.Module:
    from transformers.pytorch_utils import Conv1D

    return Conv1D(n_out, n_in)


LAYERS = {
    "nn.Linear": (lambda: nn.Linear(6, 5), (4, 3, 6)),  # a sequence: a row per token
    "transformers Conv1D": (lambda: conv1d(6, 5), (4, 3, 6)),
    "1×1 nn.Conv2d": (lambda: nn.Conv2d(6, 5, 1), (4, 6, 3, 2)),  # a row per pixel
}


def outputs_as_rows(module: nn.Module, y: torch.Tensor) -> torch.Tensor:
    return (
        y.movedim(1, -1).reshape(-1, y.shape[1])
        if isinstance(module, nn.Conv2d)
        else (y.reshape(-1, y.shape[-1]))
    )


@pytest.mark.parametrize("label", LAYERS)
def test_every_layer_type_is_a_linear_map_of_its_rows_and_takes_an_edit_in_its_layout(
    label: str,
) -> None:
    if label == "transformers Conv1D":
        transformers_or_skip()
    make, shape = LAYERS[label]
    torch.manual_seed(0)
    module = make()
    kind = editable_type(module)
    assert kind is not None and kind.label == label
    x = torch.randn(*shape)
    weight = kind.weight(module)
    assert weight.shape == (5, 6)  # out × in, whatever the module stores
    rows = kind.rows(x)
    assert rows.shape == (x.numel() // 6, 6)
    with torch.no_grad():
        y = outputs_as_rows(module, module(x))
    assert torch.allclose(y, rows @ weight.T + module.bias, atol=1e-6)

    edited = torch.randn(5, 6)
    host = nn.Sequential(copy.deepcopy(module))
    state = host.state_dict() | weight_override(kind, host[0], "0", edited)
    host.load_state_dict(state, strict=True)  # the module's own keys and shapes
    with torch.no_grad():
        y = outputs_as_rows(module, host(x))
    assert torch.allclose(y, rows @ edited.T + module.bias, atol=1e-5)


def tiny_task(model: nn.Module, layer: str, **extra: Any) -> UserTask:
    gen = torch.Generator().manual_seed(0)

    def split(n: int) -> Split:
        y = torch.randint(0, 2, (n,), generator=gen)
        s = torch.randint(0, 2, (n,), generator=gen)
        return Split(torch.randn(n, 3, 4, 4, generator=gen), y, 2 * y + s, s)

    return UserTask(
        model=model,
        layer=layer,
        probe=split(16),
        val=split(16),
        test=split(16),
        group_names=("a", "b", "c", "d"),
        concept_names=("s0", "s1"),
        **extra,
    )


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.mix = nn.Conv2d(8, 8, 1)
        self.out = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        h = h + torch.relu(self.mix(h))  # a residual around the 1×1 convolution
        return self.out(h.mean(dim=(2, 3)))


@pytest.mark.parametrize(
    ("layer", "fragment"),
    [
        ("stem", "UserTask.layer 'stem' is a 1×1 nn.Conv2d but its kernel is (3, 3)"),
        ("nope", "UserTask.layer 'nope' is not a module of ConvNet"),
    ],
)
def test_a_layer_that_is_not_a_linear_map_of_its_rows_is_one_line_naming_the_field(
    layer: str, fragment: str
) -> None:
    with pytest.raises(UserError) as err:
        validate_user_task(tiny_task(ConvNet(), layer), "factory")
    message = str(err.value)
    assert fragment in message and "\n" not in message
    assert "its editable layers: mix, out" in message


def test_a_module_of_no_editable_type_lists_the_types_there_are() -> None:
    model = nn.Sequential(nn.Flatten(), nn.ReLU(), nn.Linear(48, 2))
    with pytest.raises(
        UserError,
        match=r"'1' is a ReLU, not a layer the service can edit "
        r"\(nn.Linear, transformers Conv1D, 1×1 nn.Conv2d\); its editable "
        r"layers: 2$",
    ):
        validate_user_task(tiny_task(model, "1"), "factory")


# ----------------------------------------------- scoring from the layer: the graph split

TOKENS = "examples.spurious_tokens:make_task"
TINY_TOKENS = {
    "n_train": 400, "n_probe": 200, "n_val": 200, "n_test": 200, "epochs": 2,
    "seq_len": 8, "d_model": 16, "d_mlp": 32,
}  # fmt: skip


@pytest.fixture()
def at_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(ROOT))


def edited_whole_model(
    task: UserTask, overrides: dict[str, torch.Tensor], split: str
) -> torch.Tensor:
    """The user's own eager model with `overrides` loaded, on the split's raw inputs."""
    from hpo.models.head import logits_of

    model = copy.deepcopy(task.model)
    model.load_state_dict(model.state_dict() | overrides, strict=True)
    with torch.no_grad():
        return logits_of(model(getattr(task, split).x))


def check_head_is_the_model(ctx: Any, task: UserTask, layer: str) -> None:
    """Any edit of the layer, scored from the cached values, is the whole model's."""
    target = ctx.edit_target
    torch.manual_seed(1)
    part = torch.randn_like(target.weight_t(layer)) * 0.3
    overrides = target.overrides({layer: part}, 1.0, compensate_bias=False)
    for split in ("val", "test"):
        assert ctx.splits[split].x is None, "no raw inputs in the bundle: nothing reruns"
        got = ctx.scorer.logits(split, overrides)
        want = edited_whole_model(task, overrides, split)
        assert torch.allclose(got, want, atol=1e-5), float((got - want).abs().max())
        assert not torch.allclose(got, ctx.scorer.logits(split), atol=1e-3)  # it did change


def test_a_transformer_is_scored_from_its_layer_with_its_residual_stream_carried(
    at_root: None,
) -> None:
    """The cut at blocks.0.mlp.fc1 carries the residual stream past the MLP; every edit
    scored from the cache equals the user's model edited and rerun."""
    from examples.spurious_tokens import make_task

    study = study_of(
        TOKENS, options=TINY_TOKENS, references=["last_layer", "leace", "retrain_head"]
    )
    ctx = prepare_task(study, data_dir=None, progress=False)
    assert ctx.head is not None and ctx.head.source == "a graph split of the exported model"
    assert len(ctx.head.inputs) == 2  # the layer's input and the residual stream
    carry = next(iter(ctx.splits["val"].carry.values()))
    assert carry.shape == (TINY_TOKENS["n_val"], TINY_TOKENS["seq_len"], TINY_TOKENS["d_model"])
    task = make_task(seed=0, **TINY_TOKENS)
    check_head_is_the_model(ctx, task, "blocks.0.mlp.fc1")
    # retrain_head works for a user model: it has its own numbers beside the others
    assert set(ctx.references) >= {"last_layer", "leace", "retrain_head"}
    for split in ("val", "test"):
        assert ctx.references["retrain_head"][split] != ctx.references["original"][split]

    result, _ = run_trial(study, ctx, study.params, with_test=True)
    assert {"debiased", "control_random", "control_svd", "retrain_head"} <= set(result.models)


def test_gpt2_conv1d_is_edited_in_its_own_layout_and_scored_from_its_layer(
    at_root: None,
) -> None:
    transformers_or_skip()
    from examples.spurious_gpt2 import LAYER, make_task

    options = {"n_train": 400, "n_probe": 96, "n_val": 96, "n_test": 96, "epochs": 1}
    study = study_of("examples.spurious_gpt2:make_task", options=options, references=["leace"])
    ctx = prepare_task(study, data_dir=None, progress=False)
    assert ctx.head is not None and ctx.layer_types[LAYER] == "hf_conv1d"
    task = make_task(seed=0, **options)
    stored = task.model.get_submodule(LAYER).weight
    assert ctx.edit_target.weight_t(LAYER).shape == stored.shape  # Conv1D stores in × out
    assert torch.equal(ctx.edit_target.weight_t(LAYER), stored)
    check_head_is_the_model(ctx, task, LAYER)


def test_a_one_by_one_convolution_trial_trains_on_a_row_per_pixel(tmp_path: Path) -> None:
    source = CONV_FACTORY
    study = study_of(factory_file(tmp_path, source), references=["last_layer", "leace"])
    ctx = prepare_task(study, data_dir=None, progress=False)
    assert ctx.head is not None and ctx.layer_types["mix"] == "conv2d_1x1"
    from hpo.tasks.registry import get_task

    data = get_task("python").sae_data(ctx, "mix")
    assert data.inputs.shape == (96 * 6 * 6, 8)  # probe samples × pixels, channels
    result, trained = run_trial(study, ctx, study.params, with_test=True)
    assert list(trained) == ["mix"] and result.edit is not None


CONV_FACTORY = """
import torch
from torch import nn
from hpo import Split, UserTask


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.mix = nn.Conv2d(8, 8, 1)
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        h = h + torch.relu(self.mix(h))
        return self.out(h.mean(dim=(2, 3)))


def make_task(seed: int) -> UserTask:
    gen = torch.Generator().manual_seed(seed)

    def split(n, bias):
        y = torch.randint(0, 2, (n,), generator=gen)
        s = torch.where(torch.rand(n, generator=gen) < bias, y, 1 - y)
        x = torch.randn(n, 3, 6, 6, generator=gen) * 0.5
        x[:, 0] += y[:, None, None]
        x[:, 1] += 2.0 * s[:, None, None]
        return Split(x, y, 2 * y + s, s)

    torch.manual_seed(seed)
    model = ConvNet()
    train = split(256, 0.95)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(30):
        opt.zero_grad()
        nn.functional.cross_entropy(model(train.x), train.y).backward()
        opt.step()
    return UserTask(
        model=model.eval(), layer="mix", probe=split(96, 0.5), val=split(64, 0.5),
        test=split(64, 0.5), group_names=("y0/s0", "y0/s1", "y1/s0", "y1/s1"),
        concept_names=("s0", "s1"), head=HEAD,
    )


HEAD = None
"""


# ------------------------------------------------- the user's own head, and the fallback


def test_a_layer_called_twice_is_one_line_naming_it(tmp_path: Path) -> None:
    source = CONV_FACTORY.replace(
        "h = h + torch.relu(self.mix(h))", "h = h + torch.relu(self.mix(torch.relu(self.mix(h))))"
    )
    study = study_of(factory_file(tmp_path, source), references=["leace"])
    with pytest.raises(UserError, match=r"UserTask.layer 'mix' is called 2 times in one forward"):
        prepare_task(study, data_dir=None, progress=False)


def test_a_user_head_is_used_after_one_check_against_the_whole_model(tmp_path: Path) -> None:
    source = CONV_FACTORY.replace(
        "head=HEAD,", "head=lambda z, m=model: m.out((z + torch.relu(m.mix(z))).mean(dim=(2, 3))),"
    )
    study = study_of(factory_file(tmp_path, source), references=["leace"])
    ctx = prepare_task(study, data_dir=None, progress=False)
    assert ctx.head is not None and ctx.head.source == "UserTask.head"
    assert ctx.head.inputs == ("z",)
    run_trial(study, ctx, study.params, with_test=False)


def test_a_user_head_that_is_not_the_model_is_one_line_naming_the_field(tmp_path: Path) -> None:
    source = CONV_FACTORY.replace(
        "head=HEAD,", "head=lambda z, m=model: m.out(torch.relu(m.mix(z)).mean(dim=(2, 3))),"
    )  # forgets the residual
    study = study_of(factory_file(tmp_path, source), references=["leace"])
    with pytest.raises(UserError) as err:
        prepare_task(study, data_dir=None, progress=False)
    message = str(err.value)
    assert "UserTask.head: its logits on 8 probe rows differ from the model's" in message
    assert "input of layer 'mix'" in message and "\n" not in message


def test_a_graph_that_cannot_be_cut_falls_back_to_the_whole_model_and_says_why(
    tmp_path: Path,
) -> None:
    """Here the residual crosses the layer channels-first ([C, N, H, W]): it cannot be
    cached per sample, so the trial reruns the whole model, and says so once."""
    source = CONV_FACTORY.replace(
        "h = h + torch.relu(self.mix(h))",
        "g = h.transpose(0, 1)\n"
        "        h = (torch.relu(self.mix(h)).transpose(0, 1) + g).transpose(0, 1)",
    )
    study = study_of(factory_file(tmp_path, source), references=["leace"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ctx = prepare_task(study, data_dir=None, progress=False)
    said = [str(w.message) for w in caught if issubclass(w.category, WholeModelScoring)]
    assert len(said) == 1 and "without the sample as its first dimension" in said[0], said
    assert ctx.head is None and ctx.splits["val"].x is not None  # the raw inputs are kept
    result, _ = run_trial(study, ctx, study.params, with_test=False)
    assert result.edit is not None
