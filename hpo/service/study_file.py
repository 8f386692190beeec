"""Reading a study file: TOML in, a validated `StudyFile` out, or one readable error.

Errors name the file, the field (dotted), the bad value and what would be valid, so
that the CLI can print them on one line without a traceback.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import optuna
from pydantic import BaseModel, ValidationError

from hpo.config import StudyFile
from hpo.debias.controls import CONTROLS
from hpo.debias.strategies.registry import STRATEGIES
from hpo.errors import UserError
from hpo.registry import Registry
from hpo.search_spec import spec_extremes
from hpo.service.samplers import PRUNERS, SAMPLERS
from hpo.storage.records.study import read_study_doc
from hpo.tasks.registry import get_task, task_kinds

_TAGS = {"floatrange", "intrange", "choice", "fixed"}


def load_study_file(path: str | Path, overrides: list[str] | None = None) -> StudyFile:
    """Parse and validate a study file, applying `section.key=value` overrides first.
    Relative paths in its `[task]` are resolved against the file's own folder (those
    given by `--set`, against the working folder), so a study runs from anywhere."""
    raw = read_toml(Path(path))
    resolve_task_paths(raw, Path(path).absolute().parent)
    for item in overrides or []:
        apply_override(raw, item, path)
    resolve_task_paths(raw, Path.cwd())
    return parse_study(raw, path)


def resolve_task_paths(raw: dict[str, Any], folder: Path) -> None:
    """Every relative path the `[task]` kind declares (`path_fields`; a factory's
    'file.py:function'), made absolute against `folder`, in place."""
    task = raw.get("task")
    if not isinstance(task, dict) or task.get("kind") not in task_kinds():
        return
    for field in get_task(task["kind"]).config.path_fields:
        value = task.get(field)
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            task[field] = str(folder / value)
    factory = task.get("factory")
    if task["kind"] == "python" and isinstance(factory, str):
        target, sep, function = factory.rpartition(":")
        if sep and is_path(target) and not Path(target).expanduser().is_absolute():
            task["factory"] = f"{folder / target}:{function}"


def is_path(target: str) -> bool:
    """A factory names a file ('dir/file.py:function') rather than a module."""
    return target.endswith(".py") or "/" in target


def read_toml(path: Path) -> dict[str, Any]:
    """The TOML document in `path`, or a UserError saying why it cannot be read."""
    from hpo.paths import readable

    if path.is_dir():
        raise UserError(f"{path}: is a folder; give a study file, e.g. {path / 'study.toml'}")
    if path.exists() and not readable(path):
        raise UserError(f"{path}: cannot read the study file (permission denied)")
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such study file") from None
    except UnicodeDecodeError as err:
        raise UserError(
            f"{path}: not a text file in UTF-8 (byte {err.start}: {err.object[err.start]:#04x}); "
            "a study file is TOML, saved as UTF-8"
        ) from None
    except OSError as err:
        raise UserError(f"{path}: cannot read the study file ({err.strerror})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"{path}: not valid TOML: {err}") from None


def parse_study(raw: dict[str, Any], source: str | Path) -> StudyFile:
    """Validate `[task]` with the config class its kind names, then the whole file."""
    task = raw.get("task")
    if isinstance(task, dict):
        kind = task.get("kind")
        if kind not in task_kinds():
            got = "missing" if kind is None else f"{kind!r}"
            raise UserError(f"{source}: task.kind: {got}; valid: {', '.join(task_kinds())}")
        config = get_task(kind).config
        try:
            raw = {**raw, "task": config.model_validate(task)}
        except ValidationError as err:
            raise UserError(f"{source}: {describe_error(err, ['task'], config)}") from None
    try:
        study = StudyFile.model_validate(raw)
    except ValidationError as err:
        raise UserError(f"{source}: {describe_error(err)}") from None
    check_registered(study, source)
    return study


def check_registered(study: StudyFile, source: str | Path) -> None:
    """Names the schema leaves to a registry: the sampler, the pruner, and the edit
    strategy of `params.ablate` and of every value `search.ablate` can take."""
    names: list[tuple[str, str, str, Registry[Any]]] = [
        ("sampler.name", study.sampler.name, "sampler", SAMPLERS),
        ("pruner.name", study.pruner.name, "pruner", PRUNERS),
        ("params.ablate", study.params.ablate, "edit strategy", STRATEGIES),
    ]
    names += [("params.controls", c, "control", CONTROLS) for c in study.params.controls]
    if "ablate" in study.search:
        names += [
            ("search.ablate", v, "edit strategy", STRATEGIES)
            for v in spec_extremes(study.search["ablate"])
        ]
    inner = study.params.edit_search
    names += [("params.edit_search.ablate", v, "edit strategy", STRATEGIES) for v in inner.ablate]
    for field, name, _, valid in names:
        if name not in valid:
            raise UserError(f"{source}: {field}: {valid.unknown(name)}")
    sampler = SAMPLERS[study.sampler.name]
    if len(study.study.objectives) > 1 and not sampler.multi_objective:
        many = [n for n, s in SAMPLERS.items() if s.multi_objective]
        raise UserError(
            f"{source}: sampler.name: {study.sampler.name} supports one objective and the "
            f"study has {len(study.study.objectives)}; use one of {', '.join(many)}"
        )
    check_edit_search(study, source)


def check_edit_search(study: StudyFile, source: str | Path) -> None:
    """An in-trial edit search decides its fields inside the trial: the sampler may not
    search them too, and its strategies share one label regime (the references a
    result is compared with are its regime's)."""
    inner = study.params.edit_search
    both = [name for name in inner.settings() if name in study.search]
    if both:
        raise UserError(
            f"{source}: search.{both[0]}: also in params.edit_search, which chooses it inside "
            "each trial; keep it in one of the two"
        )
    regimes = {STRATEGIES[name].labels for name in inner.ablate or (study.params.ablate,)}
    if "ablate" in study.search and inner.size:
        regimes |= {STRATEGIES[v].labels for v in spec_extremes(study.search["ablate"])}
    if len(regimes) > 1:
        raise UserError(
            f"{source}: params.edit_search.ablate: mixes strategies of the concept and the "
            "group label regimes; a search compares edits that saw the same labels, so "
            "run one regime per study"
        )


def stored_study_file(doc: dict[str, Any], study_name: str) -> StudyFile:
    """The study file a study stored (`hpo launch` wrote it), validated as a file is."""
    return parse_study(doc, f"study {study_name!r} (its stored study file)")


def study_file_of(study: optuna.Study) -> StudyFile:
    """The study file `study` was launched with; a UserError for a study that stores
    none (one another tool made)."""
    doc = read_study_doc(study.user_attrs)
    if doc is None:
        raise UserError(
            f"study {study.study_name!r} stores no study file: it was not created by "
            "`hpo launch`, so hpo cannot run or read its trials"
        )
    return stored_study_file(doc, study.study_name)


def apply_override(raw: dict[str, Any], item: str, source: str | Path) -> None:
    """`--set params.steps=200` → raw["params"]["steps"] = 200 (value read as TOML)."""
    key, sep, text = item.partition("=")
    if not sep or "." not in key:
        raise UserError(
            f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. params.steps=200 or task.bias=0.9"
        )
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"--set {item!r}: {part} in {source} is not a section")
    node[leaf] = value


