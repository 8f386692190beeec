"""Where tensors live: "auto" means CUDA when present, else the CPU; and which GPU each
local worker gets.

`hpo launch` spreads its workers over the GPUs (worker i on GPU i mod G, or over the ones
`--gpus` names) by passing each one `--gpu K`; the worker then works on `cuda:K`, with
the indices as CUDA numbers them in the launcher (CUDA_VISIBLE_DEVICES, if set, reaches
the workers unchanged). The device is named, not hidden by a CUDA_VISIBLE_DEVICES per
worker, so that a trial records the GPU it really ran on ("cuda:1", not every worker's
"cuda:0") and an explicit `params.device = "cuda:1"` still means the same GPU. A study
file's explicit device wins only when no flag is given: a flag that disagrees with it is
an error, never silently overruled.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hpo.errors import UserError

CPU_FLAG = "none"  # --gpus none / --gpu none: the CPU


def visible_gpus() -> int:
    """CUDA devices this process can use (0 without CUDA)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(
            f"params.device: {name!r} is not a device; valid: auto, cpu, cuda, cuda:N"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"params.device: {name!r} requested but CUDA is not available; use auto or cpu"
        )
    if device.type == "cuda" and device.index is not None and device.index >= visible_gpus():
        raise UserError(
            f"params.device: {name!r} is not a visible GPU; valid: auto, cpu, "
            f"{_valid(visible_gpus(), 'cuda:')}"
        )
    return device


def _valid(visible: int, prefix: str = "") -> str:
    return f"{prefix}0" if visible == 1 else f"{prefix}0 to {prefix}{visible - 1}"


def parse_gpus(text: str, visible: int) -> tuple[int, ...]:
    """`--gpus`: "none" (the CPU: no GPU), or CUDA indices joined by commas ("0,2")."""
    if text.strip() == CPU_FLAG:
        return ()
    if visible == 0:
        raise UserError(f"--gpus {text}: no CUDA device is visible here; valid: {CPU_FLAG}")
    valid = f"valid: {CPU_FLAG} or " + (
        "0" if visible == 1 else f"indices from {_valid(visible)} joined by commas, e.g. 0,1"
    )
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isdigit() for p in parts):
        raise UserError(f"--gpus {text}: not a list of GPU indices; {valid}")
    gpus = tuple(int(p) for p in parts)
    if any(g >= visible for g in gpus):
        raise UserError(f"--gpus {text}: {visible} CUDA device(s) visible; {valid}")
    if len(set(gpus)) != len(gpus):
        raise UserError(f"--gpus {text}: names a GPU twice; {valid}")
    return gpus


def parse_gpu(text: str, visible: int) -> str:
    """`hpo worker --gpu`: a CUDA index, or "none" for the CPU; the device it names."""
    if text.strip() == CPU_FLAG:
        return "cpu"
    if visible == 0:
        raise UserError(f"--gpu {text}: no CUDA device is visible here; valid: {CPU_FLAG}")
    if not text.strip().isdigit() or int(text) >= visible:
        raise UserError(f"--gpu {text}: not a visible GPU; valid: {CPU_FLAG} or {_valid(visible)}")
    return f"cuda:{int(text)}"


def assign_gpus(workers: int, gpus: Sequence[int]) -> list[int | None]:
    """The GPU of each of `workers` local workers: round robin over `gpus` (worker i on
    gpus[i mod len]), or None (the CPU) for all when there are none."""
    if not gpus:
        return [None] * workers
    return [gpus[i % len(gpus)] for i in range(workers)]


def launch_flags(
    configured: str, workers: int, gpus: Sequence[int] | None, visible: int
) -> list[str | None]:
    """What `hpo launch` tells each local worker, as the device its `--gpu` names
    ("cuda:K", "cpu"), or None: no flag, the study's own device. `gpus` None (no
    `--gpus`): every visible GPU when the study's device is "auto". One entry per worker,
    and at least one: the first is also where the launcher builds the base model."""
    if gpus is None:
        if configured != "auto" or visible == 0:
            return [None] * max(workers, 1)
        gpus = range(visible)
    flags: list[str | None] = [
        "cpu" if g is None else f"cuda:{g}" for g in assign_gpus(max(workers, 1), tuple(gpus))
    ]
    for flag in flags:
        worker_device(configured, flag, "--gpus")
    return flags


def gpu_arg(device: str) -> str:
    """The `--gpu` value that names `device` ("cuda:K" -> "K", "cpu" -> "none")."""
    return CPU_FLAG if device == "cpu" else device.removeprefix("cuda:")


def worker_device(configured: str, flag: str | None, flag_name: str = "--gpu") -> str:
    """The device a worker uses: the one its flag names ("cuda:K" or "cpu"; None: no
    flag) when the study's `params.device` is "auto" or the same device, the study's
    otherwise; a flag that contradicts an explicit study device is an error."""
    if flag is None or configured == flag:
        return configured
    if configured == "auto":
        return flag
    raise UserError(
        f"{flag_name}: the study sets params.device = {configured!r}, but {flag_name} "
        f'puts a worker on {flag}; set params.device to "auto" to place workers by '
        f"{flag_name}, or drop {flag_name}"
    )


def available_bytes(device: torch.device) -> int | None:
    """Memory a new allocation can use on `device` (None when unknown): free GPU memory,
    or on the CPU the kernel's MemAvailable, capped by a cgroup memory limit."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type != "cpu":
        return None
    found: list[int] = []
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:  # cgroup v2: limit minus usage
        with open("/sys/fs/cgroup/memory.max") as fh:
            limit = fh.read().strip()
        with open("/sys/fs/cgroup/memory.current") as fh:
            used = int(fh.read().strip())
        if limit != "max":
            found.append(max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"
