"""Optuna's own samplers and pruners, configured from a study file (not re-implemented)."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna

from hpo.config import PrunerSection, SamplerSection, StudyFile
from hpo.errors import UserError
from hpo.registry import Registry


def worker_seed(base: int, worker: str) -> int:
    """A distinct, reproducible seed per worker: workers sharing one seed propose the
    same configurations even with the constant liar."""
    digest = hashlib.sha256(f"{base}:{worker}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


SamplerFactory = Callable[[int, bool, dict[str, Any]], optuna.samplers.BaseSampler]


def _tpe(seed: int, parallel: bool, opts: dict[str, Any]) -> optuna.samplers.BaseSampler:
    """Multivariate TPE; with several workers, the constant liar keeps them apart."""
    opts.setdefault("multivariate", True)
    opts.setdefault("constant_liar", parallel)
    return optuna.samplers.TPESampler(seed=seed, **opts)


def _seeded(cls: Callable[..., optuna.samplers.BaseSampler]) -> SamplerFactory:
    """A sampler class that takes `seed=` and the study file's options (BaseSampler
    itself takes neither)."""
    return lambda seed, parallel, opts: cls(seed=seed, **opts)


@dataclass(frozen=True)
class Sampler:
    """An Optuna sampler as a study file names it: its factory(seed, parallel, options)
    and whether it handles several objectives."""

    make: SamplerFactory
    multi_objective: bool = True


@dataclass(frozen=True)
class Pruner:
    """An Optuna pruner as a study file names it: its class and our option defaults."""

    cls: type[optuna.pruners.BasePruner]
    defaults: dict[str, Any] = field(default_factory=dict)


# A new sampler or pruner is one line here; a study file naming another is refused
# (hpo.service.study_file.check_registered), as is a multi-objective study whose
# sampler says it handles one objective.
SAMPLERS: Registry[Sampler] = Registry("sampler")
SAMPLERS.register("tpe", Sampler(_tpe))
SAMPLERS.register("random", Sampler(_seeded(optuna.samplers.RandomSampler)))
SAMPLERS.register("cmaes", Sampler(_seeded(optuna.samplers.CmaEsSampler), multi_objective=False))
SAMPLERS.register("gp", Sampler(_seeded(optuna.samplers.GPSampler)))
SAMPLERS.register("nsgaii", Sampler(_seeded(optuna.samplers.NSGAIISampler)))

PRUNERS: Registry[Pruner] = Registry("pruner")
PRUNERS.register("median", Pruner(optuna.pruners.MedianPruner))
PRUNERS.register("percentile", Pruner(optuna.pruners.PercentilePruner, {"percentile": 25.0}))
PRUNERS.register("successive_halving", Pruner(optuna.pruners.SuccessiveHalvingPruner))
PRUNERS.register("hyperband", Pruner(optuna.pruners.HyperbandPruner))
PRUNERS.register("none", Pruner(optuna.pruners.NopPruner))


def _unknown(section: str, name: str, known: Registry[Any]) -> UserError:
    return UserError(f"{section}.name: {known.unknown(name)}")


def make_sampler(
    section: SamplerSection, *, seed: int, parallel: bool
) -> optuna.samplers.BaseSampler:
    if section.name not in SAMPLERS:
        raise _unknown("sampler", section.name, SAMPLERS)
    opts: dict[str, Any] = dict(section.options)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return SAMPLERS[section.name].make(seed, parallel, opts)
    except (TypeError, ValueError) as err:
        raise UserError(f"sampler.options: {err} (sampler {section.name})") from None


def make_pruner(section: PrunerSection) -> optuna.pruners.BasePruner:
    if section.name not in PRUNERS:
        raise _unknown("pruner", section.name, PRUNERS)
    pruner = PRUNERS[section.name]
    opts = {**pruner.defaults, **section.options}
    try:
        return pruner.cls(**opts)
    except (TypeError, ValueError) as err:
        raise UserError(f"pruner.options: {err} (pruner {section.name})") from None


def check_options(study_file: StudyFile, *, parallel: bool) -> None:
    """Build the sampler and the pruner, and run a few throwaway trials through each in
    memory: an option Optuna accepts but chokes on at the first trial (a string for a
    count, say) fails here, as one line, instead of in every worker."""
    from pydantic import ValidationError

    from hpo.service.search_space import suggest

    sampler = make_sampler(study_file.sampler, seed=study_file.sampler.seed, parallel=parallel)
    pruner = make_pruner(study_file.pruner)
    directions = study_file.directions
    startup = study_file.sampler.options.get("n_startup_trials")
    n = startup + 2 if type(startup) is int and 0 <= startup <= 20 else 3
    runs = (
        ("sampler", study_file.sampler.name, sampler, optuna.pruners.NopPruner(), n),
        ("pruner", study_file.pruner.name, optuna.samplers.RandomSampler(0), pruner, 3),
    )
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        for section, name, smp, prn, trials in runs:
            study = optuna.create_study(directions=directions, sampler=smp, pruner=prn)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    for i in range(trials):
                        trial = study.ask()
                        try:
                            suggest(trial, study_file)
                        except ValidationError:
                            pass  # a combination the schema refuses: not the options' fault
                        if len(directions) == 1:
                            trial.report(0.1 * i, 1)
                            trial.should_prune()
                        study.tell(trial, [0.1 * i] * len(directions))
            except (TypeError, ValueError, ArithmeticError) as err:
                raise UserError(f"{section}.options: {err} ({section} {name})") from None
    finally:
        optuna.logging.set_verbosity(verbosity)
