"""What one torch thread costs the base model's training: before (on --threads) and now.

    HPO_DATA_DIR=... python bench/reproducible_threads.py [STUDY] [--threads 2]
        [--epochs 1] [--rounds 2]

`hpo.models.training.train_classifier` now trains in `reproducible_threads` (one torch
thread, whatever --threads is); `before` is the same loop on --threads threads, the
function as it was (`__wrapped__`, the loop without the section). Both train the study's
base model from the same seed on its own colored-MNIST `train` split, interleaved in one
process (before, now, now, before, ...) so that load from other processes hits them
alike. Prints seconds per run, the medians and their ratio, and whether the runs of each
kind gave bit-identical weights.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from hpo.models import training
from hpo.models.classifiers import BASE_MODELS
from hpo.service.study_file import load_study_file
from hpo.tasks.colored_mnist import load_splits


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("study", nargs="?", default="studies/colored_mnist_hard.toml")
    p.add_argument("--threads", type=int, default=2, help="torch threads of `before`")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()

    task = load_study_file(args.study).task
    splits, _ = load_splits(task, None, progress=False)
    images = torch.from_numpy(splits["train"].images)
    digits = torch.from_numpy(splits["train"].digits)
    torch.set_num_threads(args.threads)

    def run(train: Callable[..., torch.nn.Module]) -> tuple[float, bytes]:
        torch.manual_seed(task.seed)
        model = BASE_MODELS[task.base_model]()
        t0 = time.perf_counter()
        train(
            model, images, digits, epochs=args.epochs, lr=task.base_lr,
            batch_size=task.base_batch_size, seed=task.seed, desc="", progress=False,
        )  # fmt: skip
        seconds = time.perf_counter() - t0
        return seconds, b"".join(v.numpy().tobytes() for v in model.state_dict().values())

    kinds = {"before": training.train_classifier.__wrapped__, "now": training.train_classifier}
    seconds: dict[str, list[float]] = {k: [] for k in kinds}
    weights: dict[str, set[bytes]] = {k: set() for k in kinds}
    order = [k for _ in range(args.rounds) for k in ("before", "now", "now", "before")]
    for kind in order:
        s, w = run(kinds[kind])
        seconds[kind].append(s)
        weights[kind].add(w)
        print(f"{kind:6} {torch.get_num_threads()} threads outside, {s:6.2f} s", flush=True)
    med = {k: statistics.median(v) for k, v in seconds.items()}
    print(
        f"{task.base_model}, {args.epochs} epoch(s), {len(digits)} images: before "
        f"({args.threads} threads) {med['before']:.2f} s, now (1 thread) {med['now']:.2f} s, "
        f"now / before {med['now'] / med['before']:.2f}"
    )
    same = {k: len(v) == 1 for k, v in weights.items()}
    print(f"bit-identical runs: before {same['before']}, now {same['now']}; "
          f"now == before: {weights['now'] == weights['before']}")  # fmt: skip


if __name__ == "__main__":
    main()
