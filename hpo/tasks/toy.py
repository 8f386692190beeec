"""The 5-2 toy model of superposition: does a decomposition recover the known features?

Feature i's true mechanism in the encoder W (n × d) is the rank-1 matrix e_i ⊗ W[i, :]
(row i of W, zeros elsewhere). A good decomposition has, for every feature, a component
close to that matrix: MMCS (mean max cosine similarity) near 1 and ML2R (norm ratio)
near 1, as in the APD paper.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from hpo.data.cache import bundle_file, content_hash, load_tensors, save_tensors
from hpo.debias.controls import CONTROLS
from hpo.debias.edit.controlled import Replay
from hpo.errors import UserError
from hpo.models import classifiers
from hpo.models.classifiers import ToySuperpositionAE
from hpo.params import TrialParams
from hpo.results import GroupMetrics, TrialResult, control_name
from hpo.sae.training import SAEData
from hpo.tasks import bundle
from hpo.tasks.base import BudgetPoint, Direction, ModelCard, Saes, TaskConfig
from hpo.tasks.classifier_metrics import decomposition_errors


class ToyTask(TaskConfig):
    """The 5-2 toy model of superposition: known features, known mechanisms."""

    kind: Literal["toy_superposition"] = "toy_superposition"
    n_features: int = Field(5, ge=2)
    hidden_dim: int = Field(2, ge=1)
    feature_prob: float = Field(0.05, gt=0.0, le=1.0)
    train_steps: int = Field(5000, ge=1)
    batch_size: int = Field(1024, ge=1)
    lr: float = Field(1e-2, gt=0)
    n_samples: int = Field(20000, ge=100)

    objectives: ClassVar[Mapping[str, Direction]] = {
        "mmcs": "maximize",
        "ml2r": "maximize",
        "faithfulness_error": "minimize",
    }


@dataclass
class ToyContext:
    task: ToyTask
    model: ToySuperpositionAE
    inputs: torch.Tensor  # sparse feature vectors the SAE trains on
    data_sha256: str
    bundle_key: str
    bundle_path: Path
    timings: dict[str, float] = field(default_factory=dict)
    layer: str = "W"  # the toy model's one weight, as `params.layers` names it

    @property
    def device(self) -> torch.device:
        return self.inputs.device


def sparse_features(n: int, n_features: int, prob: float, gen: torch.Generator) -> torch.Tensor:
    """Each feature present with probability `prob`, with a magnitude uniform in [0, 1]."""
    mask = torch.rand(n, n_features, generator=gen) < prob
    return torch.rand(n, n_features, generator=gen) * mask


def train_toy(task: ToyTask, device: torch.device) -> ToySuperpositionAE:
    gen = torch.Generator().manual_seed(task.seed)
    torch.manual_seed(task.seed)
    model = ToySuperpositionAE(task.n_features, task.hidden_dim).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=task.lr, weight_decay=0.0)
    for _ in range(task.train_steps):
        x = sparse_features(task.batch_size, task.n_features, task.feature_prob, gen).to(device)
        loss = F.mse_loss(model(x), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]  # Tensor.backward is untyped
        opt.step()
    return model.eval()


def ensure_bundle(
    task: ToyTask, *, device: torch.device, progress: bool = True, **_: Any
) -> tuple[Path, dict[str, float]]:
    """The cached toy bundle (trained model + the SAE's inputs), trained first if missing."""
    code = bundle.code_fingerprint((sys.modules[__name__], classifiers))
    key = content_hash({"task": task.model_dump(mode="json"), "code": code})
    path = bundle_file("toy_superposition", key)
    timings = {"data": 0.0, "base_model": 0.0, "activations": 0.0}
    if not path.exists():
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(task.seed + 1)
        inputs = sparse_features(task.n_samples, task.n_features, task.feature_prob, gen)
        # The toy data is synthetic: its checksum is that of the generated inputs.
        sha = hashlib.sha256(inputs.numpy().tobytes()).hexdigest()
        timings["data"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        model = train_toy(task, device)
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        meta = {"key": key, "data_sha256": sha, "task": task.model_dump(mode="json")}
        save_tensors(path, {"base": state, "inputs": inputs, "meta": meta})
        timings["base_model"] = time.perf_counter() - t0
    return path, timings


def load_context(task: ToyTask, path: Path, device: torch.device) -> ToyContext:
    bundle = load_tensors(path, map_location=device)
    model = ToySuperpositionAE(task.n_features, task.hidden_dim).to(device)
    model.load_state_dict(bundle["base"])
    meta = bundle["meta"]
    return ToyContext(task, model.eval(), bundle["inputs"], meta["data_sha256"], meta["key"], path)


def sae_data(ctx: ToyContext) -> SAEData:
    w = ctx.model.W.detach()
    return SAEData(
        inputs=ctx.inputs,
        targets=ctx.inputs @ w,
        weight_t=w,
        concepts=ctx.inputs.new_zeros(len(ctx.inputs), 0),
    )


def true_mechanisms(w: torch.Tensor) -> torch.Tensor:
    """[n, n, d]: feature i's mechanism is W with every row but i zeroed."""
    n = w.shape[0]
    return torch.eye(n, device=w.device)[:, :, None] * w[None]


def mechanism_metrics(components: torch.Tensor, w: torch.Tensor) -> dict[str, float]:
    """MMCS and ML2R of components [C, n, d] against the true mechanisms of W (n × d)."""
    mech = true_mechanisms(w).flatten(1)
    comp = components.flatten(1)
    cos = F.normalize(mech, dim=1) @ F.normalize(comp, dim=1).T  # [n, C]
    best = cos.argmax(dim=1)
    ratio = comp[best].norm(dim=1) / mech.norm(dim=1).clamp(min=1e-12)
    return {"mmcs": float(cos.max(dim=1).values.mean()), "ml2r": float(ratio.mean())}


def control_metrics(w: torch.Tensor, params: TrialParams) -> dict[str, float]:
    """MMCS and ML2R of each control (`params.controls`) as "control_<name>_mmcs", ...:
    what a decomposition that learnt nothing scores (for "random", the trial's SAE before
    training, same seed and init; with `init = "tied"` it already sums to about W)."""
    return {
        f"{control_name(name)}_{key}": value
        for name in params.controls
        for key, value in mechanism_metrics(CONTROLS[name](w, params).components(), w).items()
    }


LAYER = "W"  # the toy model's one weight, as `params.layers` names it


class ToySuperposition:
    """Recovering known mechanisms: no edit, scored by MMCS and ML2R."""

    kind: ClassVar[str] = "toy_superposition"
    config: ClassVar[type[TaskConfig]] = ToyTask

    def build(
        self, cfg: ToyTask, *, data_dir: Any, device: torch.device, progress: bool
    ) -> tuple[Path, dict[str, float]]:
        return ensure_bundle(cfg, device=device, progress=progress)

    def load(self, cfg: ToyTask, path: Path, device: torch.device) -> ToyContext:
        return load_context(cfg, path, device)

    def decomposed_layers(self, ctx: ToyContext, params: TrialParams) -> list[str]:
        if params.layers not in (None, LAYER):
            raise UserError(
                f"params.layers: the toy model has one weight to decompose; valid: {LAYER}"
            )
        return [LAYER]

    def sae_data(self, ctx: ToyContext, layer: str) -> SAEData:
        return sae_data(ctx)

    @torch.no_grad()
    def evaluate(
        self,
        ctx: ToyContext,
        saes: Saes,
        params: TrialParams,
        *,
        with_test: bool,
        replay: Replay | None = None,  # the toy makes no edit
    ) -> TrialResult:
        (sae,) = saes.values()
        w = ctx.model.W.detach()
        metrics = mechanism_metrics(sae.components(), w)
        errors = decomposition_errors(sae, sae_data(ctx))
        return TrialResult(
            task=self.kind, objectives=metrics | control_metrics(w, params), errors=errors
        )

    def edited_state_dict(self, *_: Any) -> None:
        return None

    def score_state_dict(
        self, ctx: ToyContext, state: Mapping[str, torch.Tensor]
    ) -> dict[str, GroupMetrics]:
        return {}  # no groups: the toy is scored by MMCS and ML2R, and makes no edit

    def budget_curve(self, *_: Any) -> dict[str, list[BudgetPoint]]:
        return {}  # no edit

    def model_files(self, *_: Any) -> dict[str, bytes]:
        return {}

    def model_card(self, ctx: ToyContext) -> ModelCard:
        t = ctx.task
        return ModelCard(
            summary=f"The {t.n_features}-{t.hidden_dim} toy model of superposition",
            class_name=f"{ToySuperpositionAE.__module__}.{ToySuperpositionAE.__qualname__}",
            load=f"model = ToySuperpositionAE({t.n_features}, {t.hidden_dim})",
        )
