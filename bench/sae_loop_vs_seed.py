"""SAE training: this project's trainer against a loop written the way the seed's is.

    HPO_DATA_DIR=../shared/data/mnist python bench/sae_loop_vs_seed.py [--steps 300] [--rounds 5]

Same data (the colored-MNIST probe split's `fc1` inputs from the cached base model of
`studies/colored_mnist.toml`), same configuration (C = 1024, k = 32, batch 512, every loss
of the seed's configuration on), same number of steps. The seed-style reference:

- a torch `Dataset` whose `__getitem__` returns one sample as a tuple
  (layer input, pre-activation, colour name), a `DataLoader` with batch 512 that collates
  them per batch;
- the colour targets built in the loop from the colour strings;
- dense top-k latents (a B × C tensor), dense decode, the pre-activations computed a
  second time for conditioning, the C × C covariance for decorrelation, every loss read
  back with `.item()` each step, plain Adam.

This reference is our reconstruction of the seed's style (its `color_debiasing` training
loop), not the seed's code. Ours is `hpo.sae.training.train_sae`: the data on the device
as tensors, a batch is an index slice, top-k kept compact (see `hpo.sae.model.FaithfulSAE.decode`,
`hpo.sae.losses.decorrelation_topk`), fused Adam. Rounds alternate the order; each figure
is a median over rounds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sae_step import reference_sparsify  # noqa: E402  (the dense top-k)

from hpo.config import TrialParams  # noqa: E402
from hpo.sae.model import FaithfulSAE  # noqa: E402
from hpo.sae.objective import loss_weights  # noqa: E402
from hpo.sae.training import SAEData, train_sae  # noqa: E402
from hpo.service.study_file import load_study_file  # noqa: E402
from hpo.service.trial import prepare_task  # noqa: E402
from hpo.tasks.registry import get_task  # noqa: E402

STUDY = Path(__file__).resolve().parents[1] / "studies" / "colored_mnist.toml"
COLOUR_NAMES = ("red", "green")


class SeedStyleActivations(Dataset):
    """One sample at a time, colour as a string: how the seed's activation dataset hands
    over (fc1 input, fc2 target, digit, colour name)."""

    def __init__(self, data: SAEData) -> None:
        self.inputs = data.inputs
        self.targets = data.targets
        self.colours = [COLOUR_NAMES[int(i)] for i in data.concepts.argmax(dim=1)]

    def __len__(self) -> int:
        return len(self.colours)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int, str]:
        return self.inputs[i], self.targets[i], 0, self.colours[i]


def seed_style_training(data: SAEData, params: TrialParams, steps: int) -> float:
    """`steps` steps of a loop written the way the seed's `train_cnn_sae_with_color_and_decorr`
    is: DataLoader batches, colour targets from strings, the dense top-k forward, the
    pre-activations computed again for conditioning, the C x C latent covariance for the
    decorrelation loss, each loss read back with .item() for the log (the progress bar is
    off, as in ours). The losses and their weights are this project's (`loss_weights`).
    Returns seconds."""
    torch.manual_seed(params.seed)
    d_in, d_out = data.weight_t.shape
    sae = FaithfulSAE(d_in, d_out, params.n_components, params.top_k, params.rank)
    opt = torch.optim.Adam(sae.parameters(), lr=params.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    loader = DataLoader(
        SeedStyleActivations(data), batch_size=params.batch_size, shuffle=True, drop_last=True
    )
    log: dict[str, list[float]] = defaultdict(list)
    bar = tqdm(total=steps, disable=True)
    start = time.perf_counter()
    step = 0
    while step < steps:
        for x, target, _, colour_strings in loader:
            if step >= steps:
                break
            red = torch.tensor([1.0 if c == "red" else 0.0 for c in colour_strings])
            green = torch.tensor([1.0 if c == "green" else 0.0 for c in colour_strings])
            w = loss_weights(params, step)
            sparse = reference_sparsify(sae, x @ sae.encoder)
            out = sparse @ sae.decoder
            recon = F.mse_loss(out, target)
            faithful = F.mse_loss(sae.encoder @ sae.decoder, data.weight_t)
            pre = x @ sae.encoder
            sparsity = pre.abs().mean()
            cond = (
                F.binary_cross_entropy_with_logits(pre[:, 0], red)
                + F.binary_cross_entropy_with_logits(pre[:, 1], green)
            ) / 2
            centered = sparse - sparse.mean(dim=0, keepdim=True)
            cov = (centered.T @ centered) / (len(centered) - 1)
            decorr = (cov - torch.diag(cov.diag())).pow(2).sum() / sparse.shape[1]
            loss = (
                w["recon"] * recon
                + w["faithful"] * faithful
                + w["cond"] * cond
                + w["sparsity"] * sparsity
                + w["decorr"] * decorr
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            for k, v in {
                "recon": recon,
                "faithful": faithful,
                "cond": cond,
                "sparsity": sparsity,
                "decorr": decorr,
            }.items():
                log[k].append(v.item())
            bar.update(1)
            step += 1
    return time.perf_counter() - start


def ours(data: SAEData, params: TrialParams, steps: int) -> float:
    return train_sae(data, params.model_copy(update={"steps": steps})).seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300, help="SAE steps per timed run")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave)")
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    study = load_study_file(STUDY, [])
    ctx = prepare_task(study, data_dir=args.data_dir, progress=True, device="cpu")
    data = get_task("colored_mnist").sae_data(ctx, ctx.layer)
    params = study.params
    assert params.batch_size == 512 and params.n_components == 1024 and params.top_k == 32
    runs: dict[str, list[float]] = {"seed-style": [], "ours": []}
    ours(data, params, 20)  # warm-up: first-call allocations, kernel selection
    seed_style_training(data, params, 20)
    for r in range(args.rounds):
        order = [("seed-style", seed_style_training), ("ours", ours)]
        for name, fn in order if r % 2 == 0 else order[::-1]:
            runs[name].append(fn(data, params, args.steps))
    med = {k: statistics.median(v) for k, v in runs.items()}
    ratio = statistics.median(a / b for a, b in zip(runs["seed-style"], runs["ours"], strict=True))
    print(
        f"probe split {tuple(data.inputs.shape)} -> {data.targets.shape[1]}, C "
        f"{params.n_components}, k {params.top_k}, batch {params.batch_size}, weights: "
        f"{ {k: v for k, v in loss_weights(params, args.steps).items() if v} }; "
        f"{args.steps} steps x {args.rounds} rounds, torch threads {torch.get_num_threads()}"
    )
    print("\n| loop | median s / run | steps / s |")
    print("| --- | --- | --- |")
    for k, v in med.items():
        print(f"| {k} | {v:.2f} | {args.steps / v:.0f} |")
    print(f"| **ratio (median of per-round ratios)** | **{ratio:.2f}×** | |")


if __name__ == "__main__":
    main()
