"""`hpo export`: hand over exactly the weights a trial scored, with its config and card.

Everything starts from the trial's own "trial_weights" artifact, never from retraining:
`rescore` rebuilds the Faithful-SAE from it and scores it on val and test with the
study's base model. The report shares it; the test split is computed here, after the
study, and never reaches the sampler. An export whose re-scored validation numbers
differ from the trial's recorded ones is refused: it would not be the model that won.

Layout of `models/<study>/` (written into a temp folder, renamed into place at the end):
config.toml, config.json, sae.pt, model.pt, metrics.json, README.md, and for a Hugging Face
model hf/ (its `save_pretrained` output, which `from_pretrained` loads).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from hpo.config import StudyFile
from hpo.errors import UserError
from hpo.files import atomic_folder
from hpo.outputs.export_choice import pick_trial
from hpo.outputs.model_card import model_card
from hpo.outputs.rescore import ACC_TOL, Rescored, rescore
from hpo.storage.engine import mask
from hpo.storage.urls import study_url
from hpo.tasks.registry import get_task

FILES = ("config.toml", "config.json", "sae.pt", "model.pt", "metrics.json", "README.md")


def _exported_study(r: Rescored) -> dict[str, Any]:
    """A complete study file that reruns this trial: its params fixed, no search, and no
    storage section (the URL, and any password in it, stays with the study)."""
    doc = r.study_file.model_dump(mode="json", exclude_none=True)
    doc.pop("storage", None)
    doc.pop("search", None)
    doc["params"] = r.params.model_dump(mode="json", exclude_none=True)
    doc["study"]["name"] = f"{r.study.study_name}-trial{r.trial.number}"
    return doc


def _provenance(r: Rescored, url: str) -> dict[str, Any]:
    from hpo.versions import package_versions

    record = r.record
    objectives = list(r.study_file.study.objectives)
    return {
        "study": r.study.study_name,
        "storage": mask(url),
        "trial": r.trial.number,
        "values": dict(zip(objectives, r.trial.values, strict=True)),
        "directions": [d.name.lower() for d in r.study.directions],
        "seed": r.params.seed if record.seed is None else record.seed,
        "task_seed": r.study_file.task.seed,
        "data_sha256": record.data_sha256,
        "base_model": record.base_model,
        "trial_weights": record.trial_weights,
        "sae_config": {layer: stored.config for layer, stored in r.weights.saes.items()},
        "versions": record.versions,
        "exported_with": package_versions(),
        "completed_at": r.trial.datetime_complete.isoformat()
        if r.trial.datetime_complete
        else None,
        "exported_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def _config_toml(doc: dict[str, Any], prov: dict[str, Any], out: Path) -> str:
    import tomli_w

    values = ", ".join(f"{k} = {v:.6g}" for k, v in prov["values"].items())
    versions = ", ".join(f"{k} {v}" for k, v in (prov["versions"] or {}).items())
    head = [
        f"# Trial {prov['trial']} of study {prov['study']} ({prov['storage']}), exported by "
        "hpo export.",
        f"# Reproduce it: hpo trial --config {out / 'config.toml'}",
        f"# Validation: {values}",
        f"# seed {prov['seed']} · task seed {prov['task_seed']} · data sha256 "
        f"{prov['data_sha256']}",
        f"# base model {prov['base_model']} · weights artifact {prov['trial_weights']}",
        f"# versions: {versions}",
        '# Full provenance: config.json, key "provenance".',
        "",
    ]
    return "\n".join(head) + tomli_w.dumps(doc)


def _metrics(r: Rescored) -> dict[str, Any]:
    out = r.result.to_json()
    out.pop("timings", None)
    return {
        "trial": r.trial.number,
        "note": "val picked alpha (and the sampler saw only val); test is scored at export",
        **out,
    }


def _verify_model(r: Rescored, state: dict[str, torch.Tensor]) -> None:
    """Load model.pt's state into a fresh copy of the study's model (strict) and score it
    from scratch: it must give the debiased numbers, split by split."""
    assert r.result.edit is not None
    scored = get_task(r.study_file.task.kind).score_state_dict(r.ctx, state)
    for split, got in scored.items():
        want = r.result.metric("debiased", split)
        assert want is not None
        bad = [
            k
            for k in ("worst_group", "mean_group", "overall")
            if not math.isclose(getattr(got, k), getattr(want, k), **ACC_TOL)
        ]
        if bad:
            raise UserError(
                f"trial {r.trial.number}: the stored debiased model scores {split} "
                f"{bad[0]} {getattr(got, bad[0]):.4f} but its SAE at α = "
                f"{r.result.edit.alpha:.3g} gives {getattr(want, bad[0]):.4f}; the artifact "
                "is inconsistent, not exporting"
            )


def _secrets(url: str, study_file: StudyFile) -> list[str]:
    from hpo.storage.redact import secrets_of

    section = study_file.storage
    return secrets_of(url) + secrets_of(section.url, section.engine_kwargs)


def export_files(r: Rescored, url: str, out: Path) -> dict[str, bytes]:
    """File name → bytes of the export, every check done before anything is written."""
    if r.mismatches:
        raise UserError(
            f"trial {r.trial.number}: re-scoring its stored weights does not give its recorded "
            f"validation numbers ({'; '.join(r.mismatches[:3])}); not exporting a model that "
            "is not the one that was scored"
        )
    doc = _exported_study(r)
    prov = _provenance(r, url)
    toml_text = _config_toml(doc, prov, out)
    _check_round_trip(r, toml_text, out)
    metrics = _metrics(r)
    files: dict[str, bytes] = {
        "config.toml": toml_text.encode(),
        "config.json": (json.dumps({**doc, "provenance": prov}, indent=2) + "\n").encode(),
        "sae.pt": _torch_bytes(_sae_doc(r)),
    }
    if r.weights.debiased is not None:
        files |= _model_files(r, r.weights.debiased)
    files["metrics.json"] = (json.dumps(metrics, indent=2) + "\n").encode()
    task = get_task(r.study_file.task.kind)
    files["README.md"] = model_card(
        title=f"{r.study.study_name}, trial {r.trial.number}",
        card=task.model_card(r.ctx),
        result=r.result,
        params=r.params,
        sae_configs={layer: stored.config for layer, stored in r.weights.saes.items()},
        prov=prov,
    ).encode()
    _check_no_secret(files, url, r.study_file)
    return files


def _check_round_trip(r: Rescored, toml_text: str, out: Path) -> None:
    """config.toml must parse back to the trial's own params and task: it reruns it."""
    from hpo.service.study_file import parse_study

    again = parse_study(tomllib.loads(toml_text), out / "config.toml")
    if again.params != r.params or again.task != r.study_file.task:
        raise RuntimeError("exported config.toml does not round-trip to the trial's params")


