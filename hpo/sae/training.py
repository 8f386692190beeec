"""The Faithful-SAE training loop: it fits on a screen, and its data never leaves the device.

The whole probe set sits on the device as two tensors; a step takes a slice of a
permutation. `loss_terms` (hpo.sae.objective) returns the named losses; the loop weighs
them, logs them, and
calls `on_eval(step, sae)` every `eval_every` steps so a caller can score the
decomposition (and an Optuna pruner can stop the trial). On wide layers the faithfulness
loss is sketched (`faithful_sketch_size`): what the history logs for it is then an
unbiased estimate; evaluation measures the error exactly.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from hpo.device import available_bytes, gib
from hpo.errors import DivergedError, UserError
from hpo.params import SAEConfig
from hpo.sae import losses
from hpo.sae.model import FaithfulSAE
from hpo.sae.objective import LOSS_NAMES, loss_terms, loss_weights
from hpo.sae.projection import project_to_weight


@dataclass(frozen=True)
class SAEData:
    """What a Faithful-SAE trains on, all on one device."""

    inputs: torch.Tensor  # [N, in]: the layer's inputs
    targets: torch.Tensor  # [N, out]: inputs @ weight_t (pre-activation without bias)
    weight_t: torch.Tensor  # [in, out]: the layer's weight, transposed
    concepts: torch.Tensor  # [N, m]: concept labels for the first m latents (m may be 0)

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The inputs, targets and concepts of the samples `idx`, as a step takes them."""
        return (
            self.inputs.index_select(0, idx),
            self.targets.index_select(0, idx),
            self.concepts.index_select(0, idx),
        )


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


# "auto" sketches the faithfulness loss only where it does at most 1/this of the work: a
# sketched loss is a noisy one, so only clear savings take it (bench/scale.py steps
# measures the whole step against the work ratio; BENCHMARKS.md, "Big layers").
SKETCH_MIN_SAVING = 4
# A sketched loss is anchored at the exact one every this many steps (see
# losses.faithfulness_sketch): 3/this of the exact loss's work per step, on average.
ANCHOR_EVERY = 16


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
    device = data.inputs.device
    gen = torch.Generator(device="cpu").manual_seed(params.seed)
    torch.manual_seed(params.seed)
    d_in, d_out = data.weight_t.shape
    check_fits(d_in, d_out, params, data.inputs.shape[0], device)
    sae = initial_sae(data.weight_t, params)
    opt = optimizer(sae, params)
    sketch = _Sketch(params, data.weight_t)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=params.steps)
    batches = batch_indices(data.inputs.shape[0], params.batch_size, params.steps, gen, device)
    log = LossLog(params.steps, log_points, device)
    start = time.perf_counter()
    with _bar(params.steps, progress) as bar:
        for step, idx in enumerate(batches):
            weights = loss_weights(params, step)
            probes, anchor = sketch.at(step, sae)
            terms = loss_terms(
                sae, *data.batch(idx), data.weight_t, params, weights, probes, anchor
            )
            total = sum(weights[k] * v for k, v in terms.items())
            assert isinstance(total, torch.Tensor)  # loss_terms gives one term per loss
            opt.zero_grad(set_to_none=True)
            total.backward()  # type: ignore[no-untyped-call]  # Tensor.backward is untyped
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
                and (step + 1) % params.eval_every == 0 < params.steps - step - 1
            ):
                on_eval(step + 1, as_scored(sae, data.weight_t, params, in_place=False))
    as_scored(sae, data.weight_t, params, in_place=True)
    return TrainResult(sae=sae, history=log.history, seconds=time.perf_counter() - start)


def _bar(steps: int, progress: bool) -> tqdm:
    return tqdm(
        total=steps, desc="SAE", disable=not progress, leave=False, unit="step", mininterval=1.0
    )


class _Sketch:
    """The faithfulness loss's random probes and anchor at each step, where it is
    sketched (`faithful_sketch_size`); (None, None) where it is exact."""

    def __init__(self, params: SAEConfig, weight_t: torch.Tensor) -> None:
        self.size = faithful_sketch_size(params, *weight_t.shape)
        self.gen = torch.Generator(device=weight_t.device).manual_seed(params.seed)
        self.weight_t = weight_t
        self.anchor: losses.Anchor | None = None

    def at(self, step: int, sae: FaithfulSAE) -> tuple[torch.Tensor | None, losses.Anchor | None]:
        if self.size is None:
            return None, None
        if step % ANCHOR_EVERY == 0:
            self.anchor = losses.faithfulness_anchor(sae.encoder, sae.decoder, self.weight_t)
        return losses.sketch_probes(self.weight_t.shape[1], self.size, self.gen), self.anchor


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
