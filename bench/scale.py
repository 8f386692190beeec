"""How a trial scales with the decomposed layer's width and the sample count.

    python bench/scale.py steps  [--widths 128,256,512,1024,2048,4096] [--samples 4000]
                                 [--steps 30] [--rounds 3] [--threads 1]
    python bench/scale.py trials [--widths 512,2048,4096] [--samples 16000] [--steps 30]
                                 [--threads 2] [--ablate conditioned|fitted]
                                 [--pairs 4096x4000,4096x64000] [--budget-gib 24]

The task is a user task through the documented API (`hpo.UserTask`, `hpo.Split`, a
`[task] kind = "python"` factory: `make_task` below): an MLP features -> width -> width/2
-> 2 trained on synthetic data whose spurious feature agrees with the label in 95 % of the
training split; the decomposed layer is `net.2` (width -> width/2). Splits: probe n, val
and test n/4 each, train n/2. Trial parameters are TrialParams' defaults (C 1024, k 32,
batch 512) but for `steps`.

`steps`: one SAE training step, exact against sketched faithfulness loss, side by side
(rounds alternate the order; medians), with the extra peak memory of training, and what
`faithful_estimate = "auto"` picks. `trials`: one fresh process per (width, n), which
times each phase of a whole trial and reads the process's peak resident memory after
each (Linux VmHWM, reset between phases), and says what the biggest tensors hold; with
rows at enough (width, n) it fits the peak to 1, d, n·d and d² and names the widest layer
whose predicted peak fits `--budget-gib`.
Each prints a Markdown table ready to paste.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hpo import Split, UserTask

FACTORY = f"{Path(__file__).resolve()}:make_task"
LAYER = "net.2"
GROUP_NAMES = ("y=0,s=0", "y=0,s=1", "y=1,s=0", "y=1,s=1")


# ---- the user's side: a factory ----------------------------------------------------


class WideMLP(nn.Module):
    def __init__(self, n_features: int, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(n_features, width),
            nn.ReLU(),
            nn.Linear(width, width // 2),
            nn.ReLU(),
            nn.Linear(width // 2, 2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def make_task(
    seed: int = 0, *, width: int = 512, n: int = 4000, n_features: int = 64, epochs: int = 1
) -> UserTask:
    """y shifts 16 features a little, the spurious s shifts 4 others a lot."""
    gen = torch.Generator().manual_seed(seed)

    def split(size: int, bias: float | None) -> Split:
        if bias is None:  # balanced: every (y, s) group equally large
            g = (torch.arange(size) % 4)[torch.randperm(size, generator=gen)]
            y, s = g // 2, g % 2
        else:
            y = torch.randint(0, 2, (size,), generator=gen)
            s = torch.where(torch.rand(size, generator=gen) < bias, y, 1 - y)
        x = torch.randn(size, n_features, generator=gen)
        x[:, :16] += 0.3 * (2 * y[:, None] - 1)
        x[:, 16:20] += 1.5 * (2 * s[:, None] - 1)
        return Split(x=x, y=y, groups=2 * y + s, concepts=s)

    train = split(n // 2, 0.95)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = WideMLP(n_features, width)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(epochs):
            for idx in torch.randperm(len(train.y), generator=gen).split(256):
                loss = F.cross_entropy(model(train.x[idx]), train.y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    return UserTask(
        model=model.eval(),
        layer=LAYER,
        probe=split(n, None),
        val=split(n // 4, None),
        test=split(n // 4, None),
        group_names=GROUP_NAMES,
        concept_names=("s=0", "s=1"),
    )


# ---- measuring ---------------------------------------------------------------------


def reset_peak() -> None:
    """Linux: the peak resident set (VmHWM) restarts from the current one."""
    Path("/proc/self/clear_refs").write_text("5")


def rss_mib(field: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def study(width: int, n: int, params: dict[str, Any]) -> Any:
    from hpo.service.study_file import parse_study

    return parse_study(
        {
            "study": {"name": "scale"},
            "task": {"kind": "python", "factory": FACTORY, "options": {"width": width, "n": n}},
            "params": params,
        },
        "bench/scale.py",
    )


def mib(t: torch.Tensor | None) -> float:
    return 0.0 if t is None else t.numel() * t.element_size() / 2**20


# ---- `steps`: exact against sketched ----------------------------------------------


def step_table(args: argparse.Namespace) -> None:
    from hpo.sae.training import faithful_sketch_size, train_sae
    from hpo.service.trial import prepare_task
    from hpo.tasks.registry import get_task

    print(
        f"SAE step, C 1024, k 32, batch 512, sketch_size 64; {args.steps} steps x "
        f"{args.rounds} rounds (medians), torch threads {torch.get_num_threads()}\n"
    )
    print(
        "| layer | work exact / sketch | auto | exact s/step | sketch s/step | "
        "exact / sketch | peak MiB exact / sketch | of which training |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for width in args.widths:
        s = study(width, args.samples[0], {"steps": args.steps})
        ctx = prepare_task(s, data_dir=None, progress=False, device="cpu")
        data = get_task("python").sae_data(ctx, LAYER)
        d_in, d_out = data.weight_t.shape
        runs: dict[str, list[float]] = {"exact": [], "sketch": []}
        peaks: dict[str, float] = {}  # peak resident MiB over what was resident before
        totals: dict[str, float] = {}  # the process's peak resident MiB
        for est in runs:  # warm-up: first-call allocations
            train_sae(data, s.params.model_copy(update={"steps": 3, "faithful_estimate": est}))
        for r in range(args.rounds):
            for est in list(runs) if r % 2 == 0 else list(runs)[::-1]:
                before = rss_mib()
                reset_peak()
                p = s.params.model_copy(update={"faithful_estimate": est})
                runs[est].append(train_sae(data, p).seconds / args.steps)
                extra = rss_mib("VmHWM") - before
                peaks[est] = max(peaks.get(est, 0.0), extra)
                totals[est] = max(totals.get(est, 0.0), rss_mib("VmHWM"))
        med = {k: statistics.median(v) for k, v in runs.items()}
        ratio = statistics.median(a / b for a, b in zip(runs["exact"], runs["sketch"], strict=True))
        c, size = s.params.n_components, s.params.sketch_size
        work = d_in * c * d_out / (size * (d_in * d_out + c * (d_in + d_out)))
        auto = "sketch" if faithful_sketch_size(s.params, d_in, d_out) else "exact"
        print(
            f"| {d_in} -> {d_out} | {work:.2f} | {auto} | {med['exact']:.4f} | "
            f"{med['sketch']:.4f} | {ratio:.2f}x | {totals['exact']:.0f} / "
            f"{totals['sketch']:.0f} | {peaks['exact']:.0f} / {peaks['sketch']:.0f} |",
            flush=True,
        )


# ---- `trials`: a whole trial per phase, one process each ----------------------------


def one_trial(args: argparse.Namespace) -> dict[str, Any]:
    """One trial's phases in this process: seconds and peak resident MiB of each."""
    from hpo.sae.training import train_sae
    from hpo.service.trial import prepare_task
    from hpo.tasks.registry import get_task

    width, n = args.widths[0], args.samples[0]
    params: dict[str, Any] = {"steps": args.steps, "ablate": args.ablate, "fit_steps": 30}
    if args.estimate:
        params["faithful_estimate"] = args.estimate
    s = study(width, n, params)
    task = get_task("python")
    out: dict[str, Any] = {"width": width, "n": n, "base_mib": rss_mib()}
    phases: dict[str, tuple[float, float]] = {}

    def phase(name: str, fn: Any) -> Any:
        reset_peak()
        t0 = time.perf_counter()
        value = fn()
        phases[name] = (time.perf_counter() - t0, rss_mib("VmHWM"))
        return value

    ctx = phase("task (factory, bundle, load)", lambda: _prepare(prepare_task, s))
    data = task.sae_data(ctx, LAYER)
    trained = phase("SAE training", lambda: train_sae(data, s.params))
    saes = {LAYER: trained.sae}
    phase("scoring (removal, alpha sweep, errors)", lambda: _evaluate(task, ctx, saes, s.params))
    out["phases"] = phases
    c, d_in, d_out = s.params.n_components, *data.weight_t.shape
    out["held"] = {
        "cached splits (z, x, labels)": sum(
            mib(t) for sp in ctx.splits.values() for t in vars(sp).values()
        ),
        "probe inputs of later layers": sum(
            mib(t) for k, t in ctx.probe_inputs.items() if k != ctx.layer
        ),
        "SAE training state (params, grads, Adam)": 4 * 4 * (d_in + d_out) * c / 2**20,
        "E·D (exact loss, one in x out)": 4 * d_in * d_out / 2**20,
        "all components [C, in, out] (not formed)": 4 * c * d_in * d_out / 2**20,
    }
    out["training_s_per_step"] = trained.seconds / args.steps
    return out