def _sae_doc(r: Rescored) -> dict[str, Any]:
    """sae.pt: each layer's Faithful-SAE state and config, what the edit removed from
    it, and the edit's α and plan."""
    edit = r.result.edit
    return {
        "layers": {
            layer: {
                "sae": {k: v.detach().cpu() for k, v in sae.state_dict().items()},
                "sae_config": r.weights.saes[layer].config,
                **({} if edit is None else {"ablated_components": edit.components[layer]}),
                **(
                    {"removed_fractions": edit.fractions[layer]}
                    if edit is not None and edit.fractions is not None
                    else {}
                ),
            }
            for layer, sae in r.saes.items()
        },
        **({} if edit is None else {"alpha": edit.alpha, "plan": edit.plan.to_json()}),
    }


def _model_files(r: Rescored, debiased: Mapping[str, torch.Tensor]) -> dict[str, bytes]:
    """model.pt (checked to score what the trial recorded) and the task's own export of
    it (hf/ for a Hugging Face model)."""
    state = {k: v.detach().cpu() for k, v in debiased.items()}
    _verify_model(r, state)
    task = get_task(r.study_file.task.kind)
    return {
        "model.pt": _torch_bytes(state),
        **{f"hf/{name}": data for name, data in task.model_files(r.ctx, state).items()},
    }


def _check_no_secret(files: dict[str, bytes], url: str, study_file: StudyFile) -> None:
    for secret in _secrets(url, study_file):
        leaked = [name for name, data in files.items() if secret.encode() in data]
        if leaked:
            raise RuntimeError(f"the storage password would appear in {leaked[0]}")


def _torch_bytes(obj: Any) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _is_export(path: Path) -> bool:
    if not any(path.iterdir()):
        return True
    try:
        return "provenance" in json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False


def check_target(out: Path) -> Path:
    """`out` may receive an export: new, or an earlier export, in a folder we can write."""
    from hpo.paths import check_writable_dir

    if out.exists() and (not out.is_dir() or not _is_export(out)):
        raise UserError(
            f"--out {out}: exists and is not an earlier export; choose another folder or remove it"
        )
    check_writable_dir(out.parent, f"--out {out}: folder")
    return out


def write_folder(out: Path, files: dict[str, bytes]) -> None:
    """Write every file into a temp folder beside `out`, then rename it into place: on
    any error nothing half-written is left, and an earlier export stays whole."""
    check_target(out)
    atomic_folder(out, files)


def export(
    name: str, cli_url: str | None, *, trial: int | None, out: str | None
) -> tuple[Path, str]:
    """Export one trial; returns the folder and which trial was chosen and why."""
    from hpo.service.studies import load_study

    target = check_target(Path(out) if out else Path("models") / name)
    url = study_url(name, cli_url)
    study = load_study(name, url)
    chosen, why = pick_trial(study, trial)
    r = rescore(study, url, chosen)
    write_folder(target, export_files(r, url, target))
    return target, why
