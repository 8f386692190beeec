"""A small transformer that learned a spurious token: a user task on the architecture most
users bring.

Each sample is a sequence of `seq_len` tokens. Most are filler; every sequence holds one
token A and one token B somewhere, and the label y is whether A comes before B (a pattern
only attention can read: it needs positions). Some sequences also hold a token S. In the
training split S is present exactly when y = 1 with probability `bias`, so the
transformer learns "S present" (one token, easy) before the order of A and B (hard); in
probe, val and test S is independent of y and every (y, S present) group is equally
large, so the model fails the groups where S disagrees with y.

The model is a pre-LN transformer (token + positional embeddings, `n_blocks` blocks of
self-attention and an MLP of two `nn.Linear`s, mean-pooled, a linear classifier). The
Faithful-SAE decomposes the first block's MLP up-projection `blocks.0.mlp.fc1`; its
inputs are [batch, seq_len, d_model], and the service decomposes them token by token
(every token a row, labelled with its sequence's concept). `spurious_tokens_two_blocks.toml`
edits an MLP layer in each of two blocks at once.

Run it with `hpo trial examples/spurious_tokens.toml`. Built from the seed alone in a few
seconds on a CPU: no files, no downloads.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from hpo import Split, UserTask

LAYER = "blocks.0.mlp.fc1"  # Linear(d_model, d_mlp) in the first block, feeds a GELU
CONCEPT_NAMES = ("no S", "S")
GROUP_NAMES = ("B first,no S", "B first,S", "A first,no S", "A first,S")  # id = 2·y + s


class SelfAttention(nn.Module):
    """Multi-head self-attention from two nn.Linear layers (`qkv`, `proj`): every weight
    a Linear, so every one is a layer the service can name."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        # [n, t, 3·d] -> q, k, v as [n, heads, t, d / heads]
        q, k, v = self.qkv(x).reshape(n, t, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(n, t, d))


class MLP(nn.Module):
    def __init__(self, d_model: int, d_mlp: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_mlp)
        self.fc2 = nn.Linear(d_mlp, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-LN: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, d_model: int, n_heads: int, d_mlp: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, n_heads)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model, d_mlp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TokenTransformer(nn.Module):
    """Token ids [N, seq_len] → 2 logits. Rebuild an exported model with the factory's
    options of the same names (the vocabulary is the `n_filler` filler tokens, A, B, S)."""

    def __init__(
        self,
        n_filler: int = 12,
        seq_len: int = 12,
        d_model: int = 32,
        n_heads: int = 2,
        d_mlp: int = 64,
        n_blocks: int = 2,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(n_filler + 3, d_model)
        self.pos = nn.Embedding(seq_len, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, d_mlp) for _ in range(n_blocks))
        self.ln_f = nn.LayerNorm(d_model)
        self.classifier = nn.Linear(d_model, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens) + self.pos.weight[: tokens.shape[1]]
        for block in self.blocks:
            h = block(h)
        return self.classifier(self.ln_f(h).mean(dim=1))


def make_task(
    seed: int = 0,
    *,
    bias: float = 0.99,
    n_filler: int = 12,
    seq_len: int = 12,
    d_model: int = 32,
    n_heads: int = 2,
    d_mlp: int = 64,
    n_blocks: int = 2,
    n_train: int = 4000,
    n_probe: int = 2000,
    n_val: int = 2000,
    n_test: int = 4000,
    epochs: int = 8,
) -> UserTask:
    """The task for `seed`: sequences drawn and the transformer trained from it alone."""
    _check_options(bias, n_filler, seq_len, d_model, n_heads, d_mlp, n_blocks, epochs)
    _check_sizes({"n_train": n_train, "n_probe": n_probe, "n_val": n_val, "n_test": n_test})
    gen = torch.Generator().manual_seed(seed)
    token_a, token_b, token_s = n_filler, n_filler + 1, n_filler + 2

    def draw(y: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        n = len(y)
        tokens = torch.randint(0, n_filler, (n, seq_len), generator=gen)
        # three distinct positions per sequence: the first two hold A and B, the third S
        where = torch.rand(n, seq_len, generator=gen).argsort(dim=1)[:, :3]
        first, second = where[:, :2].min(dim=1).values, where[:, :2].max(dim=1).values
        pos_a = torch.where(y == 1, first, second)
        pos_b = torch.where(y == 1, second, first)
        rows = torch.arange(n)
        tokens[rows, pos_a] = token_a
        tokens[rows, pos_b] = token_b
        tokens[rows[s == 1], where[s == 1, 2]] = token_s
        return tokens

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
        model = TokenTransformer(n_filler, seq_len, d_model, n_heads, d_mlp, n_blocks)
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
    batch_size: int = 200,
    lr: float = 3e-3,
) -> None:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
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
    """Train on one thread, then restore the caller's count (as the other examples: tiny
    matmuls gain nothing from threads on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _check_options(
    bias: float,
    n_filler: int,
    seq_len: int,
    d_model: int,
    n_heads: int,
    d_mlp: int,
    n_blocks: int,
    epochs: int,
) -> None:
    """A ValueError naming the option, its value and what is allowed."""
    if not 0.0 <= bias <= 1.0:
        raise ValueError(f"bias = {bias}: must be in [0, 1] (P(S present = y) in training)")
    if n_filler < 1:
        raise ValueError(f"n_filler = {n_filler}: must be at least 1")
    if seq_len < 3:
        raise ValueError(f"seq_len = {seq_len}: must be at least 3 (room for A, B and S)")
    if n_heads < 1 or d_model % n_heads:
        raise ValueError(f"n_heads = {n_heads}: must be at least 1 and divide d_model = {d_model}")
    for name, value in (("d_model", d_model), ("d_mlp", d_mlp), ("n_blocks", n_blocks)):
        if value < 1:
            raise ValueError(f"{name} = {value}: must be at least 1")
    if epochs < 1:
        raise ValueError(f"epochs = {epochs}: must be at least 1")


def _check_sizes(sizes: dict[str, int]) -> None:
    least = 2 * len(GROUP_NAMES)
    for name, value in sizes.items():
        if value < least:
            raise ValueError(f"{name} = {value}: must be at least {least} (two samples per group)")
