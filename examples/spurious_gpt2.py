"""A GPT-2 that learned a spurious token: a Hugging Face model as a user task.

The model is `transformers.GPT2ForSequenceClassification`, built from a small
`GPT2Config` (two blocks, d = 32) and trained here from the seed: nothing is downloaded.
Its MLPs are Hugging Face `Conv1D` layers (weight stored in × out); the Faithful-SAE
decomposes the first block's up-projection `transformer.h.0.mlp.c_fc` (32 → 64), token
by token, and the edit is written back in Conv1D's own layout.

The data is `spurious_tokens`' (examples/spurious_tokens.py): sequences of `seq_len`
tokens holding one A and one B, labelled by whether A comes first; a token S, present
in half the sequences, equals the label in `bias` of the training split and is
independent of it in probe, val and test. GPT-2 pools the last token (no padding here:
the pad token is in the vocabulary but never used), so the order of A and B has to be
read causally, which it learns later than "S present".

Run it with `hpo trial examples/spurious_gpt2.toml` (needs `pip install -e '.[transformers]'`).
The export writes `hf/`, which `GPT2ForSequenceClassification.from_pretrained` loads.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from hpo import Split, UserTask

LAYER = "transformer.h.0.mlp.c_fc"  # Conv1D(32 -> 64) in the first block, feeds a GELU
CONCEPT_NAMES = ("no S", "S")
GROUP_NAMES = ("B first,no S", "B first,S", "A first,no S", "A first,S")  # id = 2·y + s


def gpt2_config(n_filler: int, seq_len: int, d_model: int, n_heads: int, n_blocks: int) -> object:
    """The model's `GPT2Config`: the vocabulary is the filler tokens, A, B, S and a pad
    token; no dropout (a small model on clean data), no cache (a classifier)."""
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=n_filler + 4,
        n_positions=seq_len,
        n_embd=d_model,
        n_layer=n_blocks,
        n_head=n_heads,
        n_inner=2 * d_model,
        num_labels=2,
        pad_token_id=n_filler + 3,
        bos_token_id=None,
        eos_token_id=None,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        use_cache=False,
    )


def make_task(
    seed: int = 0,
    *,
    bias: float = 0.99,
    n_filler: int = 12,
    seq_len: int = 12,
    d_model: int = 32,
    n_heads: int = 2,
    n_blocks: int = 2,
    n_train: int = 4000,
    n_probe: int = 2000,
    n_val: int = 2000,
    n_test: int = 4000,
    epochs: int = 8,
) -> UserTask:
    """The task for `seed`: sequences drawn and GPT-2 trained from it alone."""
    _check_options(bias, n_filler, seq_len, d_model, n_heads, n_blocks, epochs)
    _check_sizes({"n_train": n_train, "n_probe": n_probe, "n_val": n_val, "n_test": n_test})
    from transformers import GPT2ForSequenceClassification
    from transformers.utils import logging as hf_logging

    gen = torch.Generator().manual_seed(seed)
    token_a, token_b, token_s = n_filler, n_filler + 1, n_filler + 2

    def draw(y: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        n = len(y)
        tokens = torch.randint(0, n_filler, (n, seq_len), generator=gen)
        where = torch.rand(n, seq_len, generator=gen).argsort(dim=1)[:, :3]
        first, second = where[:, :2].min(dim=1).values, where[:, :2].max(dim=1).values
        rows = torch.arange(n)
        tokens[rows, torch.where(y == 1, first, second)] = token_a
        tokens[rows, torch.where(y == 1, second, first)] = token_b
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
    config = gpt2_config(n_filler, seq_len, d_model, n_heads, n_blocks)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its notes on a config without bos/eos tokens
    try:
        with torch.random.fork_rng(devices=[]), _one_thread():
            torch.manual_seed(seed)
            model = GPT2ForSequenceClassification(config)
            _train(model, train.x, train.y, epochs=epochs, gen=gen)
    finally:
        hf_logging.set_verbosity(verbosity)
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
    model: torch.nn.Module,
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
            loss = F.cross_entropy(model(x[idx]).logits, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


@contextmanager
def _one_thread() -> Iterator[None]:
    """Train on one thread, then restore the caller's count (as the other examples)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _check_options(
    bias: float, n_filler: int, seq_len: int, d_model: int, n_heads: int, n_blocks: int, epochs: int
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
    for name, value in (("d_model", d_model), ("n_blocks", n_blocks), ("epochs", epochs)):
        if value < 1:
            raise ValueError(f"{name} = {value}: must be at least 1")


def _check_sizes(sizes: dict[str, int]) -> None:
    least = 2 * len(GROUP_NAMES)
    for name, value in sizes.items():
        if value < least:
            raise ValueError(f"{name} = {value}: must be at least {least} (two samples per group)")
