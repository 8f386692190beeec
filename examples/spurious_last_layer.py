"""Three classes, three recording sites: a user task whose decomposed layer is the last one.

Each sample is a short recording, `n_sensors` × `n_steps` readings. The class y shifts
the first `n_sensors - 1` sensors by a weak class pattern; the site s where it was
recorded shifts the last sensor by a strong site signature (think of a calibration
offset). In the training split most samples of class k come from site k (probability
`bias`, otherwise one of the other sites), so the network learns the site; in probe, val
and test every (class, site) pair is equally common. There are n_classes² groups.

Unlike `spurious_tabular`, the model is nested (`trunk`, a Sequential, then `head`),
normalises its input with stored buffers, takes 3-d input, and the layer decomposed is
`head`: the last layer, with nothing after it. The concept (site) has three values.

Run it with `hpo trial examples/spurious_last_layer.toml`. Built from the seed alone in
about a second on a CPU: no files, no downloads.
"""

from __future__ import annotations

import string
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from hpo import Split, UserTask

LAYER = "head"  # Linear(32, n_classes): the model's output layer


class PerSensorLinear(nn.Module):
    """One small Linear per sensor: [N, sensors, d_in] → [N, sensors, d_out].

    A plain custom module: only the decomposed layer has to be an `nn.Linear`.
    """

    def __init__(self, n_sensors: int, d_in: int, d_out: int) -> None:
        super().__init__()
        bound = d_in**-0.5  # nn.Linear's default init range
        self.weight = nn.Parameter(torch.empty(n_sensors, d_in, d_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n_sensors, d_out).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nsi,sio->nso", x, self.weight) + self.bias


class SensorNet(nn.Module):
    """Standardise; encode each sensor on its own (`trunk`); `head` reads all encodings.

    The trunk is a two-layer MLP per sensor over its time steps, so the head's input holds
    each sensor's features in its own `width` coordinates. Rebuild an exported model with
    the same n_sensors, n_steps and n_classes; `mean` and `std` are buffers, so they
    travel in the state dict.
    """

    def __init__(
        self, n_sensors: int = 4, n_steps: int = 8, n_classes: int = 3, width: int = 8
    ) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_sensors, n_steps))
        self.register_buffer("std", torch.ones(n_sensors, n_steps))
        self.trunk = nn.Sequential(
            PerSensorLinear(n_sensors, n_steps, width),
            nn.ReLU(),
            PerSensorLinear(n_sensors, width, width),
            nn.ReLU(),
            nn.Flatten(),
        )
        self.head = nn.Linear(n_sensors * width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk((x - self.mean) / self.std))


def names(n_classes: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(group names, concept names): group id = n_classes·y + s, site s is a letter."""
    sites = string.ascii_uppercase[:n_classes]
    groups = tuple(f"y={y},site={s}" for y in range(n_classes) for s in sites)
    return groups, tuple(f"site {s}" for s in sites)


def make_task(
    seed: int = 0,
    *,
    bias: float = 0.95,
    n_classes: int = 3,
    n_sensors: int = 4,
    n_steps: int = 8,
    core_strength: float = 0.3,
    spurious_strength: float = 1.0,
    noise: float = 1.0,
    n_train: int = 4500,
    n_probe: int = 2700,
    n_val: int = 2700,
    n_test: int = 4500,
    epochs: int = 20,
) -> UserTask:
    """The task for `seed`: patterns, data and the network all drawn from it (deterministic)."""
    sizes = {"n_train": n_train, "n_probe": n_probe, "n_val": n_val, "n_test": n_test}
    _check_options(bias, n_classes, n_sensors, n_steps, core_strength, spurious_strength, noise)
    _check_sizes(sizes, n_classes, epochs)
    group_names, concept_names = names(n_classes)
    gen = torch.Generator().manual_seed(seed)
    class_patterns = core_strength * torch.randn(n_classes, n_sensors - 1, n_steps, generator=gen)
    site_signatures = spurious_strength * torch.randn(n_classes, n_steps, generator=gen)

    def draw(y: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        x = noise * torch.randn(len(y), n_sensors, n_steps, generator=gen)
        x[:, :-1] += class_patterns[y]
        x[:, -1] += site_signatures[s]
        return x

    def biased(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, n_classes, (n,), generator=gen)
        other = (y + torch.randint(1, n_classes, (n,), generator=gen)) % n_classes
        keep = torch.rand(n, generator=gen) < bias
        return y, torch.where(keep, y, other)

    def balanced(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.arange(n) % len(group_names)
        g = g[torch.randperm(n, generator=gen)]
        return g // n_classes, g % n_classes

    def split(y: torch.Tensor, s: torch.Tensor) -> Split:
        return Split(x=draw(y, s), y=y, groups=n_classes * y + s, concepts=s)

    train = split(*biased(n_train))
    probe, val, test = (split(*balanced(n)) for n in (n_probe, n_val, n_test))
    with torch.random.fork_rng(devices=[]), _one_thread():  # the caller's RNG is left alone
        torch.manual_seed(seed)
        model = SensorNet(n_sensors, n_steps, n_classes)
        model.mean.copy_(train.x.mean(dim=0))
        model.std.copy_(train.x.std(dim=0))
        _train(model, train.x, train.y, epochs=epochs, gen=gen)
    return UserTask(
        model=model.eval(),
        layer=LAYER,
        probe=probe,
        val=val,
        test=test,
        group_names=group_names,
        concept_names=concept_names,
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
    bias: float,
    n_classes: int,
    n_sensors: int,
    n_steps: int,
    core_strength: float,
    spurious_strength: float,
    noise: float,
) -> None:
    """A ValueError naming the option, its value and what is allowed."""
    if not 0.0 <= bias <= 1.0:
        raise ValueError(f"bias = {bias}: must be in [0, 1] (P(site = class) in training)")
    if not 2 <= n_classes <= 8:
        raise ValueError(f"n_classes = {n_classes}: must be between 2 and 8")
    if n_sensors < 2:
        raise ValueError(f"n_sensors = {n_sensors}: must be at least 2 (class + site sensors)")
    if n_steps < 1:
        raise ValueError(f"n_steps = {n_steps}: must be at least 1")
    for name, value in (("core_strength", core_strength), ("spurious_strength", spurious_strength)):
        if value <= 0:
            raise ValueError(f"{name} = {value}: must be > 0")
    if noise <= 0:
        raise ValueError(f"noise = {noise}: must be > 0 (the input is standardised by it)")


def _check_sizes(sizes: dict[str, int], n_classes: int, epochs: int) -> None:
    least = 2 * n_classes**2
    for name, value in sizes.items():
        if value < least:
            raise ValueError(
                f"{name} = {value}: must be at least {least} (two samples per group, "
                f"{n_classes}² groups)"
            )
    if epochs < 1:
        raise ValueError(f"epochs = {epochs}: must be at least 1")
