"""What `hpo launch` checks before it writes anything to a storage.

A launch that fails after it created the database and the study leaves a half-made study
behind (no base model, no workers) for the next launch to trip on. So everything that can
be known first is: the sampler and pruner options (a dry run), the storage URL, the SQLite
file's folder and the artifact store (writable, nothing created), the cache folder, and,
for a study that has no base model yet, the data and the base model themselves (built
into the local cache, which is where the launch would put them anyway) and whether the
largest SAE the search can sample fits in memory. Only then is the study created.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import optuna

from hpo.config import StudyFile, TrialParams
from hpo.data.cache import writable_cache_dir
from hpo.device import resolve_device
from hpo.errors import UserError
from hpo.sae.training import check_fits
from hpo.search_spec import spec_extremes
from hpo.service.concept_budget import concept_budget_warnings, too_few_components
from hpo.service.samplers import check_options
from hpo.storage.artifacts import artifact_target
from hpo.storage.attrs import BASE_MODEL_ATTR
from hpo.storage.engine import check_url, open_storage, sqlite_path
from hpo.storage.records.study import read_study_doc
from hpo.tasks.base import AnyTask, TaskContext
from hpo.tasks.registry import get_task

# The fields that size the SAE in memory (see hpo.sae.training.training_bytes).
SIZE_FIELDS = ("n_components", "rank", "batch_size")


def check_launch(
    path: str | Path,
    study_file: StudyFile,
    url: str,
    *,
    workers: int,
    data_dir: str | None,
    device: str | None = None,
) -> Path | None:
    """A UserError for anything wrong that can be known before the study exists. Returns
    the base model's bundle file when the study will need one (built here, on `device`,
    else the study's), else None."""
    try:
        check_options(study_file, parallel=workers > 1)
    except UserError as err:
        raise UserError(f"{path}: {err}") from None
    check_url(url)
    artifact_target(url, study_file.storage)
    writable_cache_dir()
    resolved = resolve_device(device or study_file.params.device)
    existing = existing_study(url, study_file)
    if existing is not None and existing.user_attrs.get(BASE_MODEL_ATTR) is not None:
        return None  # resuming: the study keeps the base model it has
    task = get_task(study_file.task.kind)
    bundle, _ = task.build(
        study_file.task, data_dir=data_dir, device=resolved, progress=sys.stderr.isatty()
    )
    ctx = task.load(study_file.task, bundle, resolved)
    concept_names = getattr(ctx, "concept_names", ())
    if (why := too_few_components(study_file, concept_names)) is not None:
        raise UserError(f"{path}: {why}")
    for line in concept_budget_warnings(study_file, concept_names):
        print(f"warning: {path}: {line}", file=sys.stderr, flush=True)
    searched = [n for n in SIZE_FIELDS if n in study_file.search]
    what = f"{path}: " + (f"search ({', '.join(searched)} at most)" if searched else "params")
    for layer in candidate_layers(task, ctx, study_file, path):
        data = task.sae_data(ctx, layer)
        d_in, d_out = data.weight_t.shape
        check_fits(d_in, d_out, largest(study_file), data.inputs.shape[0], resolved, what)
    return bundle


def candidate_layers(
    task: AnyTask, ctx: TaskContext, study_file: StudyFile, path: str | Path
) -> list[str]:
    """Every layer a trial of the study may decompose: checked against the model now,
    not when a worker reaches the trial that names a wrong one."""
    spec = study_file.search.get("layers")
    values = [study_file.params.layers] if spec is None else spec_extremes(spec)
    layers: list[str] = []
    for value in values:
        params = study_file.params.model_copy(update={"layers": value})
        try:
            names = task.decomposed_layers(ctx, params)
        except UserError as err:
            where = "params.layers" if spec is None else "search.layers"
            raise UserError(f"{path}: {str(err).replace('params.layers', where)}") from None
        layers += [n for n in names if n not in layers]
    return layers


def existing_study(url: str, study_file: StudyFile) -> optuna.Study | None:
    """The study if the storage has it already (checked to be the same study), else None.
    A SQLite file that does not exist yet is not created here."""
    from hpo.service.studies import check_resumable

    path = sqlite_path(url)
    if path is not None and (not path.exists() or path.stat().st_size == 0):
        return None
    storage = open_storage(url, study_file.storage, heartbeat=False)
    try:
        study = optuna.load_study(study_name=study_file.study.name, storage=storage)
    except KeyError:
        return None
    stored = read_study_doc(study.user_attrs)
    if stored is not None:
        check_resumable(study_file, stored)
    return study


def largest(study_file: StudyFile) -> TrialParams:
    """The fixed params with each size field at the largest value the search can give."""
    update: dict[str, Any] = {}
    for name in SIZE_FIELDS:
        spec = study_file.search.get(name)
        if spec is None:
            continue
        values = [v for v in spec_extremes(spec) if type(v) is int]
        if values:
            update[name] = max(values)
    return study_file.params.model_copy(update=update)
