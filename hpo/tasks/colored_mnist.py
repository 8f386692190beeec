"""The colored-MNIST debiasing task: data, base model, cached layer inputs, scoring.

`prepare` does everything that does not depend on the SAE, once: it builds the splits,
trains (or loads from the cache) the base model, the oracle and the last-layer
reference, and runs the trunk over probe/val/test a single time. `evaluate` then scores a
decomposition from those cached layer inputs, picking α on `val` only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hpo.config import ColoredMnistTask, TrialParams
from hpo.data.cache import bundle_file, content_hash, load_tensors, save_tensors
from hpo.data.colored_mnist import ORACLE_SPLIT, Split, build_splits, make_groups
from hpo.data.mnist_files import load_mnist
from hpo.debias import ablation, scoring
from hpo.models.classifiers import BASE_MODELS, MODEL_CODE_VERSION, ColoredMnistClassifier
from hpo.models.training import layer_inputs, retrain_head, train_classifier
from hpo.sae.model import FaithfulSAE
from hpo.sae.training import SAEData

EVAL_SPLITS = ("probe", "val", "test")


@dataclass
class SplitTensors:
    z: torch.Tensor  # cached inputs of the decomposed layer
    digits: torch.Tensor
    colors: torch.Tensor
    group_ids: torch.Tensor


@dataclass
class ColoredMnistContext:
    task: ColoredMnistTask
    model: ColoredMnistClassifier
    splits: dict[str, SplitTensors]
    group_names: tuple[str, ...]
    references: dict[str, dict[str, Any]]  # model -> split -> metrics (SAE-independent)
    data_sha256: str
    bundle_key: str
    bundle_path: Path
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def layer(self) -> str:
        return self.task.layer

    @property
    def n_concepts(self) -> int:
        return len(self.task.colors)


def bundle_key(task: ColoredMnistTask, data_sha256: str) -> str:
    return content_hash(
        {"data": data_sha256, "task": task.model_dump(mode="json"), "code": MODEL_CODE_VERSION}
    )


def load_splits(
    task: ColoredMnistTask, data_dir: str | Path | None, progress: bool
) -> tuple[dict[str, Split], str]:
    if task.source == "colorized_folder":
        from hpo.data.colorized_folder import folder_splits

        return folder_splits(task)
    mnist = load_mnist(data_dir, progress=progress)
    splits = build_splits(
        task, mnist.train_images, mnist.train_labels, mnist.test_images, mnist.test_labels
    )
    return splits, mnist.sha256


def ensure_bundle(
    task: ColoredMnistTask,
    *,
    data_dir: str | Path | None,
    device: torch.device,
    progress: bool = True,
) -> tuple[Path, dict[str, float]]:
    """The cached bundle for this task and data, trained first if missing.

    A bundle holds everything trials need and nothing that needs MNIST again: the base
    model, the oracle and last-layer references with their scores, and per split the
    cached layer inputs, digits, colours and group ids. A worker on another machine only
    needs this file.
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    splits, sha = load_splits(task, data_dir, progress)
    timings["data"] = time.perf_counter() - t0
    path = bundle_file("colored_mnist", bundle_key(task, sha))
    if not path.exists():
        t0 = time.perf_counter()
        save_tensors(path, _cpu(_build_bundle(task, splits, sha, device, progress, timings)))
        timings["base_model"] = time.perf_counter() - t0 - timings["activations"]
    return path, timings


def _build_bundle(
    task: ColoredMnistTask,
    splits: dict[str, Split],
    sha: str,
    device: torch.device,
    progress: bool,
    timings: dict[str, float],
) -> dict[str, Any]:
    groups = make_groups(task)
    images = {name: torch.from_numpy(s.images).to(device) for name, s in splits.items()}
    digits = {name: torch.from_numpy(s.digits).to(device) for name, s in splits.items()}
    bundle = _train_bundle(task, BASE_MODELS[task.base_model], images, digits, device, progress)
    model = bundle.pop("_model")
    t0 = time.perf_counter()
    bundle["splits"] = {
        name: {
            "z": layer_inputs(model, images[name], task.layer),
            "digits": digits[name],
            "colors": torch.from_numpy(splits[name].colors),
            "group_ids": torch.from_numpy(groups.ids(splits[name].digits, splits[name].colors)),
        }
        for name in EVAL_SPLITS
    }
    timings["activations"] = time.perf_counter() - t0
    split_tensors = {
        name: SplitTensors(**{k: v.to(device) for k, v in d.items()})
        for name, d in bundle["splits"].items()
    }
    bundle["references"] = _reference_metrics(
        task, model, bundle, split_tensors, groups.names, images, device
    )
    bundle["meta"] = {
        "key": bundle_key(task, sha),
        "data_sha256": sha,
        "task": task.model_dump(mode="json"),
        "group_names": list(groups.names),
    }
    return bundle


