"""A tabular task with a spurious feature: the smallest complete `hpo.UserTask`.

Each row has `n_features` numbers. The label y (0 or 1) shifts `n_core` of them by a
little (a weak signal buried in noise); the spurious attribute s (0 or 1) shifts
`n_spurious` others by a lot (an easy signal). In the training split s equals y with
probability `bias`, so the MLP trained there leans on s; in probe, val and test s is
independent of y and every (y, s) group is equally large, so a model that reads s fails
the groups where s ≠ y. The Faithful-SAE decomposes the second hidden layer (`net.2`,
64 → 32, followed by a ReLU) and removes the components that carry s.

Run it with `hpo trial examples/spurious_tabular.toml`. Everything is built from the seed
in about a second on a CPU: no files, no downloads.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from hpo import Split, UserTask

LAYER = "net.2"  # the second Linear: 64 -> 32, feeds a ReLU
CONCEPT_NAMES = ("s=0", "s=1")
GROUP_NAMES = ("y=0,s=0", "y=0,s=1", "y=1,s=0", "y=1,s=1")  # group id = 2·y + s


class TabularMLP(nn.Module):
    """Features → 64 → 32 → 2 logits. Rebuild an exported model with the same n_features."""

    def __init__(self, n_features: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(n_features, 64),
            nn.ReLU(),
            nn.Linear(64, 32),
            nn.ReLU(),
            nn.Linear(32, 2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def make_task(
    seed: int = 0,
    *,
    bias: float = 0.97,
    n_features: int = 16,
    n_core: int = 8,
    n_spurious: int = 2,
    core_strength: float = 0.35,
    spurious_strength: float = 1.5,
    noise: float = 1.0,
    n_train: int = 4000,
    n_probe: int = 2000,
    n_val: int = 2000,
    n_test: int = 4000,
    epochs: int = 20,
) -> UserTask:
    """The task for `seed`: data drawn and the MLP trained from it alone (deterministic)."""
    _check_options(
        bias=bias,
        n_features=n_features,
        n_core=n_core,
        n_spurious=n_spurious,
        core_strength=core_strength,
        spurious_strength=spurious_strength,
        noise=noise,
        sizes={"n_train": n_train, "n_probe": n_probe, "n_val": n_val, "n_test": n_test},
        epochs=epochs,
    )
    gen = torch.Generator().manual_seed(seed)

    def draw(y: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        x = noise * torch.randn(len(y), n_features, generator=gen)
        x[:, :n_core] += core_strength * (2 * y[:, None] - 1)
        x[:, n_core : n_core + n_spurious] += spurious_strength * (2 * s[:, None] - 1)
        return x

    def biased(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, 2, (n,), generator=gen)
        flip = torch.rand(n, generator=gen) >= bias
        return y, torch.where(flip, 1 - y, y)

    def balanced(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.arange(n) % len(GROUP_NAMES)
        g = g[torch.randperm(n, generator=gen)]
        return g // 2, g % 2

    def split(y: torch.Tensor, s: torch.Tensor) -> Split:
        return Split(x=draw(y, s), y=y, groups=2 * y + s, concepts=s)

    train = split(*biased(n_train))
    probe, val, test = (split(*balanced(n)) for n in (n_probe, n_val, n_test))
    with torch.random.fork_rng(devices=[]), _one_thread():  # the caller's RNG is left alone
        torch.manual_seed(seed)
        model = TabularMLP(n_features)
        _train(model, train.x, train.y, epochs=epochs, gen=gen)
    return UserTask(
        model=model.eval(),
        layer=LAYER,
        probe=probe,
        val=val,
        test=test,
        group_names=GROUP_NAMES,
        concept_names=CONCEPT_NAMES,
    )


def _train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    gen: torch.Generator,
    batch_size: int = 500,
    lr: float = 5e-3,
) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=gen)
        for start in range(0, len(y), batch_size):
            idx = perm[start : start + batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


@contextmanager
def _one_thread() -> Iterator[None]:
    """Train on one thread, then restore the caller's count. Matmuls this small gain nothing
    from threads, and on a busy machine OpenMP's synchronisation made each backward pass
    20x slower with two threads than with one (2-core machine under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _check_options(
    *,
    bias: float,
    n_features: int,
    n_core: int,
    n_spurious: int,
    core_strength: float,
    spurious_strength: float,
    noise: float,
    sizes: dict[str, int],
    epochs: int,
) -> None:
    """A ValueError naming the option, its value and what is allowed."""
    if not 0.0 <= bias <= 1.0:
        raise ValueError(f"bias = {bias}: must be in [0, 1] (P(s = y) in the training split)")
    for name, value in (("n_core", n_core), ("n_spurious", n_spurious)):
        if value < 1:
            raise ValueError(f"{name} = {value}: must be at least 1")
    if n_core + n_spurious > n_features:
        raise ValueError(
            f"n_features = {n_features}: must be at least n_core + n_spurious "
            f"({n_core} + {n_spurious})"
        )
    for name, value in (("core_strength", core_strength), ("spurious_strength", spurious_strength)):
        if value <= 0:
            raise ValueError(f"{name} = {value}: must be > 0")
    if noise < 0:
        raise ValueError(f"noise = {noise}: must be >= 0")
    for name, value in sizes.items():
        if value < 2 * len(GROUP_NAMES):
            raise ValueError(
                f"{name} = {value}: must be at least {2 * len(GROUP_NAMES)} (two samples per group)"
            )
    if epochs < 1:
        raise ValueError(f"epochs = {epochs}: must be at least 1")
