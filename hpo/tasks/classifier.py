"""Debiasing a classifier at one linear layer: what colored MNIST and user tasks share.

A classifier task hands over a `UserTask` (a trained model, the layer, probe/val/test)
and, if it can, an oracle. From there everything is common: `write_bundle` caches the
layer's inputs on every split and scores the references once; `ClassifierTask.load`
rebuilds a context from the bundle alone; `evaluate` scores a Faithful-SAE ablation,
choosing α on validation and reporting test only at that α.
"""

from __future__ import annotations

import hashlib
import inspect
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import torch
from torch import nn

from hpo.config import TrialParams
from hpo.data.cache import save_tensors
from hpo.debias import ablation
from hpo.debias.references import REFERENCES, Fitted, ReferenceSource
from hpo.debias.scoring import CachedSplit, Scorer, alpha_grid, pick_alpha, runs_from_layer
from hpo.errors import UserError
from hpo.results import Edit, GroupMetrics, TrialResult
from hpo.sae.model import FaithfulSAE
from hpo.sae.training import SAEData
from hpo.tasks.base import Direction, TaskConfig
from hpo.tasks.user import SPLITS, UserTask

EVAL_SPLITS = ("val", "test")
OBJECTIVES: dict[str, Direction] = {
    "worst_group": "maximize",
    "mean_group": "maximize",
    "overall": "maximize",
    "faithfulness_error": "minimize",
    "reconstruction_error": "minimize",
}


@dataclass
class ClassifierContext:
    """Everything a trial on a classifier task needs, rebuilt from its bundle."""

    model: nn.Module
    layer: str
    splits: dict[str, CachedSplit]
    group_names: tuple[str, ...]
    concept_names: tuple[str, ...]
    references: dict[str, dict[str, GroupMetrics]]  # name -> split -> metrics
    data_sha256: str
    bundle_key: str
    bundle_path: Path
    card: dict[str, str]
    timings: dict[str, float] = field(default_factory=dict)
    scorer: Scorer = field(init=False)

    def __post_init__(self) -> None:
        self.scorer = Scorer(self.model, self.layer, self.splits, self.group_names)

    @property
    def weight(self) -> torch.Tensor:
        return self.model.get_submodule(self.layer).weight


def code_fingerprint(modules: Sequence[ModuleType]) -> str:
    """A hash of the source of the modules that shape a bundle: edit one, and cached
    bundles are rebuilt (no version constant to bump by hand)."""
    digest = hashlib.sha256()
    for module in modules:
        digest.update(inspect.getsource(module).encode())
    return digest.hexdigest()[:16]


def tensor_digest(tensors: Sequence[torch.Tensor | None]) -> str:
    digest = hashlib.sha256()
    for t in tensors:
        if t is not None:
            digest.update(str((t.dtype, tuple(t.shape))).encode())
            digest.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@torch.no_grad()
