"""One Faithful-SAE training step, all losses on: the current step against the dense one.

    python bench/sae_step.py [--device cpu|cuda] [--repeats 30] [--threads N]

Both steps run in one process on the same batch, interleaved (old, new, new, old, ...) so
that load from other processes hits them alike; each figure is a median over repeats.
`reference_loss_terms` below is the step as it was before the compact top-k path (dense
B × C latents, dense decode, Gram-matrix decorrelation), kept here as the reference.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from hpo.params import TrialParams
from hpo.sae import losses
from hpo.sae.model import FaithfulSAE
from hpo.sae.objective import loss_terms, loss_weights
from hpo.sae.training import optimizer

# ---- the reference: the dense step as it was ----------------------------------------


def reference_sparsify(sae: FaithfulSAE, z: torch.Tensor) -> torch.Tensor:
    if sae.top_k >= sae.n_components:
        return z
    if sae.rank == 1:
        vals, idx = z.topk(sae.top_k, dim=1)
        return torch.zeros_like(z).scatter_(1, idx, vals)
    zc = z.view(z.shape[0], sae.n_components, sae.rank)
    idx = zc.norm(dim=2).topk(sae.top_k, dim=1).indices
    mask = torch.zeros(zc.shape[:2], dtype=z.dtype, device=z.device).scatter_(1, idx, 1.0)
    return (zc * mask[:, :, None]).view_as(z)


def reference_decorrelation(latents: torch.Tensor) -> torch.Tensor:
    b, c = latents.shape
    if b < 2:
        return latents.new_zeros(())
    centered = latents - latents.mean(dim=0, keepdim=True)
    gram = centered @ centered.T if b < c else centered.T @ centered
    total = gram.square().sum() / (b - 1) ** 2
    diag = centered.square().sum(dim=0) / (b - 1)
    return (total - diag.square().sum()) / c


def reference_loss_terms(
    sae: FaithfulSAE,
    x: torch.Tensor,
    target: torch.Tensor,
    concepts: torch.Tensor,
    weight_t: torch.Tensor,
    params: TrialParams,
    weights: dict[str, float],
) -> dict[str, torch.Tensor]:
    pre = x @ sae.encoder
    sparse = reference_sparsify(sae, pre)
    recon = sparse @ sae.decoder
    zero = x.new_zeros(())
    out = {
        "recon": F.mse_loss(recon, target),
        "faithful": F.mse_loss(sae.encoder @ sae.decoder, weight_t),
        "rank": zero,
        "cond": zero,
        "sparsity": zero,
        "decorr": zero,
    }
    if weights["rank"]:
        out["rank"] = losses.schatten_rank(*sae.factors(), p=params.schatten_p)
    if weights["cond"] and concepts.shape[1]:
        out["cond"] = losses.conditioning(pre, concepts, sae.rank)
    if weights["sparsity"]:
        out["sparsity"] = losses.sparsity(pre)
    if weights["decorr"]:
        out["decorr"] = reference_decorrelation(sparse)
    return out


# ---- the benchmark --------------------------------------------------------------------


def make_problem(
    params: TrialParams, d_in: int, d_out: int, n_concepts: int, device: torch.device
) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(params.batch_size, d_in, generator=gen).relu()
    weight_t = torch.randn(d_in, d_out, generator=gen) / d_in**0.5
    concepts = F.one_hot(torch.randint(0, n_concepts, (params.batch_size,), generator=gen))
    return x.to(device), (x @ weight_t).to(device), concepts.float().to(device), weight_t.to(device)


StepTerms = Callable[..., dict[str, torch.Tensor]]


def make_step(
    step_terms: StepTerms,
    opt: torch.optim.Optimizer,
    sae: FaithfulSAE,
    params: TrialParams,
    problem: tuple[torch.Tensor, ...],
    weights: dict[str, float],
) -> Callable[[], dict[str, torch.Tensor]]:

    def step() -> dict[str, torch.Tensor]:
        terms = step_terms(sae, *problem, params, weights)
        total = sum(weights[k] * v for k, v in terms.items())
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        return terms

    return step


def timed(step: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave)")
    ap.add_argument("--n-components", type=int, default=1024)
    ap.add_argument("--top-k", type=int, default=32)
    ap.add_argument("--rank", type=int, default=1)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--d-in", type=int, default=128)
    ap.add_argument("--d-out", type=int, default=64)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    params = TrialParams(
        n_components=args.n_components,
        top_k=args.top_k,
        rank=args.rank,
        batch_size=args.batch,
        rank_weight=0.01,  # every loss on (the default leaves the rank term off)
    )
    weights = loss_weights(params, params.steps // 2)
    problem = make_problem(params, args.d_in, args.d_out, 2, device)
    torch.manual_seed(0)
    sae_old = FaithfulSAE(args.d_in, args.d_out, args.n_components, args.top_k, args.rank)
    sae_new = FaithfulSAE(args.d_in, args.d_out, args.n_components, args.top_k, args.rank)
    sae_new.load_state_dict(sae_old.state_dict())
    sae_old.to(device)
    sae_new.to(device)
    reference_opt = torch.optim.Adam(sae_old.parameters(), lr=params.lr)  # as it was
    old = make_step(reference_loss_terms, reference_opt, sae_old, params, problem, weights)
    new = make_step(loss_terms, optimizer(sae_new, params), sae_new, params, problem, weights)

    # Same parameters, same batch: the losses and gradients must agree up to rounding.
    t_old = reference_loss_terms(sae_old, *problem, params, weights)
    t_new = loss_terms(sae_new, *problem, params, weights)
    g_old = torch.autograd.grad(
        sum(weights[k] * v for k, v in t_old.items()), [*sae_old.parameters()]
    )
    g_new = torch.autograd.grad(
        sum(weights[k] * v for k, v in t_new.items()), [*sae_new.parameters()]
    )
    loss_diff = max(
        float((t_new[k] - t_old[k]).detach().abs() / t_old[k].detach().abs().clamp(min=1e-12))
        for k in t_old
    )
    grad_diff = max(float((a - b).norm() / b.norm()) for a, b in zip(g_new, g_old, strict=True))
    for _ in range(args.warmup):
        old()
        new()
    times: dict[str, list[float]] = {"old": [], "new": []}
    for i in range(args.repeats):
        order = (("old", old), ("new", new)) if i % 2 == 0 else (("new", new), ("old", old))
        for name, step in order:
            times[name].append(timed(step, device))
    med = {k: statistics.median(v) for k, v in times.items()}
    pair_ratio = statistics.median(a / b for a, b in zip(times["old"], times["new"], strict=True))
    print(
        f"device {device} · threads {torch.get_num_threads()} · C {args.n_components} · "
        f"k {args.top_k} · rank {args.rank} · batch {args.batch} · in {args.d_in} · "
        f"out {args.d_out} · {args.repeats} interleaved repeats"
    )
    print(
        f"new vs reference: largest relative loss difference {loss_diff:.1e}, "
        f"largest relative gradient difference {grad_diff:.1e}"
    )
    for k in ("old", "new"):
        print(
            f"{k:>4}: median {med[k] * 1e3:7.2f} ms/step ({1 / med[k]:6.1f} steps/s), "
            f"best {min(times[k]) * 1e3:7.2f} ms"
        )
    print(
        f"speed-up: {med['old'] / med['new']:.2f}x (ratio of medians), "
        f"{pair_ratio:.2f}x (median of the interleaved pairs' ratios)"
    )


if __name__ == "__main__":
    main()
