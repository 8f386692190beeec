"""Peak memory and time of LEACE's eraser at a wide layer: concept-erasure's dense
`fitter.eraser` ("dense") against hpo.debias.leace's thin factors ("thin").

    python bench/leace_memory.py [--width 4096] [--rows 16000] [--out 2048]
                                 [--concepts 2] [--threads 1]

One fresh process per variant, as `Leace.fit` does it: float32 probe rows whose mean
moves with the concept, float64 statistics accumulated LEACE_ROWS rows at a time, then
the eraser and its fold into an out × width weight (W·L·R and W·L·R·μ). Each process
reports its peak resident memory (Linux VmHWM) over its whole life, its resident memory
before the eraser, the peak during the eraser and fold (VmHWM reset just before them)
and their seconds; the two folds are compared at the end. A third process computes only
`fitter.sigma_xx` (the covariance with the library's shrinkage, which the dense eraser
reads and which `hpo.debias.leace.shrunk_covariance` computes in one matrix instead).
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

VARIANTS = ("dense", "thin", "sigma_xx")


def rss_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def one(args: argparse.Namespace) -> None:
    """The child: fit, erase and fold with one variant; print its numbers as JSON."""
    import torch
    from concept_erasure import LeaceFitter

    from hpo.debias.references.erasure import LEACE_ROWS

    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, args.concepts, (args.rows,), generator=g)
    x = torch.randn(args.rows, args.width, generator=g)
    x += torch.randn(args.concepts, args.width, generator=g)[labels]
    concepts = torch.nn.functional.one_hot(labels, args.concepts).double()
    weight = torch.randn(args.out, args.width, generator=g) / args.width**0.5

    fitter = LeaceFitter(args.width, args.concepts, dtype=torch.float64)
    for part, z in zip(x.split(LEACE_ROWS), concepts.split(LEACE_ROWS), strict=True):
        fitter.update(part.double(), z)
    before, fitting_peak = rss_mib("VmRSS"), rss_mib("VmHWM")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM restarts from VmRSS
    start = time.perf_counter()
    fold = erase(args.variant, fitter, weight.double())
    seconds = time.perf_counter() - start
    eraser_peak = rss_mib("VmHWM")
    if "erased" in fold:
        torch.save(fold, args.save)
    numbers = {
        "variant": args.variant,
        "process_peak_mib": max(fitting_peak, eraser_peak),
        "before_mib": before,
        "eraser_peak_mib": eraser_peak,
        "seconds": seconds,
        "rank": fold["rank"],
    }
    print(json.dumps(numbers))


def erase(variant: str, fitter: Any, weight: Any) -> dict[str, Any]:
    """W·L·R and W·L·R·μ from the variant's eraser (as `Leace.fit` folds them); for
    "sigma_xx", only the library's shrunk covariance, which both erasers read."""
    from hpo.debias.leace import leace_eraser

    if variant == "sigma_xx":
        return {"rank": None, "trace": float(fitter.sigma_xx.trace())}
    if variant == "dense":
        eraser = fitter.eraser
        left, right, bias = eraser.proj_left, eraser.proj_right, eraser.bias
    else:
        thin = leace_eraser(fitter)
        left, right, bias = thin.left, thin.right, thin.bias
    erased = weight @ left @ right
    return {"erased": erased, "shift": erased @ bias, "rank": left.shape[1]}


def table(args: argparse.Namespace) -> None:
    import torch

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for variant in VARIANTS:
            save = f"{tmp}/{variant}.pt"
            cmd = [sys.executable, __file__, "--variant", variant, "--save", save]
            cmd += [f"--{k}={getattr(args, k)}" for k in ("width", "rows", "out", "concepts")]
            cmd += [f"--threads={args.threads}"]
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
            done = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        dense, thin = (torch.load(f"{tmp}/{v}.pt", weights_only=True) for v in VARIANTS[:2])
    diffs = {k: float((thin[k] - dense[k]).norm() / dense[k].norm()) for k in ("erased", "shift")}
    print(
        f"LEACE at {args.width} → {args.out}, {args.rows} rows, {args.concepts} concepts, "
        f"{args.threads} torch thread(s); one process per variant; MiB resident (VmHWM)\n"
    )
    print("| eraser | process peak | before the eraser | eraser + fold peak | its extra | s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        extra = r["eraser_peak_mib"] - r["before_mib"]
        name = (
            "`fitter.sigma_xx` alone" if r["rank"] is None else f"{r['variant']} (rank {r['rank']})"
        )
        print(
            f"| {name} | {r['process_peak_mib']:.0f} | "
            f"{r['before_mib']:.0f} | {r['eraser_peak_mib']:.0f} | {extra:.0f} | "
            f"{r['seconds']:.1f} |"
        )
    print("\nthin against dense, relative: " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=4096)
    ap.add_argument("--rows", type=int, default=16000)
    ap.add_argument("--out", type=int, default=2048)
    ap.add_argument("--concepts", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--variant", choices=VARIANTS, default=None, help="(the child's)")
    ap.add_argument("--save", default=None, help="(the child's) where its fold goes")
    args = ap.parse_args()
    if args.variant is None:
        table(args)
    else:
        one(args)


if __name__ == "__main__":
    main()