def module_inputs(
    model: nn.Module, name: str, x: torch.Tensor, batch_size: int = 1024
) -> torch.Tensor:
    """What module `name` receives when `model` runs on `x` (in batches): from the model's
    own `layer_input` where it has one, else read by a forward pre-hook."""
    if runs_from_layer(model, name):
        return torch.cat(
            [model.layer_input(x[i : i + batch_size], name) for i in range(0, len(x), batch_size)]
        )
    captured: list[torch.Tensor] = []

    def hook(_: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        captured.append(args[0].detach())

    handle = model.get_submodule(name).register_forward_pre_hook(hook)
    try:
        for i in range(0, len(x), batch_size):
            model(x[i : i + batch_size])
    finally:
        handle.remove()
    if not captured:
        raise UserError(f"layer {name!r} is never called by the model's forward()")
    return torch.cat(captured)


def check_references(names: Sequence[str], can_train_oracle: bool, kind: str) -> None:
    for name in names:
        if name not in REFERENCES:
            raise ValueError(f"unknown reference {name!r}; valid: {', '.join(REFERENCES)}")
        if name == "oracle" and not can_train_oracle:
            raise ValueError(f"task kind {kind} cannot train an oracle; remove 'oracle'")


def write_bundle(
    path: Path,
    task: UserTask,
    *,
    references: Sequence[str],
    oracle: nn.Module | None,
    seed: int,
    meta: Mapping[str, Any],
    model_payload: Mapping[str, Any],
    device: torch.device,
) -> dict[str, float]:
    """Cache the layer inputs on every split and the references' scores, in one file.

    The model inputs (x) are kept only when scoring has to run the whole model; a model
    that runs from the layer (`head`) is scored from the cached inputs alone.
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    model = task.model.to(device).eval()
    full = {
        name: CachedSplit(
            z=module_inputs(model, task.layer, s.x.to(device)),
            y=s.y.to(device).long(),
            groups=s.groups.to(device).long(),
            concepts=None if s.concepts is None else s.concepts.to(device).long(),
            x=s.x.to(device),
        )
        for name, s in ((n, getattr(task, n)) for n in SPLITS)
    }
    timings["activations"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores = score_references(model, task, full, references, oracle, seed)
    timings["references"] = time.perf_counter() - t0
    keep_x = not runs_from_layer(model, task.layer)
    splits = {
        name: {
            "z": s.z,
            "y": s.y,
            "groups": s.groups,
            **({"concepts": s.concepts} if s.concepts is not None else {}),
            **({"x": s.x} if keep_x else {}),
        }
        for name, s in full.items()
    }
    bundle = {
        "meta": {
            **meta,
            "layer": task.layer,
            "group_names": list(task.group_names),
            "concept_names": list(task.concept_names),
        },
        "model": dict(model_payload),
        "splits": splits,
        "references": {
            name: {split: _metrics_json(m) for split, m in per_split.items()}
            for name, per_split in scores.items()
        },
    }
    save_tensors(path, _cpu(bundle))
    return timings


def score_references(
    model: nn.Module,
    task: UserTask,
    splits: dict[str, CachedSplit],
    names: Sequence[str],
    oracle: nn.Module | None,
    seed: int,
) -> dict[str, dict[str, GroupMetrics]]:
    """original plus each named reference, on val and test (with model inputs)."""
    scorer = Scorer(model, task.layer, splits, task.group_names)  # whole model: x is here
    out = {"original": {s: scorer.metrics(s) for s in EVAL_SPLITS}}
    source = ReferenceSource(
        model=model,
        layer=task.layer,
        probe=splits["probe"],
        inputs_of=lambda name, x: module_inputs(model, name, x),
        oracle=oracle,
        seed=seed,
    )
    for name in names:
        method = REFERENCES[name]
        why = method.unavailable(source)
        if why is not None:
            raise UserError(f"task.references: {name} cannot run here: {why}")
        fitted = method.fit(source)
        out[name] = {s: _score_fitted(fitted, scorer, task, splits, s) for s in EVAL_SPLITS}
    return out


def _score_fitted(
    fitted: Fitted, scorer: Scorer, task: UserTask, splits: dict[str, CachedSplit], split: str
) -> GroupMetrics:
    if fitted.model is None:
        return scorer.metrics(split, fitted.overrides)
    other = Scorer(fitted.model.eval(), task.layer, splits, task.group_names)
    return other.metrics(split)


def _metrics_json(m: GroupMetrics) -> dict[str, Any]:
    return {
        "worst_group": m.worst_group,
        "mean_group": m.mean_group,
        "overall": m.overall,
        "groups": m.groups,
    }


def _cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    return obj


def context_from_bundle(
    bundle: dict[str, Any], model: nn.Module, path: Path, card: dict[str, str]
) -> ClassifierContext:
    meta = bundle["meta"]
    splits = {name: CachedSplit(**d) for name, d in bundle["splits"].items()}
    return ClassifierContext(
        model=model,  # in eval mode: built-in models are put there, programs are captured so
        layer=meta["layer"],
        splits=splits,
        group_names=tuple(meta["group_names"]),
        concept_names=tuple(meta["concept_names"]),
        references={
            name: {s: GroupMetrics.from_json(m) for s, m in per_split.items()}
            for name, per_split in bundle["references"].items()
        },
        data_sha256=meta["data_sha256"],
        bundle_key=meta["key"],
        bundle_path=path,
        card=card,
    )


class ClassifierTask:
    """The scoring half of every classifier task; subclasses build and load bundles."""

    objectives: ClassVar[Mapping[str, Direction]] = OBJECTIVES
    config: ClassVar[type[TaskConfig]]

    def sae_data(self, ctx: ClassifierContext) -> SAEData:
        """Probe-split layer inputs, their pre-activations (bias excluded), concept labels."""
        probe = ctx.splits["probe"]
        weight_t = ctx.weight.detach().T.contiguous()
        assert probe.concepts is not None
        concepts = torch.nn.functional.one_hot(probe.concepts, len(ctx.concept_names)).float()
        return SAEData(
            inputs=probe.z, targets=probe.z @ weight_t, weight_t=weight_t, concepts=concepts
        )

    def ablated_components(
        self, ctx: ClassifierContext, sae: FaithfulSAE, params: TrialParams
    ) -> list[int]:
        conditioned = ablation.conditioned_components(
            len(ctx.concept_names) * params.concept_latents
        )
        if params.ablate == "conditioned":
            return conditioned
        data = self.sae_data(ctx)
        exclude = conditioned if params.ablate == "both" else []
        by_attribution = ablation.attribution_components(
            sae, data.inputs, data.concepts, params.n_ablate, exclude=exclude
        )
        return sorted(set(exclude) | set(by_attribution))

    @torch.no_grad()
    def evaluate(
        self, ctx: ClassifierContext, sae: FaithfulSAE, params: TrialParams, *, with_test: bool
    ) -> TrialResult:
        """α chosen on val (or fixed); test only reported, at that α."""
        index = self.ablated_components(ctx, sae, params)
        ablated_t = ablation.ablated_sum(sae, index)
        if params.alpha is None:
            alphas = alpha_grid(params.alpha_max, params.alpha_steps)
        else:
            alphas = [params.alpha]
        key = f"{ctx.layer}.weight"
        weight = ctx.weight

        def edit(alpha: float) -> dict[str, torch.Tensor]:
            return {key: ablation.debiased_weight(weight, ablated_t, alpha)}

        sweep = [ctx.scorer.metrics("val", edit(a)) for a in alphas]
        best = pick_alpha(sweep)
        for k in range(2, params.alpha_extend + 2 if params.alpha is None else 0):
            if best != len(alphas) - 1:
                break  # the best α lies inside the grid
            longer = alpha_grid(k * params.alpha_max, k * (params.alpha_steps - 1) + 1)
            extra = longer[len(alphas) :]
            sweep += [ctx.scorer.metrics("val", edit(a)) for a in extra]
            alphas = alphas + extra
            best = pick_alpha(sweep)
        alpha = alphas[best]
        debiased = {"val": sweep[best]}
        if with_test:
            debiased["test"] = ctx.scorer.metrics("test", edit(alpha))
        models = {
            name: {s: m for s, m in per_split.items() if with_test or s != "test"}
            for name, per_split in ctx.references.items()
        }
        models["debiased"] = debiased
        best_val = sweep[best]
        return TrialResult(
            task=self.kind,
            objectives={
                "worst_group": best_val.worst_group,
                "mean_group": best_val.mean_group,
                "overall": best_val.overall,
            },
            errors=decomposition_errors(sae, self.sae_data(ctx)),
            models=models,
            edit=Edit(
                layer=ctx.layer,
                components=index,
                alpha=alpha,
                selection=params.ablate,
                alpha_curve={
                    "alphas": list(alphas),
                    "val_worst_group": [m.worst_group for m in sweep],
                    "val_mean_group": [m.mean_group for m in sweep],
                },
            ),
        )

    def edited_state_dict(
        self, ctx: ClassifierContext, sae: FaithfulSAE, params: TrialParams, result: TrialResult
    ) -> dict[str, torch.Tensor] | None:
        """The debiased model's state dict at the result's α: the base model's own keys."""
        assert result.edit is not None
        ablated_t = ablation.ablated_sum(sae, result.edit.components)
        state = {k: v.detach().clone() for k, v in ctx.model.state_dict().items()}
        state[f"{ctx.layer}.weight"] = ablation.debiased_weight(
            ctx.weight.detach(), ablated_t, result.edit.alpha
        )
        return state

    def model_card(self, ctx: ClassifierContext) -> dict[str, str]:
        return ctx.card

    kind: ClassVar[str]


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
