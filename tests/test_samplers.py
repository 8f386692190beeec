"""Samplers and pruners come from two tables: every name the study file accepts has an
entry, each entry builds Optuna's own object, and an unknown name is an error."""

from __future__ import annotations

import optuna
import pytest

from hpo.config import PrunerSection, SamplerSection
from hpo.errors import UserError
from hpo.service.samplers import PRUNERS, SAMPLERS, make_pruner, make_sampler
from hpo.service.study_file import parse_study

EXPECTED_SAMPLERS = {
    "tpe": optuna.samplers.TPESampler,
    "random": optuna.samplers.RandomSampler,
    "cmaes": optuna.samplers.CmaEsSampler,
    "gp": optuna.samplers.GPSampler,
    "nsgaii": optuna.samplers.NSGAIISampler,
}


def study(**sections: dict) -> dict:
    toy = {"kind": "toy_superposition"}
    return {"study": {"name": "s", "objectives": ["mmcs"]}, "task": toy, **sections}


def test_a_study_file_accepts_exactly_the_names_in_the_tables() -> None:
    for name in SAMPLERS:
        assert parse_study(study(sampler={"name": name}), "f.toml").sampler.name == name
    for name in PRUNERS:
        assert parse_study(study(pruner={"name": name}), "f.toml").pruner.name == name
    with pytest.raises(UserError, match=r"f.toml: sampler.name: unknown sampler 'tp'; valid: tpe"):
        parse_study(study(sampler={"name": "tp"}), "f.toml")
    with pytest.raises(UserError, match=r"pruner.name: unknown pruner 'x'; valid: median"):
        parse_study(study(pruner={"name": "x"}), "f.toml")


@pytest.mark.parametrize("name", sorted(EXPECTED_SAMPLERS))
def test_each_sampler_name_builds_its_optuna_sampler(name: str) -> None:
    sampler = make_sampler(SamplerSection(name=name), seed=3, parallel=False)
    assert type(sampler) is EXPECTED_SAMPLERS[name]


def test_an_unknown_name_is_an_error_never_another_sampler() -> None:
    bogus = SamplerSection.model_construct(name="bogus", seed=0, options={})
    with pytest.raises(UserError, match="sampler.name: unknown sampler 'bogus'; use one of tpe"):
        make_sampler(bogus, seed=0, parallel=False)
    bogus_pruner = PrunerSection.model_construct(name="bogus", options={})
    with pytest.raises(UserError, match="pruner.name: unknown pruner 'bogus'"):
        make_pruner(bogus_pruner)


def test_pruners_and_their_defaults() -> None:
    percentile = make_pruner(PrunerSection(name="percentile"))
    assert isinstance(percentile, optuna.pruners.PercentilePruner)
    assert isinstance(make_pruner(PrunerSection(name="none")), optuna.pruners.NopPruner)
    with pytest.raises(UserError, match="pruner.options"):
        make_pruner(PrunerSection(name="median", options={"no_such_option": 1}))