def _prepare(prepare_task: Any, s: Any) -> Any:
    return prepare_task(s, data_dir=None, progress=False, device="cpu")


def _evaluate(task: Any, ctx: Any, saes: Any, params: Any) -> Any:
    with torch.no_grad():
        return task.evaluate(ctx, saes, params, with_test=True)


def trial_table(args: argparse.Namespace) -> None:
    rows = []
    grid = [(w, n) for w in args.widths for n in args.samples]
    if args.pairs:
        grid = [(int(w), int(n)) for w, n in (p.split("x") for p in args.pairs.split(","))]
    for width, n in grid:
        cmd = [
            sys.executable,
            __file__,
            "one-trial",
            f"--widths={width}",
            f"--samples={n}",
            f"--steps={args.steps}",
            f"--threads={args.threads}",
            f"--ablate={args.ablate}",
            *([f"--estimate={args.estimate}"] if args.estimate else []),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode:
            print(done.stderr[-2000:], file=sys.stderr)
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(
        f"Whole trial, {args.steps} SAE steps, ablate {args.ablate}, faithful_estimate "
        f"{args.estimate or 'auto'}, torch threads {args.threads}; one process per row; "
        "peak = resident MiB (VmHWM) during the phase\n"
    )
    names = list(rows[0]["phases"]) if rows else []
    print("| layer | n | " + " | ".join(f"{p}: s / peak MiB" for p in names) + " | s/step |")
    print("| --- | --- | " + " | ".join("---" for _ in names) + " | --- |")
    for r in rows:
        cells = " | ".join(f"{t:.1f} / {m:.0f}" for t, m in r["phases"].values())
        w = r["width"]
        print(f"| {w} -> {w // 2} | {r['n']} | {cells} | {r['training_s_per_step']:.3f} |")
    if len({(r["width"], r["n"]) for r in rows}) >= len(MEMORY_TERMS):
        print(memory_model_text(rows, args.budget_gib))
    if rows:
        print(f"\nWhere memory goes (MiB; Python + torch alone: {rows[0]['base_mib']:.0f})\n")
        print("| layer | n | " + " | ".join(rows[0]["held"]) + " |")
        print("| --- | --- | " + " | ".join("---" for _ in rows[0]["held"]) + " |")
        for r in rows:
            cells = " | ".join(f"{v:.0f}" for v in r["held"].values())
            print(f"| {r['width']} -> {r['width'] // 2} | {r['n']} | {cells} |")


# A trial's peak as a sum of what grows with the layer: a constant (Python, torch, the
# model's other layers), width d (the SAE's factors and Adam state at fixed C), n·d (the
# cached layer inputs of every split) and d² (LEACE's covariance and its eigenvectors).
MEMORY_TERMS = ("1", "d", "n·d", "d²")


def memory_features(d: int, n: int) -> list[float]:
    return [1.0, float(d), float(n * d), float(d * d)]


def memory_model_text(rows: list[dict[str, Any]], budget_gib: float) -> str:
    """Least squares of the peak (the largest phase) on MEMORY_TERMS over the measured
    rows, and the widest layer (d -> d/2) whose predicted peak fits `budget_gib`."""
    x = torch.tensor([memory_features(r["width"], r["n"]) for r in rows], dtype=torch.float64)
    peak = torch.tensor([max(m for _, m in r["phases"].values()) for r in rows]).double()
    scale = x.abs().amax(0).clamp(min=1.0)
    coef = torch.linalg.lstsq(x / scale, peak[:, None]).solution[:, 0] / scale
    fitted = x @ coef
    terms = " + ".join(f"{c:.3g}·{t}" for c, t in zip(coef.tolist(), MEMORY_TERMS, strict=True))
    misfit = float((fitted - peak).abs().max())
    lines = [f"\nPeak MiB ≈ {terms} (largest misfit {misfit:.0f} MiB over {len(rows)} rows)"]
    budget = budget_gib * 1024
    for n in sorted({r["n"] for r in rows}):
        d = 128
        while (
            d < 2**20 and float(torch.tensor(memory_features(2 * d, n)).double() @ coef) <= budget
        ):
            d *= 2
        lines.append(f"- n = {n}: widest power of two under {budget_gib:g} GiB: {d} -> {d // 2}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["steps", "trials", "one-trial"])
    ap.add_argument("--widths", default=None, help="comma-separated layer input widths")
    ap.add_argument("--samples", default=None, help="comma-separated probe sizes n")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ablate", default="conditioned", choices=["conditioned", "fitted"])
    ap.add_argument("--estimate", default=None, choices=["exact", "sketch"])
    ap.add_argument("--budget-gib", type=float, default=24.0, help="memory for the largest layer")
    ap.add_argument(
        "--pairs", default=None, help="trials: comma-separated WIDTHxN instead of the grid"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    default_widths = "512,2048,4096" if args.what != "steps" else "128,256,512,1024,2048,4096"
    args.widths = [int(w) for w in (args.widths or default_widths).split(",")]
    default_samples = "4000" if args.what == "steps" else "16000"
    args.samples = [int(n) for n in (args.samples or default_samples).split(",")]
    if args.what == "steps":
        args.samples = args.samples[:1]
        step_table(args)
    elif args.what == "trials":
        trial_table(args)
    else:
        print(json.dumps(one_trial(args)))


if __name__ == "__main__":
    main()
