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
    with pytest.raises(UserError, match="sampler.name: unknown sampler 'bogus'; valid: tpe"):
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


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_each_registered_sampler_runs_a_study_as_many_objectives_as_it_says(name: str) -> None:
    """Conformance: every sampler in the registry drives trials through Optuna, with
    two objectives where it says it handles several; a two-objective study file naming
    one that does not is refused, naming those that do."""
    directions = ["maximize", "minimize"] if SAMPLERS[name].multi_objective else ["maximize"]
    sampler = make_sampler(SamplerSection(name=name), seed=0, parallel=False)
    run = optuna.create_study(directions=directions, sampler=sampler)
    run.optimize(lambda t: tuple(t.suggest_float("x", 0, 1) for _ in directions), n_trials=4)
    assert len(run.trials) == 4
    doc = study(sampler={"name": name})
    doc["study"] = {"name": "s", "objectives": ["mmcs", "ml2r"]}
    if SAMPLERS[name].multi_objective:
        assert parse_study(doc, "f.toml").sampler.name == name
    else:
        with pytest.raises(UserError, match=rf"sampler.name: {name} supports one objective.*tpe"):
            parse_study(doc, "f.toml")


@pytest.mark.parametrize("name", PRUNERS.names())
def test_each_registered_pruner_prunes_through_optuna(name: str) -> None:
    pruner = make_pruner(PrunerSection(name=name))
    run = optuna.create_study(pruner=pruner, sampler=optuna.samplers.RandomSampler(0))

    def objective(trial: optuna.Trial) -> float:
        for step in range(4):
            trial.report(trial.number * 0.1 + step, step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return trial.number * 0.1

    run.optimize(objective, n_trials=6)
    assert len(run.trials) == 6
