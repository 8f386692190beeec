"""Scoring an α sweep: cached layer inputs (this project) vs re-running the CNN per α (seed).

Both paths score the same edited weights on the same `val` split and must agree exactly;
the reference re-runs the whole CNN on the images for every α, as the seed's run.py does
(it is given batches of 256 and vectorised accuracy, which is kinder than the seed's
per-sample loop). Interleaved repeats, medians, one process:

    HPO_DATA_DIR=../shared/data/mnist python bench/scoring.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from hpo.data.colored_mnist import build_splits, make_groups
from hpo.data.mnist import load_mnist
from hpo.debias import ablation, scoring
from hpo.debias.edit import alpha as alphas
from hpo.models.training import images_to_float
from hpo.params import TrialParams
from hpo.sae.model import FaithfulSAE
from hpo.service.study_file import load_study_file
from hpo.service.trial import prepare_task


def reference_sweep(model, images, digits, group_ids, names, layer, ablated_t, alphas):
    """The seed's way: a fresh edited copy of the model per α, the CNN run on every image."""
    out = []
    for alpha in alphas:
        edited = copy.deepcopy(model)
        with torch.no_grad():
            w = getattr(edited, layer).weight
            w.copy_(ablation.debiased_weight(w, ablated_t, alpha))
            preds = torch.cat(
                [
                    edited(images_to_float(images[i : i + 256])).argmax(1)
                    for i in range(0, len(images), 256)
                ]
            )
        out.append(scoring.group_metrics(preds == digits, group_ids, names))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--study", default="studies/colored_mnist.toml")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    study = load_study_file(args.study)
    ctx = prepare_task(study, data_dir=None, progress=False, device="cpu")
    mnist = load_mnist(None, progress=False)
    splits = build_splits(
        study.task, mnist.train_images, mnist.train_labels, mnist.test_images, mnist.test_labels
    )
    val = splits["val"]
    images = torch.from_numpy(val.images)
    digits = torch.from_numpy(val.digits)
    groups = make_groups(study.task)
    gids = torch.from_numpy(groups.ids(val.digits, val.colors))
    params = TrialParams()
    torch.manual_seed(0)
    sae = FaithfulSAE(128, 64, params.n_components, params.top_k)
    ablated_t = ablation.ablated_sum(sae, [0, 1]).detach()
    grid = alphas.alpha_grid(params.alpha_max, params.alpha_steps)
    weight = ctx.model.get_submodule(ctx.layer).weight.detach()
    ours_t, ref_t = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        ours = [
            ctx.scorer.metrics(
                "val", {f"{ctx.layer}.weight": ablation.debiased_weight(weight, ablated_t, a)}
            )
            for a in grid
        ]
        ours_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ref = reference_sweep(
            ctx.model, images, digits, gids, groups.names, ctx.layer, ablated_t, grid
        )
        ref_t.append(time.perf_counter() - t0)
    agree = all(a.groups == b.groups for a, b in zip(ours, ref, strict=True))
    mo, mr = statistics.median(ours_t), statistics.median(ref_t)
    print(
        f"| scoring {len(grid)} alphas on val ({len(digits)} images) | median of "
        f"{args.repeats} | torch threads {torch.get_num_threads()} |"
    )
    print("| --- | --- | --- |")
    print(f"| cached layer inputs (ours) | {1000 * mo:.1f} ms | |")
    print(f"| CNN re-run per alpha (seed) | {1000 * mr:.1f} ms | |")
    print(f"| ratio | {mr / mo:.0f}x | identical metrics: {agree} |")


if __name__ == "__main__":
    main()