def describe_error(
    err: ValidationError, prefix: list[str] | None = None, root: type[BaseModel] = StudyFile
) -> str:
    """The first validation error as 'field: problem (got value)'."""
    first = err.errors()[0]
    raw_loc = [str(p) for p in first["loc"]]
    loc = [p for p in raw_loc if p not in _TAGS]
    field = ".".join([*(prefix or []), *loc]) or "(top level)"
    kind = first["type"]
    if kind == "extra_forbidden":
        valid = _valid_keys(root, loc[:-1])
        hint = f"; valid keys: {', '.join(valid)}" if valid else ""
        return f"{field}: unknown key{hint}"
    if kind == "missing":
        return f"{field}: required but missing"
    msg = first["msg"].removeprefix("Value error, ")
    if kind == "literal_error":
        return f"{field}: {msg} (got {first['input']!r})"
    if kind in ("value_error", "assertion_error") and field == "(top level)":
        return msg
    if "input" not in first or isinstance(first["input"], dict):
        return f"{field}: {msg}"  # a whole section's check: its message names the fields
    return f"{field}: {msg} (got {first['input']!r})"


def _valid_keys(root: type[BaseModel], loc: list[str]) -> list[str]:
    """Field names of the model at `loc` inside `root`, for 'unknown key' hints."""
    model: type[BaseModel] | None = root
    for part in loc:
        if model is None:
            return []
        field = model.model_fields.get(part)
        if field is None:
            return []
        ann = field.annotation
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return list(model.model_fields) if model is not None else []
