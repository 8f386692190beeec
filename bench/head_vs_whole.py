"""One fit step and one α's scoring of a user task: from the cut (the head) vs the whole
exported model on the raw inputs, side by side (issue 24, item 1).

A fit step is a forward and backward pass on probe with the layer's weight replaced; an
α is a forward pass on val. The head runs from the bundle's cached values; the whole
model from the task's inputs (the factory is called again for them). Both must give the
same logits. Medians of `--repeats`, one process, one torch thread:

    .venv/bin/python bench/head_vs_whole.py examples/spurious_gpt2.toml --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch.func import functional_call

from hpo.models.head import logits_of
from hpo.service.study_file import load_study_file
from hpo.service.trial import prepare_task
from hpo.tasks.python_factory import call_factory


def timed(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("study")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    study = load_study_file(args.study)
    ctx = prepare_task(study, data_dir=None, progress=False, device="cpu")
    assert ctx.head is not None, "this task has no head: it is scored whole"
    task = call_factory(study.task)
    key = f"{ctx.layer}.weight"
    weight = ctx.model.state_dict()[key].clone().requires_grad_(True)

    def head(split: str) -> torch.Tensor:
        return ctx.head(ctx.splits[split].values(), {key: weight})

    def whole(split: str) -> torch.Tensor:
        x = getattr(task, split).x
        return logits_of(functional_call(ctx.model, {key: weight}, (x,)))

    with torch.no_grad():
        gap = float((head("val") - whole("val")).abs().max())
    rows = {}
    for name, run in (("head", head), ("whole model", whole)):
        rows[name] = (
            timed(lambda run=run: run("probe").logsumexp(-1).sum().backward(), args.repeats),
            timed(lambda run=run: torch.no_grad()(run)("val"), args.repeats),
        )
    print(f"| {args.study}: {ctx.layer} ({ctx.head.source}) | fit step (probe) | one α (val) |")
    print("| --- | --- | --- |")
    for name, (fit, alpha) in rows.items():
        print(f"| {name} | {1000 * fit:.0f} ms | {1000 * alpha:.0f} ms |")
    (hf, ha), (wf, wa) = rows["head"], rows["whole model"]
    print(f"| whole / head | {wf / hf:.2f}x | {wa / ha:.2f}x |")
    print(f"max |logit difference| head vs whole model on val: {gap:.2e}")


if __name__ == "__main__":
    main()