def load_context(task: ColoredMnistTask, path: Path, device: torch.device) -> ColoredMnistContext:
    """Everything a trial needs, from a bundle file alone (no MNIST, no trunk run)."""
    t0 = time.perf_counter()
    bundle = load_tensors(path, map_location=device)
    model = BASE_MODELS[task.base_model]().to(device)
    model.load_state_dict(bundle["base"])
    model.eval()
    meta = bundle["meta"]
    return ColoredMnistContext(
        task=task,
        model=model,
        splits={n: SplitTensors(**d) for n, d in bundle["splits"].items()},
        group_names=tuple(meta["group_names"]),
        references=bundle["references"],
        data_sha256=meta["data_sha256"],
        bundle_key=meta["key"],
        bundle_path=path,
        timings={"load": time.perf_counter() - t0},
    )


def prepare(
    task: ColoredMnistTask,
    *,
    data_dir: str | Path | None,
    device: torch.device,
    progress: bool = True,
) -> ColoredMnistContext:
    """Data, base model (cached), references and cached layer inputs, with timings."""
    path, timings = ensure_bundle(task, data_dir=data_dir, device=device, progress=progress)
    ctx = load_context(task, path, device)
    load = ctx.timings.pop("load")
    ctx.timings = {
        "data": timings["data"],
        "base_model": timings.get("base_model", 0.0) + load,
        "activations": timings.get("activations", 0.0),
    }
    return ctx


def _cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    return obj


def _train_bundle(
    task: ColoredMnistTask,
    model_cls: type[ColoredMnistClassifier],
    images: dict[str, torch.Tensor],
    digits: dict[str, torch.Tensor],
    device: torch.device,
    progress: bool,
) -> dict[str, Any]:
    """Base model on biased `train`; oracle on the same images with balanced colours."""
    trained = {}
    for name, split, seed in (("base", "train", task.seed), ("oracle", ORACLE_SPLIT, task.seed)):
        torch.manual_seed(seed)
        model = model_cls().to(device)
        trained[name] = train_classifier(
            model,
            images[split],
            digits[split],
            epochs=task.base_epochs,
            lr=task.base_lr,
            batch_size=task.base_batch_size,
            seed=seed,
            desc=f"{name} model",
            progress=progress,
        )
    return {
        "_model": trained["base"],
        "base": trained["base"].state_dict(),
        "oracle": trained["oracle"].state_dict(),
    }


def _reference_metrics(
    task: ColoredMnistTask,
    model: ColoredMnistClassifier,
    bundle: dict[str, Any],
    splits: dict[str, SplitTensors],
    names: tuple[str, ...],
    images: dict[str, torch.Tensor],
    device: torch.device,
) -> dict[str, dict[str, Any]]:
    """original / oracle / last_layer on val and test: they never depend on the SAE."""
    import copy

    oracle = BASE_MODELS[task.base_model]().to(device)
    oracle.load_state_dict(bundle["oracle"])
    oracle.eval()
    probe = splits["probe"]
    last = retrain_head(copy.deepcopy(model), task.layer, probe.z, probe.digits, seed=task.seed)
    bundle["last_layer"] = last.state_dict()
    refs: dict[str, dict[str, Any]] = {"original": {}, "oracle": {}, "last_layer": {}}
    for split in ("val", "test"):
        s = splits[split]
        refs["original"][split] = scoring.score_weight(
            model, task.layer, s.z, s.digits, s.group_ids, names
        )
        refs["last_layer"][split] = scoring.score_weight(
            last, task.layer, s.z, s.digits, s.group_ids, names
        )
        oz = layer_inputs(oracle, images[split], task.layer)
        refs["oracle"][split] = scoring.score_weight(
            oracle, task.layer, oz, s.digits, s.group_ids, names
        )
    return refs


