"""The Faithful-SAE training loop: it fits on a screen, and its data never leaves the device.

The whole probe set sits on the device as two tensors; a step takes a slice of a
permutation. `loss_terms` returns the named losses; the loop weighs them, logs them, and
calls `on_eval(step, sae)` every `eval_every` steps so a caller can score the
decomposition (and an Optuna pruner can stop the trial). On wide layers the faithfulness
loss is sketched (`faithful_sketch_size`): what the history logs for it is then an
unbiased estimate; evaluation measures the error exactly.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm import tqdm

from hpo.config import LossWeights, SAEConfig
from hpo.device import available_bytes, gib
from hpo.errors import DivergedError, UserError
from hpo.registry import Registry
from hpo.sae import losses
from hpo.sae.model import FaithfulSAE
from hpo.sae.projection import project_to_weight


@dataclass(frozen=True)
class Step:
    """What a loss may read in one training step: the batch and the SAE's forward pass."""

    sae: FaithfulSAE
    pre: torch.Tensor  # [B, latents]: pre-activations
    kept: Any  # the top-k latents in compact form (values, indices), or None (dense)
    recon: torch.Tensor  # [B, out]: the reconstruction
    target: torch.Tensor
    concepts: torch.Tensor
    weight_t: torch.Tensor
    params: SAEConfig
    zero: torch.Tensor  # what a term that is not computed reports
    probes: torch.Tensor | None = None  # [out, s]: sketch the faithfulness loss (None: exact)
    anchor: losses.Anchor | None = None  # the sketch's control variate


@dataclass(frozen=True)
class Loss:
    """One term of the training loss: how to compute it and which LossWeights field
    weighs it. `always`: computed (and logged) even at weight zero; else skipped then.
    `ramp`: whether the config grows the weight quadratically over training."""

    term: Callable[[Step], torch.Tensor]
    weight: Callable[[LossWeights], float]
    always: bool = False
    ramp: Callable[[SAEConfig], bool] | None = None


def _conditioning(s: Step) -> torch.Tensor:
    return losses.conditioning(s.pre, s.concepts, s.sae.rank) if s.concepts.shape[1] else s.zero


def _faithful(s: Step) -> torch.Tensor:
    if s.probes is None:
        return losses.faithfulness(s.sae.effective_weight(), s.weight_t)
    return losses.faithfulness_sketch(s.sae.encoder, s.sae.decoder, s.weight_t, s.probes, s.anchor)


def _sparsity(s: Step) -> torch.Tensor:
    norms = s.sae.decoder.norm(dim=1) if s.params.sparsity_decoder_norm else None
    return losses.sparsity(s.pre, norms)


def _decorrelation(s: Step) -> torch.Tensor:
    if s.kept is None:
        return losses.decorrelation(s.pre)
    return losses.decorrelation_topk(s.kept.values, s.kept.indices, s.sae.n_latents)


# The training loss, by name, in the order the terms are computed, summed and logged. A
# new loss is one entry here (and its weight field in hpo.config.LossWeights).
LOSSES: Registry[Loss] = Registry("loss")
LOSSES.register(
    "recon",
    Loss(lambda s: losses.reconstruction(s.recon, s.target), lambda w: w.recon_weight, always=True),
)
LOSSES.register(
    "faithful",
    Loss(_faithful, lambda w: w.faithful_weight, always=True, ramp=lambda c: c.faithful_ramp),
)
LOSSES.register(
    "rank",
    Loss(
        lambda s: losses.schatten_rank(*s.sae.factors(), p=s.params.schatten_p),
        lambda w: w.rank_weight,
    ),
)
LOSSES.register("cond", Loss(_conditioning, lambda w: w.cond_weight))
LOSSES.register("sparsity", Loss(_sparsity, lambda w: w.sparsity_weight))
LOSSES.register("decorr", Loss(_decorrelation, lambda w: w.decorr_weight))
LOSS_NAMES = LOSSES.names()


@dataclass(frozen=True)
class SAEData:
    """What a Faithful-SAE trains on, all on one device."""

    inputs: torch.Tensor  # [N, in]: the layer's inputs
    targets: torch.Tensor  # [N, out]: inputs @ weight_t (pre-activation without bias)
    weight_t: torch.Tensor  # [in, out]: the layer's weight, transposed
    concepts: torch.Tensor  # [N, m]: concept labels for the first m latents (m may be 0)


@dataclass
class TrainResult:
    sae: FaithfulSAE
    history: dict[str, list[float]] = field(default_factory=dict)  # name -> values, + "step"
    seconds: float = 0.0


def optimizer(sae: FaithfulSAE, params: SAEConfig) -> torch.optim.Adam:
    """Adam; the fused kernel (one per parameter) where the device has one: same update."""
    device = sae.encoder.device.type
    return torch.optim.Adam(sae.parameters(), lr=params.lr, fused=device in ("cpu", "cuda"))


