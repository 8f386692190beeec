"""The shipped user tasks (examples/): valid, deterministic, and worth debiasing.

Each factory must return a task the service accepts, the same one for the same seed,
whose model fails the groups where the spurious attribute disagrees with the label,
while the information to do better is there: a head retrained on the balanced probe
split does much better. The last test runs the tabular example end to end through the
real CLI (trial, a 2-worker study, export, reload), as a user would.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import inspect
import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import optuna
import pytest
import tomli_w
import torch
import torch.nn.functional as F
from optuna.trial import TrialState
from torch import nn

from hpo import Split, UserTask
from hpo.service.study_file import load_study_file
from hpo.tasks.user import validate_user_task

ROOT = Path(__file__).resolve().parents[1]
HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None
NEEDS_TRANSFORMERS = pytest.mark.skipif(
    not HAS_TRANSFORMERS,
    reason="spurious_gpt2 needs transformers: pip install -e '.[transformers]'",
)
EXAMPLES = ("spurious_tabular", "spurious_last_layer", "spurious_tokens", "spurious_gpt2")
EXAMPLE_PARAMS = [
    pytest.param(name, marks=NEEDS_TRANSFORMERS) if name == "spurious_gpt2" else name
    for name in EXAMPLES
]
SEEDS = (0, 1)


@pytest.fixture(scope="module")
def modules() -> Iterator[dict[str, ModuleType]]:
    """The example modules, imported as the study files name them (from the repo root);
    spurious_gpt2 imports transformers only when its factory runs."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(ROOT))
        yield {name: importlib.import_module(f"examples.{name}") for name in EXAMPLES}


class Tasks(dict):
    """Each example's task for each seed, built the first time a test asks for it."""

    def __init__(self, modules: dict[str, ModuleType]) -> None:
        super().__init__()
        self.modules = modules

    def __missing__(self, key: tuple[str, int]) -> UserTask:
        name, seed = key
        self[key] = task = self.modules[name].make_task(seed=seed)
        return task


@pytest.fixture(scope="module")
def tasks(modules: dict[str, ModuleType]) -> Tasks:
    return Tasks(modules)