def sae_data(ctx: ColoredMnistContext) -> SAEData:
    """Probe-split layer inputs, their pre-activations (bias excluded), colour labels."""
    probe = ctx.splits["probe"]
    weight = getattr(ctx.model, ctx.layer).weight.detach()
    weight_t = weight.T.contiguous()
    concepts = torch.nn.functional.one_hot(probe.colors, ctx.n_concepts).float()
    return SAEData(inputs=probe.z, targets=probe.z @ weight_t, weight_t=weight_t, concepts=concepts)


def ablated_components(
    ctx: ColoredMnistContext, sae: FaithfulSAE, params: TrialParams
) -> list[int]:
    if params.ablate == "conditioned":
        return ablation.conditioned_components(ctx.n_concepts)
    data = sae_data(ctx)
    return ablation.attribution_components(sae, data.inputs, data.concepts, params.n_ablate)


@torch.no_grad()
def evaluate(
    ctx: ColoredMnistContext, sae: FaithfulSAE, params: TrialParams, *, with_test: bool
) -> dict[str, Any]:
    """Score a decomposition: α chosen on val (or fixed), test only reported at that α.

    Returns a flat-enough dict that every consumer (pruning, user attrs, report, export)
    reads from: "objective" metrics at top level, plus the per-model/per-split tables.
    """
    index = ablated_components(ctx, sae, params)
    ablated_t = ablation.ablated_sum(sae, index)
    val = ctx.splits["val"]
    if params.alpha is None:
        alphas = scoring.alpha_grid(params.alpha_max, params.alpha_steps).to(ablated_t.device)
    else:
        alphas = torch.tensor([params.alpha], device=ablated_t.device)
    sweep = scoring.alpha_sweep(
        ctx.model, ctx.layer, val.z, val.digits, val.group_ids, ctx.group_names, ablated_t, alphas
    )
    best = scoring.pick_alpha(sweep)
    alpha = round(float(alphas[best]), 6)  # float32 linspace: 0.7 not 0.70000005
    weight = getattr(ctx.model, ctx.layer).weight
    new_weight = ablation.debiased_weight(weight, ablated_t, alpha)
    debiased = {"val": sweep[best]}
    if with_test:
        t = ctx.splits["test"]
        debiased["test"] = scoring.score_weight(
            ctx.model, ctx.layer, t.z, t.digits, t.group_ids, ctx.group_names, new_weight
        )
    models = {name: _select(ref, with_test) for name, ref in ctx.references.items()}
    models["debiased"] = debiased
    data = sae_data(ctx)
    errors = decomposition_errors(sae, data)
    return {
        "worst_group": sweep[best]["worst_group"],
        "mean_group": sweep[best]["mean_group"],
        "overall": sweep[best]["overall"],
        **errors,
        "alpha": alpha,
        "ablated_components": index,
        "alpha_curve": {
            "alphas": [round(float(a), 6) for a in alphas],
            "val_worst_group": [m["worst_group"] for m in sweep],
            "val_mean_group": [m["mean_group"] for m in sweep],
        },
        "models": models,
    }


def _select(ref: dict[str, Any], with_test: bool) -> dict[str, Any]:
    return {k: v for k, v in ref.items() if with_test or k != "test"}


@torch.no_grad()
def decomposition_errors(sae: FaithfulSAE, data: SAEData) -> dict[str, float]:
    """Relative faithfulness error ‖W − ΣP‖²/‖W‖² and relative reconstruction error."""
    w = data.weight_t
    faith = float((w - sae.effective_weight()).square().sum() / w.square().sum())
    recon, _, _ = sae(data.inputs)
    rec = float(
        (recon - data.targets).square().sum() / data.targets.square().sum().clamp(min=1e-12)
    )
    return {"faithfulness_error": faith, "reconstruction_error": rec}


def debiased_state_dict(
    ctx: ColoredMnistContext, sae: FaithfulSAE, params: TrialParams, alpha: float
) -> dict[str, torch.Tensor]:
    """The state dict of the debiased model at `alpha`: the base model's own keys."""
    index = ablated_components(ctx, sae, params)
    weight = getattr(ctx.model, ctx.layer).weight
    new_weight = ablation.debiased_weight(weight, ablation.ablated_sum(sae, index), alpha)
    return ablation.debiased_model(ctx.model, ctx.layer, new_weight).state_dict()
