"""Every registered plug-in, run through its protocol on tiny data (scikit-learn's
`check_estimator` is the model): each task kind, each reference method, each edit
strategy. A new plug-in is covered the moment it is registered; a task kind without a tiny
case here fails `test_every_plugin_has_a_tiny_case`.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import json
import math
import pkgutil
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import (
    image_task,
    random_torchvision_weights,
    tiny_text_model,
    write_image_folder,
    write_text_csv,
)
from torch import nn

import hpo
from hpo.config import StudyFile, TrialParams
from hpo.debias import ablation
from hpo.debias.references import REFERENCES, Fitted, ReferenceSource
from hpo.debias.scoring import CachedSplit, Scorer
from hpo.debias.strategies.base import EditSource
from hpo.debias.strategies.registry import STRATEGIES
from hpo.models.classifiers import ColorMnistMLP
from hpo.models.layer_types import LAYER_TYPES
from hpo.plans import Removal
from hpo.registry import Registry
from hpo.sae.model import FaithfulSAE
from hpo.service.study_file import parse_study
from hpo.service.trial import prepare_task, run_trial
from hpo.tasks.base import ModelCard
from hpo.tasks.registry import TASKS, get_task

FACTORY = """
import torch
from torch import nn
from hpo import Split, UserTask


def make_task(seed: int) -> UserTask:
    gen = torch.Generator().manual_seed(seed)

    def split(n: int, bias: float) -> Split:
        y = torch.randint(0, 2, (n,), generator=gen)
        tied = torch.rand(n, generator=gen) < bias
        s = torch.where(tied, y, torch.randint(0, 2, (n,), generator=gen))
        x = torch.cat([torch.randn(n, 6, generator=gen) + y[:, None], 3.0 * s[:, None]], 1)
        return Split(x.float(), y, 2 * y + s, s)

    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(7, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2))
    train = split(256, 0.95)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(40):
        opt.zero_grad()
        nn.functional.cross_entropy(model(train.x), train.y).backward()
        opt.step()
    return UserTask(
        model=model.eval(), layer="2", probe=split(128, 0.5), val=split(96, 0.5),
        test=split(96, 0.5), group_names=("y0/s0", "y0/s1", "y1/s0", "y1/s1"),
        concept_names=("s0", "s1"),
    )
