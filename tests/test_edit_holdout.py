"""The in-trial edit search's cut of probe (hpo.debias.edit.target.split_within_groups):
a share of each group held out, by seed, and never a side left empty by rounding."""

from __future__ import annotations

import torch

from hpo.debias.edit.target import split_within_groups


def test_each_group_is_cut_by_its_share_and_the_sides_partition_the_rows() -> None:
    groups = torch.tensor([0] * 10 + [1] * 20 + [2] * 30)
    kept, held = split_within_groups(groups, 0.3, seed=4)
    assert sorted(torch.cat([kept, held]).tolist()) == list(range(60))
    assert torch.bincount(groups[held]).tolist() == [3, 6, 9]
    again = split_within_groups(groups, 0.3, seed=4)
    assert torch.equal(again[0], kept) and torch.equal(again[1], held)


def test_a_share_that_rounds_to_nothing_or_everything_keeps_a_row_on_each_side() -> None:
    groups = torch.tensor([0, 0, 1, 1, 1, 2])
    for share in (0.01, 0.99):
        kept, held = split_within_groups(groups, share)
        assert set(groups[held].tolist()) == {0, 1}  # a group of one stays on the fit side
        assert set(groups[kept].tolist()) == {0, 1, 2}
