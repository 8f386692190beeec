"""A study in its storage: created or resumed, its base model, its counts.

`create_or_load` makes or reopens the study and refuses a different one under the same
name; `prepare_base_model` trains the study's base model once and uploads it to the
artifact store; `worker_context` gives any worker the trial context from its local cache
or that store; `trial_counts` and `best_value` are what progress bars and `hpo status` show.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna

from hpo.config import StudyFile
from hpo.data.cache import bundle_file, writable_cache_dir
from hpo.device import resolve_device
from hpo.errors import UserError
from hpo.files import atomic_path
from hpo.service.objective import counts_toward_budget, is_result
from hpo.service.study_file import stored_study_file
from hpo.storage.artifacts import artifact_store
from hpo.storage.attrs import (
    BASE_ARTIFACT_ATTR,
    BASE_MODEL_ATTR,
    BUDGET_ATTR,
    INTERRUPTED_ATTR,
    SURPLUS_ATTR,
)
from hpo.storage.engine import mask, open_storage
from hpo.storage.records.study import read_study_doc, write_study_doc
from hpo.storage.redact import redact
from hpo.tasks.base import TaskContext
from hpo.tasks.registry import get_task


def _identity(study_file: StudyFile) -> dict[str, Any]:
    """What must match for a relaunch to resume the same study."""
    dump = study_file.model_dump(mode="json")
    return {k: dump[k] for k in ("task", "params", "search", "sampler", "pruner")} | {
        "objectives": dump["study"]["objectives"]
    }


def storable(study_file: StudyFile) -> dict[str, Any]:
    """The study file as stored in the study: its storage section redacted (the URL's
    password and secret query parameters, and secret-looking keys of engine_kwargs, as
    ***). Workers get the URL from --storage or the environment, never from the study;
    a redacted engine_kwargs entry is left out when they connect."""
    dump = study_file.model_dump(mode="json")
    dump["storage"] = redact(dump["storage"])
    return dump


def check_resumable(study_file: StudyFile, stored: dict[str, Any]) -> None:
    """A relaunch resumes only the same study (its stored file is what launch stored)."""
    if _identity(stored_study_file(stored, study_file.study.name)) != _identity(study_file):
        raise UserError(
            f"study {study_file.study.name!r} already exists in this storage with a different "
            "task, params, search space, sampler or pruner; rename study.name to start a new "
            "study, or launch it with its original file to resume"
        )


def create_or_load(study_file: StudyFile, storage: Any, n_trials: int | None) -> optuna.Study:
    name = study_file.study.name
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        directions=study_file.directions,
        load_if_exists=True,
    )
    stored = read_study_doc(study.user_attrs)
    if stored is None:
        write_study_doc(study, storable(study_file))
        if study_file.study.start_from_params:
            study.enqueue_trial(study_file.start_params(), skip_if_exists=True)
    else:
        check_resumable(study_file, stored)
    if n_trials is not None or BUDGET_ATTR not in study.user_attrs:
        study.set_user_attr(BUDGET_ATTR, n_trials or study_file.study.n_trials)
    return study


def prepare_base_model(
    study: optuna.Study,
    study_file: StudyFile,
    url: str,
    data_dir: str | None,
    bundle: Path | None = None,
) -> None:
    """Train (or reuse) the study's base model once, before any worker starts.

    A study that has one keeps it: resuming never rebuilds it (a user's factory need not
    be deterministic), and workers fetch it from the artifact store as usual. `bundle`:
    the one `hpo.service.preflight` built already.
    """
    if study.user_attrs.get(BASE_MODEL_ATTR) is None:
        from optuna.artifacts import upload_artifact

        path = bundle
        if path is None:
            task = get_task(study_file.task.kind)
            device = resolve_device(study_file.params.device)
            path, _ = task.build(study_file.task, data_dir=data_dir, device=device, progress=True)
        key = path.stem.split("-", 1)[1]

        store = artifact_store(url, study_file.storage)
        artifact_id = upload_artifact(
            artifact_store=store, file_path=str(path), study_or_trial=study
        )
        study.set_user_attr(BASE_ARTIFACT_ATTR, artifact_id)
        study.set_user_attr(BASE_MODEL_ATTR, key)


def worker_context(
    study: optuna.Study, study_file: StudyFile, url: str, device: str | None = None
) -> TaskContext:
    """The trial context from the local cache, or downloaded from the artifact store, on
    `device` (else the study's `params.device`)."""
    task = get_task(study_file.task.kind)
    key = study.user_attrs.get(BASE_MODEL_ATTR)
    if key is None:
        raise UserError(
            f"study {study.study_name!r} has no base model yet: start it with hpo launch"
        )
    path = bundle_file(study_file.task.kind, key)
    if not path.exists():
        from optuna.artifacts import download_artifact

        writable_cache_dir()
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            try:
                download_artifact(
                    artifact_store=artifact_store(url, study_file.storage),
                    artifact_id=study.user_attrs[BASE_ARTIFACT_ATTR],
                    file_path=str(tmp),
                )
            except Exception as err:
                raise UserError(
                    f"cannot fetch base model {key} from the study's artifact store ({err}); "
                    "set storage.artifacts to a shared folder or s3:// bucket every worker "
                    "reaches"
                ) from None
    ctx: TaskContext = task.load(
        study_file.task, path, resolve_device(device or study_file.params.device)
    )
    return ctx


def trial_counts(study: optuna.Study) -> dict[str, int]:
    """Trials by state. A FAIL is "interrupted" (Ctrl-C), surplus (not counted: it never
    ran) or "failed" (diverged, crashed, or its worker died)."""
    trials = study.get_trials(deepcopy=False)
    states = [t.state for t in trials]
    ts = optuna.trial.TrialState
    fails = [t for t in trials if t.state == ts.FAIL and SURPLUS_ATTR not in t.user_attrs]
    interrupted = sum(1 for t in fails if INTERRUPTED_ATTR in t.user_attrs)
    return {
        "complete": states.count(ts.COMPLETE),
        "pruned": states.count(ts.PRUNED),
        "failed": len(fails) - interrupted,
        "interrupted": interrupted,
        "running": states.count(ts.RUNNING),
        "waiting": states.count(ts.WAITING),
        "finished": sum(1 for t in trials if is_result(t)),
        "counted": sum(1 for t in trials if counts_toward_budget(t)),
    }


def best_value(study: optuna.Study) -> float | None:
    if len(study.directions) > 1:
        return None
    try:
        return study.best_value
    except ValueError:
        return None


def load_study(name: str, url: str, *, sampler: Any = None, pruner: Any = None) -> optuna.Study:
    storage = open_storage(url, heartbeat=False, create=False)
    try:
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        names = optuna.study.get_all_study_names(storage)
        raise UserError(
            f"no study named {name!r} in {mask(url)}; studies there: {', '.join(names) or 'none'}"
        ) from None