def load_by_path(name: str) -> ModuleType:
    """The example loaded from its file alone, as `factory = "examples/x.py:make_task"`."""
    spec = importlib.util.spec_from_file_location(f"_by_path_{name}", ROOT / f"examples/{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@torch.no_grad()
def worst_group(model: nn.Module, split: Split, n_groups: int) -> float:
    out = model(split.x)
    correct = (getattr(out, "logits", out).argmax(-1) == split.y).double()
    return min(float(correct[split.groups == g].mean()) for g in range(n_groups))


def retrain_last_layer(task: UserTask) -> nn.Module:
    """The model with its last Linear refitted on the balanced probe split: a logistic
    regression on the features that reach it (the reference debiasing has to approach).
    Where it sees every token and the model pools after it (GPT-2), through the model."""
    model = copy.deepcopy(task.model)
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    seen: dict[str, torch.Tensor] = {}
    hook = last.register_forward_hook(lambda m, args, out: seen.update(x=args[0].detach()))
    with torch.no_grad():
        model(task.probe.x)
    hook.remove()
    nn.init.zeros_(last.weight)
    if last.bias is not None:
        nn.init.zeros_(last.bias)
    opt = torch.optim.LBFGS(last.parameters(), max_iter=200, line_search_fn="strong_wolfe")
    for p in model.parameters():
        p.requires_grad_(False)
    for p in last.parameters():
        p.requires_grad_(True)

    def logits() -> torch.Tensor:
        if seen["x"].dim() == 2:
            return last(seen["x"])
        return model(task.probe.x).logits  # per-token logits, pooled by the model

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(logits(), task.probe.y) + 1e-3 * last.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return model.eval()


# ----------------------------------------------------------------------- the factories


@pytest.mark.parametrize("name", EXAMPLE_PARAMS)
def test_factory_returns_a_valid_balanced_task(
    name: str, tasks: dict[tuple[str, int], UserTask]
) -> None:
    for seed in SEEDS:
        task = validate_user_task(tasks[name, seed], f"examples.{name}:make_task")
        n_groups = len(task.group_names)
        assert len(task.concept_names) >= 2 and len(set(task.group_names)) == n_groups
        for split in (task.probe, task.val, task.test):
            sizes = torch.bincount(split.groups, minlength=n_groups)
            assert int(sizes.max() - sizes.min()) <= 1, "probe/val/test groups are balanced"
            assert split.concepts is not None


@pytest.mark.parametrize("name", EXAMPLE_PARAMS)
def test_factory_is_deterministic_by_seed_and_loads_by_path(
    name: str, tasks: dict[tuple[str, int], UserTask]
) -> None:
    rng, threads = torch.get_rng_state(), torch.get_num_threads()
    again = load_by_path(name).make_task(seed=0)
    assert torch.equal(torch.get_rng_state(), rng), "the caller's global RNG is left alone"
    assert torch.get_num_threads() == threads
    first, other = tasks[name, 0], tasks[name, 1]
    for split in ("probe", "val", "test"):
        for field in ("x", "y", "groups", "concepts"):
            assert torch.equal(
                getattr(getattr(again, split), field), getattr(getattr(first, split), field)
            )
    state, state_again = first.model.state_dict(), again.model.state_dict()
    assert state.keys() == state_again.keys()
    assert all(torch.equal(state[k], state_again[k]) for k in state)
    assert not torch.equal(first.val.x, other.val.x)
    layer = f"{first.layer}.weight"
    assert not torch.equal(state[layer], other.model.state_dict()[layer])


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", EXAMPLE_PARAMS)
def test_the_model_is_biased_and_worth_debiasing(
    name: str, seed: int, tasks: dict[tuple[str, int], UserTask]
) -> None:
    task = tasks[name, seed]
    n = len(task.group_names)
    original = worst_group(task.model, task.val, n)
    retrained = worst_group(retrain_last_layer(task), task.val, n)
    assert original < 0.5, "the model should fail the groups where s disagrees with y"
    assert retrained > original + 0.25, (original, retrained)


@pytest.mark.parametrize(
    ("name", "options", "fragment"),
    [
        ("spurious_tabular", {"bias": 1.5}, "bias = 1.5"),
        ("spurious_tabular", {"n_features": 4}, "n_features = 4"),
        ("spurious_tabular", {"n_val": 3}, "n_val = 3"),
        ("spurious_last_layer", {"n_classes": 1}, "n_classes = 1"),
        ("spurious_last_layer", {"n_sensors": 1}, "n_sensors = 1"),
        ("spurious_last_layer", {"n_test": 10}, "n_test = 10"),
        ("spurious_tokens", {"n_heads": 3}, "n_heads = 3"),
        ("spurious_tokens", {"seq_len": 2}, "seq_len = 2"),
        ("spurious_tokens", {"bias": -0.1}, "bias = -0.1"),
        ("spurious_gpt2", {"n_heads": 3}, "n_heads = 3"),
        ("spurious_gpt2", {"n_probe": 4}, "n_probe = 4"),
    ],
)
def test_bad_options_are_value_errors_naming_them(
    name: str, options: dict[str, Any], fragment: str, modules: dict[str, ModuleType]
) -> None:
    with pytest.raises(ValueError, match=fragment):
        modules[name].make_task(seed=0, **options)


STUDY_FILES = {name: name for name in EXAMPLES} | {
    "spurious_tokens_two_blocks": "spurious_tokens"
}  # study file -> the example module it names


@pytest.mark.parametrize(("study_name", "name"), STUDY_FILES.items())
def test_the_study_files_validate(
    study_name: str, name: str, modules: dict[str, ModuleType]
) -> None:
    study = load_study_file(ROOT / f"examples/{study_name}.toml")
    assert study.task.kind == "python"
    assert study.study.name == study_name
    assert study.task.factory == f"examples.{name}:make_task"
    assert set(study.task.options) <= modules[name].make_task.__kwdefaults__.keys()


# ------------------------------------------- the transformer: sequences, blocks, export

# A transformer the size of a unit test: trains in a fraction of a second.
TINY_TOKENS = {"n_train": 400, "n_probe": 200, "n_val": 200, "n_test": 200, "epochs": 2}
TINY_TOKENS_ARCH = {"seq_len": 8, "d_model": 16, "d_mlp": 32}
TINY_PARAMS = {"n_components": 16, "top_k": 4, "steps": 40, "eval_every": 20, "batch_size": 64}
TWO_BLOCKS = ("blocks.0.mlp.fc1", "blocks.1.mlp.fc1")


def tiny_tokens_study(tmp_path: Path, study_name: str) -> Path:
    """The example's study file with a tiny task and a short SAE training, storage here."""
    doc = tomllib.loads((ROOT / f"examples/{study_name}.toml").read_text())
    doc["task"]["options"] |= TINY_TOKENS | TINY_TOKENS_ARCH
    doc["params"] |= TINY_PARAMS
    doc["study"]["n_trials"] = 2
    doc["pruner"] = {"name": "none"}
    doc["storage"] = {"url": f"sqlite:///{tmp_path / 'storage' / f'{study_name}.db'}"}
    path = tmp_path / f"{study_name}.toml"
    path.write_text(tomli_w.dumps(doc))
    return path


def test_layer_inputs_of_the_transformer_are_sequences_decomposed_token_by_token(
    modules: dict[str, ModuleType],
) -> None:
    """The MLP layers see [N, seq_len, d]: the SAE trains on N·seq_len rows, every token
    labelled with its sequence's concept (whether S is in it)."""
    from hpo.service.trial import prepare_task
    from hpo.tasks.registry import get_task

    study = load_study_file(
        ROOT / "examples/spurious_tokens_two_blocks.toml",
        [f"task.options.{k}={v}" for k, v in (TINY_TOKENS | TINY_TOKENS_ARCH).items()],
    )
    ctx = prepare_task(study, data_dir=None, progress=False)
    task = get_task("python")
    n, seq_len = TINY_TOKENS["n_probe"], TINY_TOKENS_ARCH["seq_len"]
    assert ctx.splits["probe"].z.shape == (n, seq_len, TINY_TOKENS_ARCH["d_model"])
    assert set(TWO_BLOCKS) <= set(ctx.editable_layers)
    for layer in TWO_BLOCKS:
        data = task.sae_data(ctx, layer)
        assert data.inputs.shape == (n * seq_len, TINY_TOKENS_ARCH["d_model"])
        assert data.targets.shape == (n * seq_len, TINY_TOKENS_ARCH["d_mlp"])
        concepts = data.concepts.argmax(1).reshape(n, seq_len)
        assert torch.equal(concepts, ctx.splits["probe"].concepts[:, None].expand(n, seq_len))


@pytest.mark.parametrize(
    ("study_name", "layers"),
    [("spurious_tokens", ("blocks.0.mlp.fc1",)), ("spurious_tokens_two_blocks", TWO_BLOCKS)],
)
def test_a_transformer_trial_edits_one_layer_or_two_blocks_and_scores_every_group(
    study_name: str, layers: tuple[str, ...], tmp_path: Path, modules: dict[str, ModuleType]
) -> None:
    from hpo.service.trial import prepare_task, run_trial

    study = load_study_file(tiny_tokens_study(tmp_path, study_name))
    ctx = prepare_task(study, data_dir=None, progress=False)
    result, trained = run_trial(study, ctx, study.params, with_test=True)

    assert tuple(trained) == layers
    assert result.edit is not None and result.edit.layer == "+".join(layers)
    assert set(result.edit.components) == set(layers)
    assert {"original", "debiased", "last_layer", "leace"} <= set(result.models)
    group_names = modules["spurious_tokens"].GROUP_NAMES
    for model, per_split in result.models.items():
        for split in ("val", "test"):
            metrics = per_split[split]
            assert list(metrics.groups) == list(group_names), (model, split)
            accuracies = [a for a in metrics.groups.values() if a is not None]
            assert len(accuracies) == 4 and all(0.0 <= a <= 1.0 for a in accuracies)
            assert metrics.worst_group == min(accuracies)
    assert result.errors["faithfulness_error"] >= 0.0  # large after 40 steps; measured
    assert 0.0 <= result.errors["prediction_change"] <= 1.0


def test_a_two_block_transformer_study_exports_a_model_that_reloads_strictly(
    tmp_path: Path, modules: dict[str, ModuleType]
) -> None:
    """Both blocks' edited weights travel in model.pt, which loads into the example's own
    class (strict, weights only) and scores exactly what metrics.json says."""
    from hpo.cli import main
    from hpo.service.runner import launch, work

    path = tiny_tokens_study(tmp_path, "spurious_tokens_two_blocks")
    doc = tomllib.loads(path.read_text())
    doc["params"]["alpha"] = 1.0  # a fixed α: both layers are edited, whatever val prefers
    path.write_text(tomli_w.dumps(doc))
    url, name = doc["storage"]["url"], doc["study"]["name"]
    assert launch(str(path), workers=0, n_trials=None, storage_url=None, data_dir=None) == 0
    assert work(name, url, worker="test", threads=1) == 0
    out = tmp_path / "export"
    assert main(["export", name, "--storage", url, "--out", str(out)]) == 0

    module = modules["spurious_tokens"]
    options = doc["task"]["options"]
    arch = inspect.signature(module.TokenTransformer).parameters
    model = module.TokenTransformer(**{k: v for k, v in options.items() if k in arch})
    model.load_state_dict(torch.load(out / "model.pt", weights_only=True), strict=True)
    model.eval()
    task = module.make_task(seed=doc["task"].get("seed", 0), **options)
    metrics = json.loads((out / "metrics.json").read_text())
    for split in ("val", "test"):
        got = worst_group(model, getattr(task, split), len(module.GROUP_NAMES))
        want = metrics["models"]["debiased"][split]["worst_group"]
        assert got == pytest.approx(want, abs=1e-9), split
    original, edited = task.model.state_dict(), model.state_dict()
    changed = {k for k in original if not torch.equal(original[k], edited[k])}
    assert changed == {f"{layer}.weight" for layer in TWO_BLOCKS}


# ------------------------------------------------------------- end to end, through the CLI


def hpo(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """The installed `hpo` command, run from the repository root (as the README says)."""
    script = Path(sys.executable).with_name("hpo")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "hpo"]
    return subprocess.run(
        [*command, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )


@pytest.mark.slow
def test_tabular_example_end_to_end_through_the_cli(
    tmp_path: Path, modules: dict[str, ModuleType]
) -> None:
    """Needs the service's `[task] kind = "python"` pipeline (issue 10): trial, launch with
    2 workers, export, and the export reloading into the example's own class."""
    # The models here are tiny: one torch thread (as conftest.py), else a busy 2-core
    # machine spends minutes in OpenMP synchronisation (measured: SAE 135 s vs 9 s).
    env = {
        **os.environ,
        "HPO_CACHE_DIR": str(tmp_path / "cache"),
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
    }
    source = ROOT / "examples/spurious_tabular.toml"

    out = hpo("trial", str(source.relative_to(ROOT)), "--json", env=env)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    test = {m: result["models"][m]["test"]["worst_group"] for m in ("original", "debiased")}
    assert test["debiased"] > test["original"], test

    doc = tomllib.loads(source.read_text())
    url = f"sqlite:///{tmp_path / 'storage' / 'spurious_tabular.db'}"
    doc["storage"] = {"url": url}
    doc["study"]["n_trials"] = n_trials = 4
    study_file = tmp_path / "spurious_tabular.toml"
    study_file.write_text(tomli_w.dumps(doc))
    out = hpo("launch", str(study_file), "--workers", "2", env=env)
    assert out.returncode == 0, out.stderr
    study = optuna.load_study(study_name=doc["study"]["name"], storage=url)
    done = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(done) == n_trials

    export = tmp_path / "export"
    out = hpo("export", doc["study"]["name"], "--storage", url, "--out", str(export), env=env)
    assert out.returncode == 0, out.stderr
    metrics = json.loads((export / "metrics.json").read_text())
    module = modules["spurious_tabular"]
    options = doc["task"].get("options", {})
    model = module.TabularMLP(options.get("n_features", 16))
    model.load_state_dict(torch.load(export / "model.pt", weights_only=True), strict=True)
    model.eval()
    task = module.make_task(seed=doc["task"].get("seed", 0), **options)
    got = worst_group(model, task.test, len(task.group_names))
    assert got == pytest.approx(metrics["models"]["debiased"]["test"]["worst_group"], abs=1e-9)
    assert got > metrics["models"]["original"]["test"]["worst_group"]


GPT2_TINY = {"n_train": 1000, "n_probe": 400, "n_val": 400, "n_test": 400, "epochs": 4}


@pytest.mark.slow
@NEEDS_TRANSFORMERS
def test_gpt2_example_end_to_end_through_the_cli_and_from_pretrained(
    tmp_path: Path, modules: dict[str, ModuleType]
) -> None:
    """A Hugging Face GPT-2 debiased by editing `transformer.h.0.mlp.c_fc` (a Conv1D):
    trial, a 2-worker study, export, and `from_pretrained` on the export's hf/ folder
    giving exactly the numbers metrics.json records."""
    from transformers import GPT2ForSequenceClassification

    env = {
        **os.environ,
        "HPO_CACHE_DIR": str(tmp_path / "cache"),
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
    }
    doc = tomllib.loads((ROOT / "examples/spurious_gpt2.toml").read_text())
    doc["task"]["options"] |= GPT2_TINY
    doc["params"] |= {"n_components": 32, "steps": 200, "eval_every": 100}
    url = f"sqlite:///{tmp_path / 'storage' / 'spurious_gpt2.db'}"
    doc["storage"] = {"url": url}
    doc["study"]["n_trials"] = n_trials = 4
    study_file = tmp_path / "spurious_gpt2.toml"
    study_file.write_text(tomli_w.dumps(doc))

    out = hpo("trial", str(study_file), "--json", env=env)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert {"original", "debiased", "control_random", "control_svd", "leace"} <= set(
        result["models"]
    )
    assert "whole model" not in out.stderr  # scored from the layer, never the whole model

    out = hpo("launch", str(study_file), "--workers", "2", env=env)
    assert out.returncode == 0, out.stderr
    study = optuna.load_study(study_name=doc["study"]["name"], storage=url)
    done = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(done) == n_trials

    export = tmp_path / "export"
    out = hpo("export", doc["study"]["name"], "--storage", url, "--out", str(export), env=env)
    assert out.returncode == 0, out.stderr
    metrics = json.loads((export / "metrics.json").read_text())
    model = GPT2ForSequenceClassification.from_pretrained(export / "hf").eval()
    task = modules["spurious_gpt2"].make_task(seed=0, **doc["task"]["options"])
    for split in ("val", "test"):
        got = worst_group(model, getattr(task, split), len(task.group_names))
        assert got == pytest.approx(metrics["models"]["debiased"][split]["worst_group"], abs=1e-9)
    state = torch.load(export / "model.pt", weights_only=True)
    strict = GPT2ForSequenceClassification(model.config)
    strict.load_state_dict(state, strict=True)  # model.pt: the model's own state dict
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert "from_pretrained" in (export / "README.md").read_text()


@NEEDS_TRANSFORMERS
def test_dfr_refits_gpt2s_score_layer_on_the_token_the_model_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, modules: dict[str, ModuleType]
) -> None:
    """GPT-2's score layer sees every token and the model returns the last token's
    logits: DFR (in the python kind's default list) refits the layer on that token's
    features, which are GPT-2's last hidden state at the last position."""
    from hpo.debias.references.pooled import per_sample_features
    from hpo.service.study_file import parse_study
    from hpo.service.trial import prepare_task
    from hpo.tasks.collect import module_inputs

    monkeypatch.setenv("HPO_CACHE_DIR", str(tmp_path / "cache"))
    task: dict[str, Any] = {
        "kind": "python",
        "factory": "examples.spurious_gpt2:make_task",
        "options": GPT2_TINY,
    }
    study = parse_study({"study": {"name": "gpt2"}, "task": task}, "gpt2")
    ctx = prepare_task(study, data_dir=None, progress=False)
    assert {"last_layer", "dfr", "leace"} <= set(ctx.references)
    for split in ("val", "test"):
        assert 0.0 <= ctx.references["dfr"][split].worst_group <= 1.0

    user = modules["spurious_gpt2"].make_task(seed=0, **GPT2_TINY)
    x = user.probe.x[:32]
    features, why = per_sample_features(
        user.model, "score", x, lambda name, xs: module_inputs(user.model, name, xs)
    )
    assert features is not None, why
    with torch.no_grad():
        last = user.model.transformer(x).last_hidden_state[:, -1]
    torch.testing.assert_close(features, last)