"""

TINY_PARAMS = {"n_components": 12, "top_k": 3, "steps": 30, "eval_every": 10, "batch_size": 64}


def tiny_task(kind: str, tmp: Path) -> dict[str, Any]:
    """The `[task]` section of a tiny case for each registered task kind."""
    if kind == "colored_mnist":
        return {
            "kind": kind,
            "bias": 0.9,
            "train_per_digit": 16,
            "probe_per_digit": 12,
            "val_per_digit": 8,
            "test_per_digit": 8,
            "base_model": "mlp",
            "base_epochs": 1,
        }
    if kind == "toy_superposition":
        return {"kind": kind, "train_steps": 100, "n_samples": 500}
    if kind == "python":
        path = tmp / "tiny_factory.py"
        path.write_text(FACTORY)
        return {"kind": kind, "factory": f"{path}:make_task"}
    if kind == "image_folder":
        write_image_folder(tmp / "birds", per_group=4, size=16)
        weights = tmp / "resnet18.pt"
        if importlib.util.find_spec("torchvision") is not None:
            random_torchvision_weights(weights)
        return image_task(tmp / "birds", weights, image_size=16, resize=16)
    if kind == "text_csv":
        write_text_csv(tmp / "texts.csv", per_group=4)
        if importlib.util.find_spec("transformers") is not None:
            tiny_text_model(tmp / "tiny-bert")
        return {
            "kind": kind,
            "metadata": str(tmp / "texts.csv"),
            "model": str(tmp / "tiny-bert"),
            "splits": {"probe": "val", "val": "val", "test": "test"},
            "max_length": 12,
        }
    raise AssertionError(f"no tiny case for task kind {kind!r}: add one to tiny_task()")


def tiny_study(kind: str, tmp: Path, **params: Any) -> StudyFile:
    task = tiny_task(kind, tmp)
    objective = next(iter(get_task(kind).config.objectives))
    doc = {
        "study": {"name": f"conformance-{kind}", "objectives": [objective]},
        "task": task,
        "params": {**TINY_PARAMS, **params},
    }
    return parse_study(doc, "conformance")


def test_every_plugin_has_a_tiny_case(tmp_path: Path) -> None:
    """References and strategies share one tiny model each; a task needs its own case."""
    for kind in TASKS:
        tiny_task(kind, tmp_path)


# ---- tasks ---------------------------------------------------------------------------


# The optional packages a task kind needs, and the marks of its tests (CI runs the
# `vision` ones in the venv that has torchvision).
NEEDS = {"image_folder": "torchvision", "text_csv": "transformers"}
MARKS = {"image_folder": [pytest.mark.vision]}


@pytest.mark.parametrize("kind", [pytest.param(k, marks=MARKS.get(k, [])) for k in sorted(TASKS)])
def test_each_task_runs_through_its_protocol(
    kind: str, tmp_path: Path, tiny_mnist_dir: Path
) -> None:
    if kind in NEEDS:
        pytest.importorskip(NEEDS[kind], reason=f"the {kind} task needs {NEEDS[kind]}")
    study = tiny_study(kind, tmp_path)
    task = get_task(kind)
    assert task.kind == kind and task.config is type(study.task)
    ctx = prepare_task(study, data_dir=tiny_mnist_dir, progress=False)
    assert ctx.data_sha256 and ctx.bundle_key and isinstance(ctx.timings, dict)
    assert ctx.layer in task.decomposed_layers(ctx, study.params)
    data = task.sae_data(ctx, ctx.layer)
    assert data.inputs.shape[0] == data.targets.shape[0] == data.concepts.shape[0]
    assert data.weight_t.shape == (data.inputs.shape[1], data.targets.shape[1])

    result, trained = run_trial(study, ctx, study.params, with_test=True)

    assert set(trained) == set(task.decomposed_layers(ctx, study.params))
    for name in task.config.objectives:
        assert math.isfinite(result.value(name)), name
    json.dumps(result.to_json())  # the JSON form every consumer reads
    saes = {layer: t.sae for layer, t in trained.items()}
    state = task.edited_state_dict(ctx, saes, study.params, result)
    if state is not None:  # an edit: model.pt must score as the trial did
        assert result.edit is not None and set(result.edit.components) == set(saes)
        scored = task.score_state_dict(ctx, state)
        for split in ("val", "test"):
            assert scored[split] == result.metric("debiased", split)
        again = task.evaluate(ctx, saes, study.params, with_test=True, replay=None)
        assert again.value("worst_group") == result.value("worst_group")  # deterministic
    card = task.model_card(ctx)
    assert isinstance(card, ModelCard) and card.summary and card.class_name and card.load


# ---- references ----------------------------------------------------------------------


def reference_source(
    model: nn.Module, layer: str, x: torch.Tensor
) -> tuple[ReferenceSource, dict[str, CachedSplit]]:
    """A probe split of `x` for `model` (labels and concept from two input coordinates)."""
    flat = x.flatten(1)
    y = (flat[:, 0] > 0).long()
    concepts = (flat[:, 1] > 0).long()

    def inputs_of(name: str, xs: torch.Tensor) -> torch.Tensor:
        captured: list[torch.Tensor] = []
        handle = model.get_submodule(name).register_forward_pre_hook(
            lambda _m, args: captured.append(args[0].detach())
        )
        with torch.no_grad():
            model(xs)
        handle.remove()
        return captured[0]

    split = CachedSplit(z=inputs_of(layer, x), y=y, groups=2 * y + concepts, concepts=concepts, x=x)
    source = ReferenceSource(
        model=model,
        layer=layer,
        probe=split,
        inputs_of=inputs_of,
        oracle=copy.deepcopy(model),
        seed=0,
        val=split,
    )
    return source, {"probe": split, "val": split, "test": split}


def head_model_source() -> tuple[ReferenceSource, dict[str, CachedSplit]]:
    """A model that declares its head (LAYERS, head()): every reference can run on it."""
    torch.manual_seed(0)
    return reference_source(ColorMnistMLP().eval(), "fc1", torch.randn(80, 3, 28, 28))


def plain_source() -> tuple[ReferenceSource, dict[str, CachedSplit]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 2)).eval()
    return reference_source(model, "0", torch.randn(80, 5))


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_each_reference_fits_an_edit_of_the_same_model(name: str) -> None:
    method = REFERENCES[name]
    assert method.name == name and method.description
    source, splits = head_model_source()
    before = {k: v.clone() for k, v in source.model.state_dict().items()}
    assert method.unavailable(source) is None
    fitted = method.fit(source)
    assert isinstance(fitted, Fitted) and (fitted.overrides is None) != (fitted.model is None)
    keys = set(source.model.state_dict())
    if fitted.overrides is not None:
        assert set(fitted.overrides) <= keys
        scorer = Scorer(source.model, source.layer, splits, ("a", "b", "c", "d"))
        assert 0.0 <= scorer.metrics("val", fitted.overrides).worst_group <= 1.0
    else:
        assert set(fitted.model.state_dict()) == keys  # same architecture
    after = source.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in keys), "fitting changed the base model"


def test_a_reference_that_cannot_run_says_why() -> None:
    source, _ = plain_source()
    source.oracle = None
    assert "oracle" in (REFERENCES["oracle"].unavailable(source) or "")
    assert REFERENCES["retrain_head"].unavailable(source)  # no LAYERS/head() declared


# ---- edit strategies -----------------------------------------------------------------


def edit_source(group_loss: bool) -> tuple[EditSource, dict[str, FaithfulSAE]]:
    torch.manual_seed(0)
    params = TrialParams(n_components=10, top_k=2, n_ablate=3, concept_latents=2, fit_steps=20)
    saes = {"a": FaithfulSAE(5, 4, 10, 2), "b": FaithfulSAE(4, 3, 10, 2)}
    inputs = {"a": torch.randn(40, 5), "b": torch.randn(40, 4)}
    concepts = nn.functional.one_hot(torch.arange(40) % 2, 2).float()
    target = {"a": saes["a"].components([1]).sum(0).detach(), "b": torch.zeros(4, 3)}

    def loss(removed: dict[str, torch.Tensor], shifts: dict[str, torch.Tensor]) -> torch.Tensor:
        moved = sum(s.square().sum() for s in shifts.values())  # the bias is best where it is
        return sum((removed[k] - target[k]).square().sum() for k in removed) + moved

    source = EditSource(
        saes=saes,
        config=params,
        probe_inputs=inputs,
        probe_concepts={layer: concepts for layer in inputs},
        group_loss=loss if group_loss else None,
        weights={layer: sae.effective_weight().detach() for layer, sae in saes.items()},
    )
    return source, saes


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_each_edit_strategy_removes_parts_of_the_given_components_only(name: str) -> None:
    strategy = STRATEGIES[name]
    assert strategy.name == name and strategy.labels in ("concept", "group")
    source, saes = edit_source(group_loss=strategy.labels == "group")

    removal = strategy.select(source)

    assert set(removal) == set(saes)
    for layer, r in removal.items():
        assert isinstance(r, Removal)
        assert len(set(r.components)) == len(r.components)
        assert all(0 <= c < saes[layer].n_latents for c in r.components)
        if r.fractions is not None:
            assert len(r.fractions) == len(r.components)
            assert all(0.0 <= f <= 1.0 for f in r.fractions)
        assert Removal.from_json(json.loads(json.dumps(r.to_json()))) == r
        assert (
            ablation.ablated_sum(saes[layer], r.components, r.fractions).shape
            == saes[layer].effective_weight().shape
        )
    assert strategy.select(source) == removal  # deterministic
    words = strategy.describe(source.config, ("red", "green"))
    assert isinstance(words, str) and len(words) > 10


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_a_strategy_sees_only_the_labels_of_its_regime(name: str) -> None:
    strategy = STRATEGIES[name]
    source, _ = edit_source(group_loss=False)
    if strategy.labels == "concept":
        strategy.select(source)  # needs no group labels
    else:
        with pytest.raises(ValueError, match="needs group labels"):
            strategy.select(source)


# ---- layer types ---------------------------------------------------------------------


def layer_of_type(name: str) -> nn.Module:
    """A tiny module of each registered layer type (4 inputs, 3 outputs)."""
    if name == "linear":
        return nn.Linear(4, 3)
    if name == "conv2d_1x1":
        return nn.Conv2d(4, 3, kernel_size=1)
    if name == "hf_conv1d":
        pytorch_utils = pytest.importorskip("transformers.pytorch_utils")
        return pytorch_utils.Conv1D(3, 4)
    raise AssertionError(f"no tiny module for layer type {name!r}: add one to layer_of_type()")


def layer_inputs(name: str) -> torch.Tensor:
    return torch.randn(2, 4, 3, 3) if name == "conv2d_1x1" else torch.randn(2, 5, 4)


@pytest.mark.parametrize("name", sorted(LAYER_TYPES))
def test_each_layer_type_is_a_linear_map_of_its_rows(name: str) -> None:
    """What the edit relies on: weight() is out × in, the module's output is rows @ Wᵀ + b
    (in its own layout), and stored() writes an edited weight back where it came from."""
    torch.manual_seed(0)
    module, kind = layer_of_type(name), LAYER_TYPES[name]
    assert kind.accepts(module) and kind.unusable(module) is None
    weight = kind.weight(module)
    assert tuple(weight.shape) == (3, 4)
    x = layer_inputs(name)
    rows = kind.rows(x)
    out = module(x)
    out_rows = out.movedim(1, -1).reshape(-1, 3) if out.dim() == 4 else out.reshape(-1, 3)
    bias = module.bias if module.bias is not None else torch.zeros(3)
    torch.testing.assert_close(out_rows, rows @ weight.T + bias)
    edited = torch.randn(3, 4)
    module.load_state_dict({**module.state_dict(), "weight": kind.stored(module, edited)})
    torch.testing.assert_close(kind.weight(module), edited)


# ---- every registry is covered -------------------------------------------------------


# Each registry of hpo and the test that runs every entry of it through its protocol.
COVERED = {
    "task kind": "test_each_task_runs_through_its_protocol (here)",
    "reference": "test_each_reference_fits_an_edit_of_the_same_model (here)",
    "edit strategy": "test_each_edit_strategy_removes_parts_of_the_given_components_only (here)",
    "layer type": "test_each_layer_type_is_a_linear_map_of_its_rows (here)",
    "control": "test_controls.py (parametrized over CONTROLS)",
    "sampler": "test_samplers.py (every name in SAMPLERS)",
    "pruner": "test_samplers.py (every name in PRUNERS)",
    "loss": "test_sae.py::test_every_loss_weight_field_has_one_table_entry",
}


def every_registry() -> dict[str, Registry[Any]]:
    found = {}
    for info in pkgutil.walk_packages(hpo.__path__, "hpo."):
        if info.name.endswith("__main__"):  # runs the command line when imported
            continue
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if isinstance(value, Registry):
                found[value.what] = value
    return found


def test_every_registry_has_a_conformance_test() -> None:
    """A new extension point is a Registry; it needs its entry above (and that test)."""
    assert sorted(every_registry()) == sorted(COVERED)
