"""Optuna's own samplers and pruners, configured from a study file (not re-implemented)."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable
from typing import Any

import optuna

from hpo.config import PrunerSection, SamplerSection, StudyFile
from hpo.errors import UserError


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


def _seeded(cls: type[optuna.samplers.BaseSampler]) -> SamplerFactory:
    return lambda seed, parallel, opts: cls(seed=seed, **opts)


# sampler.name -> factory(seed, parallel, options). A new sampler is one entry here; a
# study file naming another is refused (hpo.service.study_file.check_registered).
SAMPLERS: dict[str, SamplerFactory] = {
    "tpe": _tpe,
    "random": _seeded(optuna.samplers.RandomSampler),
    "cmaes": _seeded(optuna.samplers.CmaEsSampler),
    "gp": _seeded(optuna.samplers.GPSampler),
    "nsgaii": _seeded(optuna.samplers.NSGAIISampler),
}

# pruner.name -> (Optuna pruner class, our defaults for its options).
PRUNERS: dict[str, tuple[type[optuna.pruners.BasePruner], dict[str, Any]]] = {
    "median": (optuna.pruners.MedianPruner, {}),
    "percentile": (optuna.pruners.PercentilePruner, {"percentile": 25.0}),
    "successive_halving": (optuna.pruners.SuccessiveHalvingPruner, {}),
    "hyperband": (optuna.pruners.HyperbandPruner, {}),
    "none": (optuna.pruners.NopPruner, {}),
}


def _unknown(section: str, name: str, known: dict[str, Any]) -> UserError:
    return UserError(f"{section}.name: unknown {section} {name!r}; use one of {', '.join(known)}")


def make_sampler(
    section: SamplerSection, *, seed: int, parallel: bool
) -> optuna.samplers.BaseSampler:
    factory = SAMPLERS.get(section.name)
    if factory is None:
        raise _unknown("sampler", section.name, SAMPLERS)
    opts: dict[str, Any] = dict(section.options)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return factory(seed, parallel, opts)
    except (TypeError, ValueError) as err:
        raise UserError(f"sampler.options: {err} (sampler {section.name})") from None


def make_pruner(section: PrunerSection) -> optuna.pruners.BasePruner:
    if section.name not in PRUNERS:
        raise _unknown("pruner", section.name, PRUNERS)
    cls, defaults = PRUNERS[section.name]
    opts = {**defaults, **section.options}
    try:
        return cls(**opts)
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