def faithful_sketch_size(params: SAEConfig, d_in: int, d_out: int) -> int | None:
    """How many probes sketch the faithfulness loss, or None for the exact loss.

    "auto" sketches when forming E·D (in·C·r·out multiply-adds) costs at least
    SKETCH_MIN_SAVING times the sketch's s·(in·out + C·r·(in + out)): a wide layer. Small
    layers (colored MNIST's 128 → 64 at C = 1024) keep the exact loss, bit for bit.
    """
    if params.faithful_estimate == "exact":
        return None
    size = params.sketch_size
    if params.faithful_estimate == "sketch":
        return size
    latents = params.n_components * params.rank
    exact = d_in * latents * d_out
    sketch = size * (d_in * d_out + latents * (d_in + d_out))
    return size if exact >= SKETCH_MIN_SAVING * sketch else None


# "auto" sketches the faithfulness loss only where it does at most 1/this of the work.
# Measured on one CPU thread (bench/scale.py steps, C = 1024, s = 64), the whole step
# is exact / sketch = 1.02x faster at a work ratio of 1.2 (256 -> 128), 1.23x at 2.3
# (512 -> 256), 1.39x at 4 (1024 -> 512), 2.9x at 9 (4096 -> 2048); a sketched loss
# is a noisy one, so only clear savings take it.
SKETCH_MIN_SAVING = 4
# A sketched loss is anchored at the exact one every this many steps (see
# losses.faithfulness_sketch): 3/this of the exact loss's work per step, on average.
ANCHOR_EVERY = 16


def loss_weights(params: SAEConfig, step: int) -> dict[str, float]:
    """Each loss's weight at `step`, from its LossWeights field (see LOSSES)."""
    weights = {}
    for name, loss in LOSSES.items():
        weight = loss.weight(params)
        if loss.ramp is not None and loss.ramp(params):
            weight *= losses.quadratic_ramp(step, params.steps)
        weights[name] = weight
    return weights


def loss_terms(
    sae: FaithfulSAE,
    x: torch.Tensor,
    target: torch.Tensor,
    concepts: torch.Tensor,
    weight_t: torch.Tensor,
    params: SAEConfig,
    weights: dict[str, float],
    probes: torch.Tensor | None = None,
    anchor: losses.Anchor | None = None,
) -> dict[str, torch.Tensor]:
    """One step's losses by name. Terms whose weight is zero are not computed. `probes`
    [out, s]: the faithfulness loss is sketched with them (None: exact), and with the
    `anchor`'s control variate if given.

    The top-k latents stay in compact form (values, indices), from which decoding and the
    decorrelation loss work (see `FaithfulSAE.decode`, `losses.decorrelation_topk`). The
    values are those of `sae(x)` and `losses.decorrelation` up to float rounding.
    """
    pre = sae.pre_activations(x)
    kept = sae.select(pre)
    recon = pre @ sae.decoder if kept is None else sae.decode(kept)
    step = Step(
        sae, pre, kept, recon, target, concepts, weight_t, params, x.new_zeros(()), probes, anchor
    )
    return {
        name: loss.term(step) if loss.always or weights[name] else step.zero
        for name, loss in LOSSES.items()
    }


def training_bytes(d_in: int, d_out: int, params: SAEConfig, n: int) -> int:
    """At least this much memory (float32) trains the SAE: encoder and decoder with their
    gradients and Adam's two moments, and one batch's latents (pre- and post-top-k) with
    their gradients. A lower bound, enough to refuse what cannot fit."""
    latents = params.n_components * params.rank
    batch = min(params.batch_size, n)
    return 4 * (4 * (d_in + d_out) * latents + 4 * batch * latents)


def check_fits(
    d_in: int, d_out: int, params: SAEConfig, n: int, device: torch.device, what: str = "params"
) -> None:
    """A UserError, before anything is allocated, when the SAE cannot fit on `device`."""
    need = training_bytes(d_in, d_out, params, n)
    have = available_bytes(device)
    if have is not None and need > have:
        raise UserError(
            f"{what}: an SAE with n_components = {params.n_components}, rank = {params.rank} "
            f"and batch_size = {min(params.batch_size, n)} on a {d_in} -> {d_out} layer needs "
            f"at least {gib(need)} of memory, but {device} has {gib(have)} available; "
            "lower n_components, rank or batch_size"
        )


def initial_sae(weight_t: torch.Tensor, params: SAEConfig) -> FaithfulSAE:
    """The Faithful-SAE a trial starts from, seeded by `params.seed`: what training then
    changes, and the untrained control its edit is compared with."""
    torch.manual_seed(params.seed)
    d_in, d_out = weight_t.shape
    top_k = min(params.top_k, params.n_components)
    sae = FaithfulSAE(d_in, d_out, params.n_components, top_k, params.rank).to(weight_t.device)
    if params.init == "tied":
        sae.tie_to(weight_t)
    return sae


