"""Peak memory of building a task's bundle from data given as tensors against the same
data streamed from a Dataset (hpo.tasks.streaming).

    python bench/streamed_memory.py [--n 16000] [--cap 2000] [--threads 1]

One fresh process per variant. Each builds the bundle of the same user task: an MLP
with the built-in head protocol (hpo.models.classifiers.ColorMnistMLP, layer fc1, random
weights: memory does not depend on them) over probe, val and test splits of `--n`
colour images each (3 × 28 × 28 float32, 9.2 KiB a sample), every sample generated from
its index alone, so both forms hold the very same data. "tensors" makes the three splits
as tensors first (what a UserTask of `Split`s is), then caches them; "stream" hands the
same samples over as a Dataset, read 256 at a time. With `--cap`, each split keeps at
most that many samples (`UserTask.max_rows`). Each process reports its resident memory
after the imports (baseline), its peak (Linux VmHWM) and the build's seconds; the table
gives the peak above the baseline. The cached layer inputs, labels and reference scores
are then compared across variants: they must be equal.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

VARIANTS = (("tensors", None), ("stream", None), ("tensors", "cap"), ("stream", "cap"))


def rss_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def one(args: argparse.Namespace) -> None:
    import torch
    from torch.utils.data import Dataset

    from hpo.data.cache import load_tensors
    from hpo.models.classifiers import ColorMnistMLP
    from hpo.tasks import bundle
    from hpo.tasks.user import Split, UserTask

    torch.set_num_threads(args.threads)
    baseline = rss_mib("VmRSS")

    def sample(i: int, salt: int) -> tuple[torch.Tensor, int, int]:
        g = torch.Generator().manual_seed(1_000_003 * salt + i)
        y, s = i % 10, (i // 10) % 2
        x = torch.rand(3, 28, 28, generator=g)
        x[s] += 0.5  # the colour channel carries the concept
        return x, y, 2 * (y >= 5) + s

    class Generated(Dataset):
        def __init__(self, n: int, salt: int) -> None:
            self.n, self.salt = n, salt

        def __len__(self) -> int:
            return self.n

        def __getitem__(self, i: int) -> dict[str, Any]:
            x, y, g = sample(i, self.salt)
            return {"inputs": x, "y": y, "groups": g, "concepts": g % 2}

    def as_tensors(n: int, salt: int) -> Split:
        xs, ys, gs = zip(*(sample(i, salt) for i in range(n)), strict=True)
        g = torch.tensor(gs)
        return Split(torch.stack(xs), torch.tensor(ys), g, g % 2)

    t0 = time.perf_counter()
    make = as_tensors if args.form == "tensors" else Generated
    splits = {name: make(args.n, salt) for salt, name in enumerate(("probe", "val", "test"))}
    torch.manual_seed(0)
    model = ColorMnistMLP().eval()
    task = UserTask(
        model=model,
        layer="fc1",
        **splits,
        group_names=("0-4/red", "0-4/green", "5-9/red", "5-9/green"),
        concept_names=("red", "green"),
        max_rows=args.cap,
    )
    path = Path(args.bundle)
    bundle.write_bundle(
        path,
        task,
        references=("last_layer", "leace"),
        oracle=None,
        seed=0,
        meta={"key": "bench", "data_sha256": "bench"},
        model_payload={"state": model.state_dict()},
        device=torch.device("cpu"),
    )
    seconds = time.perf_counter() - t0
    stored = load_tensors(path)
    print(
        json.dumps(
            {
                "baseline_mib": baseline,
                "peak_mib": rss_mib("VmHWM"),
                "seconds": seconds,
                "rows": {k: len(v["y"]) for k, v in stored["splits"].items()},
                "bundle_mib": path.stat().st_size / 2**20,
                "references": stored["references"],
                "z_sum": float(stored["splits"]["probe"]["z"].double().sum()),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16000, help="samples per split")
    parser.add_argument("--cap", type=int, default=2000, help="max_rows for the capped runs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--one", choices=["tensors", "stream"], help=argparse.SUPPRESS)
    parser.add_argument("--bundle", help=argparse.SUPPRESS)
    parser.add_argument("--one-cap", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        args.form, args.cap = args.one, args.one_cap
        one(args)
        return
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for form, cap in VARIANTS:
            argv = [sys.executable, __file__, "--one", form, "--n", str(args.n)]
            argv += ["--threads", str(args.threads), "--bundle", f"{tmp}/{form}-{cap}.pt"]
            argv += ["--one-cap", str(args.cap)] if cap else []
            out = subprocess.run(argv, capture_output=True, text=True, check=True)
            results[form, cap] = json.loads(out.stdout.strip().splitlines()[-1])
    sample_mib = 3 * 28 * 28 * 4 / 2**20
    print(f"{args.n} samples per split (3 × 28 × 28 float32: {3 * args.n * sample_mib:.0f} MiB")
    print("in all), one torch thread per process; peak = VmHWM − RSS after imports\n")
    print("| data | max_rows | rows cached per split | peak above baseline | bundle | seconds |")
    print("| --- | --- | --- | --- | --- | --- |")
    for (form, cap), r in results.items():
        rows = r["rows"]["probe"]
        print(
            f"| {form} | {args.cap if cap else 'none'} | {rows} | "
            f"{r['peak_mib'] - r['baseline_mib']:.0f} MiB | {r['bundle_mib']:.1f} MiB | "
            f"{r['seconds']:.1f} |"
        )
    for cap in (None, "cap"):
        a, b = results["tensors", cap], results["stream", cap]
        same = a["references"] == b["references"] and abs(a["z_sum"] - b["z_sum"]) < 1e-3
        print(f"\n{'capped' if cap else 'uncapped'}: same cached rows and references: {same}")


if __name__ == "__main__":
    main()
