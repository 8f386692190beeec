"""Splits that stream: a Dataset or DataLoader caches what the same data as tensors does,
within its row cap, reading each batch once and running only the rows it may keep.

The tensor form is the reference: a streamed split must give the very rows, labels and
layer inputs the tensor path gives (up to the last bits of a batched matrix product), the
same references and the same trial; a cap keeps the same samples whatever the batch
size; sequences keep real tokens only; a bad batch is one line naming the split, the
batch and the key.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from hpo import Split, UserTask
from hpo.errors import UserError
from hpo.tasks.batches import check_batch, stream_batches
from hpo.tasks.collect import Collected, collect_splits
from hpo.tasks.row_sampling import sample_keys, smallest, token_positions
from hpo.tasks.user import SPLITS

CPU = torch.device("cpu")


class Items(Dataset):
    """A Split's samples as dict items: what a user's own Dataset returns."""

    def __init__(self, split: Split) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = self.split
        item = {"inputs": s.x[i], "y": s.y[i], "groups": s.groups[i]}
        if s.concepts is not None:
            item["concepts"] = s.concepts[i]
        return item


def streamed(task: UserTask, form: str, batch_size: int = 100, **over: Any) -> UserTask:
    def wrap(split: Split) -> Any:
        items = Items(split)
        return items if form == "dataset" else DataLoader(items, batch_size=batch_size)

    splits = {name: wrap(getattr(task, name)) for name in SPLITS}
    return replace(task, **splits, batch_size=batch_size, **over)


@pytest.fixture(scope="module")
def tabular() -> UserTask:
    module = importlib.import_module("examples.spurious_tabular")
    return module.make_task(seed=0, n_train=1500, n_probe=1200, n_val=800, n_test=800, epochs=5)


def assert_same(a: Collected, b: Collected) -> None:
    for name in SPLITS:
        sa, sb = a.splits[name], b.splits[name]
        for field in ("y", "groups", "concepts", "x"):
            va, vb = getattr(sa, field), getattr(sb, field)
            assert (va is None) == (vb is None)
            if isinstance(va, dict):
                assert va.keys() == vb.keys()
                assert all(torch.equal(va[k], vb[k]) for k in va), f"{name}.{field}"
            elif va is not None:
                assert torch.equal(va, vb), f"{name}.{field}"
        torch.testing.assert_close(sa.z, sb.z, rtol=0, atol=1e-5)
    assert a.probe_inputs.keys() == b.probe_inputs.keys() and a.probe_inputs
    for layer in a.probe_inputs:
        torch.testing.assert_close(a.probe_inputs[layer], b.probe_inputs[layer], rtol=0, atol=1e-5)


@pytest.mark.parametrize("form", ["dataset", "loader"])
def test_a_streamed_split_caches_what_the_same_tensors_cache(tabular: UserTask, form: str) -> None:
    as_tensors = collect_splits(tabular.model, tabular, CPU, seed=0)
    as_stream = collect_splits(tabular.model, streamed(tabular, form, batch_size=37), CPU, seed=0)
    assert as_tensors.digest is None and as_stream.digest
    assert_same(as_tensors, as_stream)
    assert len(as_stream.splits["probe"].y) == len(tabular.probe)


def test_the_row_cap_keeps_the_same_samples_whatever_the_batches(tabular: UserTask) -> None:
    cap = 300
    capped = replace(tabular, max_rows=cap)
    ref = collect_splits(capped.model, capped, CPU, seed=3)
    for batch_size in (7, 64, 1000):
        got = collect_splits(
            capped.model, streamed(capped, "loader", batch_size, max_rows=cap), CPU, seed=3
        )
        assert_same(ref, got)
    probe = ref.splits["probe"]
    assert len(probe.y) == cap and probe.z.shape[0] == cap
    # the kept rows are the split's own, in its order, and a uniform draw (every group)
    x = tabular.probe.x
    kept = [int((x == row).all(dim=1).nonzero()[0, 0]) for row in probe.x]
    assert kept == sorted(kept) and len(set(kept)) == cap
    assert set(probe.groups.tolist()) == set(tabular.probe.groups.tolist())
    other = collect_splits(capped.model, capped, CPU, seed=4).splits["probe"]
    assert not torch.equal(other.x, probe.x), "another seed draws other rows"


class CountingLinear(nn.Module):
    """A model that counts the samples it is run on: the trunk must skip what the cap
    cannot keep."""

    def __init__(self) -> None:
        super().__init__()
        self.fc0 = nn.Linear(6, 8)
        self.fc1 = nn.Linear(8, 2)
        self.seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += len(x)
        return self.fc1(torch.relu(self.fc0(x)))


class Endless(Dataset):
    """Generated on the fly: nothing of it is ever held whole."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        g = torch.Generator().manual_seed(i)
        y, s = i % 2, (i // 2) % 2
        return {
            "inputs": torch.randn(6, generator=g) + y,
            "y": y,
            "groups": 2 * y + s,
            "concepts": s,
        }


def test_a_large_stream_runs_only_the_rows_its_cap_may_keep() -> None:
    torch.manual_seed(0)
    model = CountingLinear().eval()
    n, cap = 20_000, 200
    task = UserTask(
        model=model,
        layer="fc0",
        probe=Endless(n),
        val=Endless(n // 4),
        test=Endless(n // 4),
        group_names=("a", "b", "c", "d"),
        concept_names=("s0", "s1"),
        max_rows=cap,
        batch_size=500,
    )
    out = collect_splits(model, task, CPU, seed=0)
    assert all(len(out.splits[name].y) == cap for name in SPLITS)
    assert out.probe_inputs["fc1"].shape == (cap, 8)
    # 30 000 samples read and hashed; a small fraction of them run through the model
    assert model.seen < 0.25 * (n + n // 2), model.seen


class MaskedTokens(nn.Module):
    """input_ids + attention_mask → 2 logits; the padding token embeds as 1000s, so a
    padded row in the layer's cached inputs would show."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        with torch.no_grad():
            self.embed.weight[0] = 1000.0
        self.fc = nn.Linear(8, 8)
        self.out = nn.Linear(8, 2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc(self.embed(input_ids)))
        m = attention_mask[..., None].float()
        return self.out((h * m).sum(1) / m.sum(1))


def token_split(n: int, seed: int) -> Split:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 9, (n,), generator=g)
    ids = torch.randint(1, 10, (n, 8), generator=g)
    mask = torch.arange(8)[None, :] < lengths[:, None]
    y = torch.randint(0, 2, (n,), generator=g)
    s = torch.randint(0, 2, (n,), generator=g)
    return Split({"input_ids": ids * mask, "attention_mask": mask.long()}, y, 2 * y + s, s)  # type: ignore[arg-type]


class Loader(Dataset):
    def __init__(self, split: Split) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = self.split
        x: Mapping[str, torch.Tensor] = s.x  # type: ignore[assignment]
        return {
            "inputs": {k: v[i] for k, v in x.items()},
            "y": s.y[i],
            "groups": s.groups[i],
            "concepts": s.concepts[i],  # type: ignore[index]
        }


def test_sequences_keep_real_tokens_only_the_same_whatever_the_batches() -> None:
    torch.manual_seed(0)
    model = MaskedTokens().eval()
    splits = {name: token_split(300, i) for i, name in enumerate(SPLITS)}

    def task(batch_size: int) -> UserTask:
        return UserTask(
            model=model,
            layer="fc",
            **{name: Loader(s) for name, s in splits.items()},
            group_names=("a", "b", "c", "d"),
            concept_names=("s0", "s1"),
            tokens_per_sample=3,
            batch_size=batch_size,
        )

    a = collect_splits(model, task(16), CPU, seed=0)
    b = collect_splits(model, task(128), CPU, seed=0)
    assert_same(a, b)
    z = a.splits["probe"].z
    assert z.shape == (300, 3, 8)
    assert float(z.abs().max()) < 100, "no padded token is a row"
    x = a.splits["probe"].x
    assert isinstance(x, dict) and set(x) == {"input_ids", "attention_mask"}
    # a one-token sequence repeats its token; a long one gives three distinct positions
    pos = token_positions(0, torch.arange(2), torch.tensor([[1] + [0] * 7, [1] * 8]).bool(), 3)
    assert pos[0].tolist() == [0, 0, 0] and len(set(pos[1].tolist())) == 3


def test_row_keys_do_not_depend_on_how_samples_are_batched() -> None:
    whole = sample_keys(5, torch.arange(1000))
    parts = torch.cat([sample_keys(5, torch.arange(i, i + 77)) for i in range(0, 1000, 77)])
    assert torch.equal(whole, parts[:1000]) and bool((whole >= 0).all())
    kept = smallest(whole, 100)
    assert len(kept) == 100 and kept.tolist() == sorted(kept.tolist())
    assert not torch.equal(sample_keys(6, torch.arange(1000)), whole)


def bad(raw: Any, needs_concepts: bool = False) -> str:
    with pytest.raises(UserError) as err:
        check_batch(raw, "UserTask.val: batch 0", 4, 2, needs_concepts)
    text = str(err.value)
    assert "\n" not in text
    return text


def test_every_bad_batch_is_one_line_naming_the_key() -> None:
    x = torch.randn(4, 3)
    y = torch.tensor([0, 1, 0, 1])
    assert "is a tuple; a batch is a dict" in bad((x, y))
    assert "has no 'y'" in bad({"inputs": x, "groups": y})
    assert "has no 'inputs'" in bad({"y": y, "groups": y})
    assert "no 'concepts'" in bad({"inputs": x, "y": y, "groups": y}, needs_concepts=True)
    assert "unknown key 'label'" in bad({"inputs": x, "y": y, "groups": y, "label": y})
    assert "y has shape (3,) but the batch's inputs hold 4" in bad(
        {"inputs": x, "y": y[:3], "groups": y}
    )
    assert "dtype torch.float32" in bad({"inputs": x, "y": y.float(), "groups": y})
    assert "groups has values 0..7; expected 0..3" in bad({"inputs": x, "y": y, "groups": y * 7})
    assert "inputs is list" in bad({"inputs": [1, 2], "y": y, "groups": y})
    assert "different numbers of samples" in bad(
        {"inputs": {"a": x, "b": x[:2]}, "y": y, "groups": y}
    )


def test_a_shuffling_loader_and_an_empty_one_are_refused() -> None:
    items = Items(Split(torch.randn(8, 3), torch.zeros(8).long(), torch.zeros(8).long()))
    for data, expected in (
        (DataLoader(items, batch_size=4, shuffle=True), r"shuffles \(shuffle=True\)"),
        (DataLoader(Items(Split(torch.randn(0, 3), *[torch.zeros(0).long()] * 2))), "is empty"),
    ):
        with pytest.raises(UserError, match=expected):
            list(
                stream_batches(
                    data,
                    "UserTask.val",
                    batch_size=4,
                    n_groups=2,
                    n_concepts=2,
                    needs_concepts=False,
                )
            )


FACTORY = """
from dataclasses import replace
from torch.utils.data import DataLoader, Dataset

import examples.spurious_tabular as tabular


class Items(Dataset):
    def __init__(self, split):
        self.split = split

    def __len__(self):
        return len(self.split)

    def __getitem__(self, i):
        s = self.split
        return {"inputs": s.x[i], "y": s.y[i], "groups": s.groups[i], "concepts": s.concepts[i]}


def make_task(seed, form="tensors"):
    task = tabular.make_task(seed=seed, n_train=1500, n_probe=900, n_val=600, n_test=600, epochs=5)
    if form == "tensors":
        return task
    wrap = {"dataset": Items, "loader": lambda s: DataLoader(Items(s), batch_size=50)}[form]
    return replace(task, probe=wrap(task.probe), val=wrap(task.val), test=wrap(task.test))
"""


def test_a_streamed_user_task_gives_the_trial_its_tensors_give(tmp_path: Path) -> None:
    from hpo.service.study_file import parse_study
    from hpo.service.trial import prepare_task, run_trial

    (tmp_path / "streamed_factory.py").write_text(FACTORY)
    results = {}
    for form in ("tensors", "loader"):
        study = parse_study(
            {
                "study": {"name": "streamed"},
                "task": {
                    "kind": "python",
                    "factory": f"{tmp_path / 'streamed_factory.py'}:make_task",
                    "options": {"form": form},
                },
                "params": {"n_components": 16, "top_k": 4, "steps": 60, "eval_every": 30},
            },
            "streamed",
        )
        ctx = prepare_task(study, data_dir=None, progress=False)
        result, _ = run_trial(study, ctx, study.params, with_test=True)
        results[form] = result
    a, b = results["tensors"], results["loader"]
    for model in ("original", "last_layer", "dfr", "leace", "debiased"):
        for split in ("val", "test"):
            assert a.models[model][split].groups == pytest.approx(b.models[model][split].groups)


def test_dfr_on_a_streamed_model_scored_from_an_earlier_layer() -> None:
    """A model that runs from its layer (LAYERS, head()) keeps no model inputs when it
    streams; DFR then chooses C on the val inputs of the final layer, kept as on probe,
    and gives what the same tensors give."""
    from hpo.models.classifiers import ColorMnistMLP
    from hpo.tasks.reference_scores import score_references

    torch.manual_seed(0)
    model = ColorMnistMLP().eval()

    def split(n: int, seed: int) -> Split:
        gen = torch.Generator().manual_seed(seed)
        x = torch.rand(n, 3, 28, 28, generator=gen)
        y = (x[:, 0].mean((1, 2)) > 0.5).long()
        concepts = (x[:, 1].mean((1, 2)) > 0.5).long()
        return Split(x, y, 2 * y + concepts, concepts)

    task = UserTask(
        model=model,
        layer="fc1",
        probe=split(120, 1),
        val=split(80, 2),
        test=split(80, 3),
        group_names=("0/0", "0/1", "1/0", "1/1"),
        concept_names=("0", "1"),
    )
    scores = {}
    for form in ("tensors", "loader"):
        user = task if form == "tensors" else streamed(task, form, batch_size=32)
        collected = collect_splits(model, user, CPU, seed=0)
        if form == "loader":
            assert collected.splits["val"].x is None and "fc2" in collected.val_inputs
        refs = score_references(model, user, collected, ["dfr"], oracle=None, seed=0)
        scores[form] = refs["dfr"]["val"].groups
    assert scores["loader"] == pytest.approx(scores["tensors"], abs=1e-6)