def train_sae(
    data: SAEData,
    params: SAEConfig,
    *,
    on_eval: Callable[[int, FaithfulSAE], None] | None = None,
    progress: bool = False,
    log_points: int = 200,
) -> TrainResult:
    import time

    device = data.inputs.device
    gen = torch.Generator(device="cpu").manual_seed(params.seed)
    torch.manual_seed(params.seed)
    d_in, d_out = data.weight_t.shape
    check_fits(d_in, d_out, params, data.inputs.shape[0], device)
    sae = initial_sae(data.weight_t, params)
    opt = optimizer(sae, params)
    sketch = faithful_sketch_size(params, d_in, d_out)
    sketch_gen = torch.Generator(device=device).manual_seed(params.seed)
    anchor = None
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=params.steps)
    batches = batch_indices(data.inputs.shape[0], params.batch_size, params.steps, gen, device)
    log = LossLog(params.steps, log_points, device)
    start = time.perf_counter()
    bar = tqdm(
        total=params.steps,
        desc="SAE",
        disable=not progress,
        leave=False,
        unit="step",
        mininterval=1.0,
    )
    with bar:
        for step, idx in enumerate(batches):
            weights = loss_weights(params, step)
            if sketch is not None and step % ANCHOR_EVERY == 0:
                anchor = losses.faithfulness_anchor(sae.encoder, sae.decoder, data.weight_t)
            terms = loss_terms(
                sae,
                data.inputs.index_select(0, idx),
                data.targets.index_select(0, idx),
                data.concepts.index_select(0, idx),
                data.weight_t,
                params,
                weights,
                None if sketch is None else losses.sketch_probes(d_out, sketch, sketch_gen),
                anchor,
            )
            total = sum(weights[k] * v for k, v in terms.items())
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            sched.step()
            values = log.add(step, terms, total)
            if values is not None:
                bar.set_postfix(
                    recon=f"{values['recon']:.3g}", faithful=f"{values['faithful']:.3g}"
                )
            bar.update(1)
            if (
                on_eval is not None
                and (step + 1) % params.eval_every == 0
                and step + 1 < params.steps
            ):
                on_eval(step + 1, as_scored(sae, data.weight_t, params, in_place=False))
    as_scored(sae, data.weight_t, params, in_place=True)
    return TrainResult(sae=sae, history=log.history, seconds=time.perf_counter() - start)


def as_scored(
    sae: FaithfulSAE, weight_t: torch.Tensor, params: SAEConfig, *, in_place: bool
) -> FaithfulSAE:
    """`sae` as a trial scores it: projected to the weight if the params ask
    (`project_faithful`; on a copy unless `in_place`), else `sae` itself."""
    if not params.project_faithful:
        return sae
    target = sae if in_place else copy.deepcopy(sae)
    project_to_weight(target, weight_t)
    return target


def batch_indices(
    n: int, batch_size: int, steps: int, gen: torch.Generator, device: torch.device
) -> Iterator[torch.Tensor]:
    """`steps` minibatches of sample indices: a fresh permutation each epoch (from `gen`),
    the last partial batch of an epoch dropped."""
    batch = min(batch_size, n)
    per_epoch = n // batch
    perm = torch.randperm(n, generator=gen).to(device)
    for step in range(steps):
        pos = step % per_epoch
        if pos == 0 and step:
            perm = torch.randperm(n, generator=gen).to(device)
        yield perm[pos * batch : (pos + 1) * batch]


class LossLog:
    """Each named loss's mean over the steps since the last log point, recorded about
    `points` times over training; a mean that is not finite ends the trial as diverged."""

    def __init__(self, steps: int, points: int, device: torch.device) -> None:
        self.steps, self.every = steps, max(1, steps // points)
        self.names = (*LOSS_NAMES, "total")
        self.history: dict[str, list[float]] = {"step": [], **{k: [] for k in self.names}}
        self.running = torch.zeros(len(self.names), device=device)  # Σ since the last log

    def add(
        self, step: int, terms: dict[str, torch.Tensor], total: torch.Tensor
    ) -> dict[str, float] | None:
        """Account for `step`; at a log point, the means logged (else None)."""
        with torch.no_grad():
            self.running += torch.stack([*(terms[k] for k in LOSS_NAMES), total])
        if (step + 1) % self.every and step + 1 != self.steps:
            return None
        count = (step % self.every) + 1
        values = dict(zip(self.names, (self.running / count).tolist(), strict=True))
        if not all(math.isfinite(v) for v in values.values()):
            raise DivergedError(step + 1, values)
        self.history["step"].append(step + 1)
        for k, v in values.items():
            self.history[k].append(v)
        self.running.zero_()
        return values
