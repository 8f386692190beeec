"""`hpo export`: hand over exactly the weights a trial scored, with its config and card.

Everything starts from the trial's own "trial_weights" artifact, never from retraining:
`rescore` rebuilds the Faithful-SAE from it and scores it on val and test with the
study's base model. The report shares it; the test split is computed here, after the
study, and never reaches the sampler. An export whose re-scored validation numbers
differ from the trial's recorded ones is refused: it would not be the model that won.

Layout of `models/<study>/` (written into a temp folder, renamed into place at the end):
config.toml, config.json, sae.pt, model.pt, metrics.json, README.md.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import shutil
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from hpo.config import StudyFile, TrialParams
from hpo.data.cache import atomic_write_bytes, load_tensors
from hpo.errors import UserError
from hpo.sae.model import FaithfulSAE
from hpo.service.objective import TRIAL_WEIGHTS
from hpo.service.storage import artifact_store, mask
from hpo.tasks import TASKS

FILES = ("config.toml", "config.json", "sae.pt", "model.pt", "metrics.json", "README.md")
MODELS = ("original", "debiased", "oracle", "last_layer")
# Accuracies are exact fractions of a split: a single changed prediction moves them by
# 1/N, far above this. Errors are float reductions whose last bits depend on the device.
ACC_TOL = {"rel_tol": 1e-9, "abs_tol": 1e-9}
ERR_TOL = {"rel_tol": 1e-3, "abs_tol": 1e-7}
COMPARED = {
    "worst_group": ACC_TOL,
    "mean_group": ACC_TOL,
    "overall": ACC_TOL,
    "alpha": ERR_TOL,
    "mmcs": ERR_TOL,
    "ml2r": ERR_TOL,
    "faithfulness_error": ERR_TOL,
    "reconstruction_error": ERR_TOL,
}


@dataclass
class Rescored:
    """One stored trial, rebuilt from its weights and scored on val and test."""

    study: optuna.Study
    trial: FrozenTrial
    study_file: StudyFile
    params: TrialParams
    ctx: Any
    sae: FaithfulSAE
    payload: dict[str, Any]  # the trial_weights artifact: sae, sae_config, debiased
    result: dict[str, Any]  # task.evaluate(..., with_test=True)
    mismatches: list[str]  # recorded val number vs re-scored, where they differ


def trial_params(study_file: StudyFile, trial: FrozenTrial) -> TrialParams:
    """The trial's full parameters, derived exactly as the objective derived them."""
    from hpo.service.search_space import suggest

    return suggest(optuna.trial.FixedTrial(trial.params, trial.number), study_file)


def load_trial_weights(
    study: optuna.Study, study_file: StudyFile, url: str, trial: FrozenTrial
) -> dict[str, Any]:
    from optuna.artifacts import download_artifact

    artifact_id = trial.user_attrs.get(TRIAL_WEIGHTS)
    if not artifact_id:
        raise UserError(
            f"trial {trial.number} of study {study.study_name!r} has no stored weights "
            f"(state {trial.state.name}); only complete trials of a study run with an "
            "artifact store have them"
        )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trial.pt"
        try:
            download_artifact(
                artifact_store=artifact_store(url, study_file.storage),
                artifact_id=artifact_id,
                file_path=str(path),
            )
        except Exception as err:
            raise UserError(
                f"cannot fetch the weights of trial {trial.number} (artifact {artifact_id}) "
                f"from the study's artifact store: {err}"
            ) from None
        return load_tensors(path)


def compare_recorded(attrs: dict[str, Any], result: dict[str, Any]) -> list[str]:
    """'name: recorded X, re-scored Y' for every validation number that differs."""
    out = []
    for key, tol in COMPARED.items():
        if key in attrs and key in result and not math.isclose(attrs[key], result[key], **tol):
            out.append(f"{key}: recorded {attrs[key]:.6g}, re-scored {result[key]:.6g}")
    if "ablated_components" in attrs and attrs["ablated_components"] != result.get(
        "ablated_components"
    ):
        out.append(
            f"ablated_components: recorded {attrs['ablated_components']}, "
            f"re-scored {result.get('ablated_components')}"
        )
    for model, groups in (attrs.get("val_groups") or {}).items():
        now = result.get("models", {}).get(model, {}).get("val", {}).get("groups", {})
        for g, v in groups.items():
            w = now.get(g)
            if (v is None) != (w is None) or (v is not None and not math.isclose(v, w, **ACC_TOL)):
                out.append(f"{model} val {g}: recorded {v}, re-scored {w}")
    return out


def rescore(study: optuna.Study, url: str, trial: FrozenTrial) -> Rescored:
    """Rebuild a trial's Faithful-SAE from its stored weights; score it on val and test."""
    from hpo.service.runner import STUDY_FILE_ATTR, worker_context

    study_file = StudyFile.model_validate(study.user_attrs[STUDY_FILE_ATTR])
    payload = load_trial_weights(study, study_file, url, trial)
    ctx = worker_context(study, study_file, url)
    device = next(ctx.model.parameters()).device
    sae = FaithfulSAE(**payload["sae_config"]).to(device)
    sae.load_state_dict(payload["sae"], strict=True)
    sae.eval()
    params = trial_params(study_file, trial)
    result = TASKS[study_file.task.kind].evaluate(ctx, sae, params, with_test=True)
    mismatches = compare_recorded(trial.user_attrs, result)
    return Rescored(study, trial, study_file, params, ctx, sae, payload, result, mismatches)


# ---- which trial ----------------------------------------------------------------------


def _front_text(front: list[FrozenTrial], objectives: list[str]) -> str:
    return "; ".join(
        f"trial {t.number} ("
        + ", ".join(f"{n}={v:.4g}" for n, v in zip(objectives, t.values, strict=False))
        + ")"
        for t in sorted(front, key=lambda t: t.number)
    )


def pick_trial(study: optuna.Study, number: int | None) -> FrozenTrial:
    """The best trial, or trial `number`; on a multi-objective study, one of the front."""
    objectives = (
        study.user_attrs.get("study_file", {})
        .get("study", {})
        .get("objectives", [f"value{i}" for i in range(len(study.directions))])
    )
    complete = {t.number: t for t in study.get_trials(states=(TrialState.COMPLETE,))}
    if not complete:
        raise UserError(f"study {study.study_name!r} has no complete trial yet")
    if len(study.directions) > 1:
        front = study.best_trials
        listing = _front_text(front, objectives)
        if number is None:
            raise UserError(
                f"study {study.study_name!r} has {len(study.directions)} objectives: pick a "
                f"trial of its Pareto front with --trial N: {listing}"
            )
        if number not in {t.number for t in front}:
            raise UserError(
                f"--trial {number}: not on the Pareto front of study "
                f"{study.study_name!r}; the front: {listing}"
            )
        return complete[number]
    if number is None:
        return study.best_trial
    if number not in complete:
        raise UserError(
            f"--trial {number}: study {study.study_name!r} has no complete trial {number}; "
            f"complete trials: {', '.join(str(n) for n in sorted(complete))}"
        )
    return complete[number]


# ---- the files ------------------------------------------------------------------------


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

    attrs = r.trial.user_attrs
    objectives = list(r.study_file.study.objectives)
    return {
        "study": r.study.study_name,
        "storage": mask(url),
        "trial": r.trial.number,
        "values": dict(zip(objectives, r.trial.values, strict=True)),
        "directions": [d.name.lower() for d in r.study.directions],
        "seed": attrs.get("seed", r.params.seed),
        "task_seed": r.study_file.task.seed,
        "data_sha256": attrs.get("data_sha256"),
        "base_model": attrs.get("base_model"),
        "trial_weights": attrs.get(TRIAL_WEIGHTS),
        "sae_config": r.payload["sae_config"],
        "versions": attrs.get("versions"),
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
    keep = ("worst_group", "mean_group", "overall", "groups")
    res = r.result
    out: dict[str, Any] = {
        "trial": r.trial.number,
        "note": "val picked alpha (and the sampler saw only val); test is scored at export",
    }
    for key in (
        "alpha",
        "ablated_components",
        "faithfulness_error",
        "reconstruction_error",
        "mmcs",
        "ml2r",
    ):
        if key in res:
            out[key] = res[key]
    if "models" in res:
        out["models"] = {
            m: {
                s: {k: v for k, v in res["models"][m][s].items() if k in keep}
                for s in ("val", "test")
                if s in res["models"][m]
            }
            for m in MODELS
            if m in res["models"]
        }
    return out


def _verify_model(r: Rescored, state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Load model.pt's state into the base architecture (strict) and score it from scratch
    on the cached layer inputs: it must give the debiased numbers, split by split."""
    from hpo.debias import scoring
    from hpo.models.classifiers import BASE_MODELS

    task = r.study_file.task
    model = BASE_MODELS[task.base_model]()
    model.load_state_dict(state, strict=True)
    device = next(r.ctx.model.parameters()).device
    model.to(device).eval()
    scores = {}
    for split in ("val", "test"):
        s = r.ctx.splits[split]
        scores[split] = scoring.score_weight(
            model, task.layer, s.z, s.digits, s.group_ids, r.ctx.group_names
        )
        want = r.result["models"]["debiased"][split]
        bad = [
            k
            for k in ("worst_group", "mean_group", "overall")
            if not math.isclose(scores[split][k], want[k], **ACC_TOL)
        ]
        if bad:
            raise UserError(
                f"trial {r.trial.number}: the stored debiased model scores {split} "
                f"{bad[0]} {scores[split][bad[0]]:.4f} but its SAE at α = {r.result['alpha']:.3g} "
                f"gives {want[bad[0]]:.4f}; the artifact is inconsistent, not exporting"
            )
    return scores


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def model_card(r: Rescored, prov: dict[str, Any], metrics: dict[str, Any]) -> str:
    """README.md of the export: what was decomposed and removed, the numbers, how to load."""
    from hpo.models.classifiers import BASE_MODELS

    task = r.study_file.task
    p = r.params
    lines = [f"# {r.study.study_name}, trial {r.trial.number}", ""]
    if "models" not in metrics:
        lines += [
            f"Faithful-SAE decomposition of the {task.kind} model (no debiasing edit).",
            "",
            *(
                f"- {k}: {metrics[k]:.4f}"
                for k in ("mmcs", "ml2r", "faithfulness_error")
                if k in metrics
            ),
            "",
            "Files: `sae.pt`, `config.toml`, `config.json`, `metrics.json`.",
        ]
        return "\n".join(lines) + "\n"
    cls = BASE_MODELS[task.base_model].__name__
    comps = ", ".join(str(c) for c in metrics["ablated_components"])
    how = (
        f"conditioned during training to fire for the colours {', '.join(task.colors)}"
        if p.ablate == "conditioned"
        else f"the {p.n_ablate} whose contribution differs most between colours (attribution)"
    )
    lines += [
        f"A `{cls}` ({task.base_model}) trained on colored MNIST where colour predicts the "
        f"digit set {100 * task.bias:.0f}% of the time, debiased by editing one weight.",
        "",
        f"- **Decomposed:** the `{task.layer}` weight "
        f"({r.payload['sae_config']['d_out']}×{r.payload['sae_config']['d_in']}), into "
        f"{p.n_components} rank-{p.rank} Faithful-SAE components (top-k {p.top_k}; "
        f"faithfulness error {metrics['faithfulness_error']:.2e}).",
        f"- **Removed:** component(s) {comps}, {how}.",
        f"- **α = {metrics['alpha']:.3g}** (chosen on validation): `{task.layer}.weight` ← "
        f"W − α · Σ removed components. Same architecture, same forward code.",
        "",
        "| accuracy | original val | original test | debiased val | debiased test | "
        "oracle test | last-layer test |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    m = metrics["models"]
    rows = [
        ("**worst group**", "worst_group"),
        ("mean group", "mean_group"),
        ("overall", "overall"),
    ]
    rows += [(g, g) for g in m["original"]["val"]["groups"]]
    for label, key in rows:

        def cell(model: str, split: str, key: str = key) -> str:
            d = m.get(model, {}).get(split)
            if d is None:
                return "–"
            return _pct(d[key] if key in d else d["groups"].get(key))

        lines.append(
            f"| {label} | {cell('original', 'val')} | {cell('original', 'test')} | "
            f"{cell('debiased', 'val')} | {cell('debiased', 'test')} | "
            f"{cell('oracle', 'test')} | {cell('last_layer', 'test')} |"
        )
    lines += [
        "",
        "The sampler only ever saw validation numbers; test was scored once, at export.",
        "",
        "## Load it",
        "",
        "```python",
        "import torch",
        f"from hpo.models.classifiers import {cls}",
        f'model = {cls}(); model.load_state_dict(torch.load("model.pt", weights_only=True)); '
        "model.eval()",
        "```",
        "",
        "Input: uint8 images `[N, 3, 28, 28]` divided by 255 (float in [0, 1]); "
        "output: logits over the 10 digits.",
        'The Faithful-SAE: `d = torch.load("sae.pt", weights_only=True)`, then '
        '`from hpo.sae.model import FaithfulSAE; sae = FaithfulSAE(**d["sae_config"]); '
        'sae.load_state_dict(d["sae"])`.',
        "",
        "## Reproduce",
        "",
        f"`hpo trial --config config.toml` retrains this trial (seed {prov['seed']}, data "
        f"sha256 `{str(prov['data_sha256'])[:12]}…`). Versions and checksums: `config.json`.",
        "",
    ]
    return "\n".join(lines)


def _secrets(url: str, study_file: StudyFile) -> list[str]:
    from sqlalchemy.engine import make_url

    found = []
    for candidate in (url, study_file.storage.url):
        try:
            password = make_url(candidate).password if candidate else None
        except Exception:
            password = None
        if password:
            found.append(str(password))
    return found


def export_files(r: Rescored, url: str, out: Path) -> dict[str, bytes]:
    """File name → bytes of the export, every check done before anything is written."""
    from hpo.service.study_file import parse_study

    if r.mismatches:
        raise UserError(
            f"trial {r.trial.number}: re-scoring its stored weights does not give its recorded "
            f"validation numbers ({'; '.join(r.mismatches[:3])}); not exporting a model that "
            "is not the one that was scored"
        )
    doc = _exported_study(r)
    prov = _provenance(r, url)
    toml_text = _config_toml(doc, prov, out)
    again = parse_study(tomllib.loads(toml_text), out / "config.toml")
    if again.params != r.params or again.task != r.study_file.task:
        raise RuntimeError("exported config.toml does not round-trip to the trial's params")
    metrics = _metrics(r)
    sae_doc = {
        "sae": {k: v.detach().cpu() for k, v in r.sae.state_dict().items()},
        "sae_config": r.payload["sae_config"],
        "layer": getattr(r.ctx, "layer", None),
        "ablated_components": r.result.get("ablated_components"),
        "alpha": r.result.get("alpha"),
    }
    files: dict[str, bytes] = {
        "config.toml": toml_text.encode(),
        "config.json": (json.dumps({**doc, "provenance": prov}, indent=2) + "\n").encode(),
        "sae.pt": _torch_bytes({k: v for k, v in sae_doc.items() if v is not None}),
    }
    if "debiased" in r.payload:
        state = {k: v.detach().cpu() for k, v in r.payload["debiased"].items()}
        _verify_model(r, state)
        files["model.pt"] = _torch_bytes(state)
    files["metrics.json"] = (json.dumps(metrics, indent=2) + "\n").encode()
    files["README.md"] = model_card(r, prov, metrics).encode()
    for secret in _secrets(url, r.study_file):
        leaked = [name for name, data in files.items() if secret.encode() in data]
        if leaked:
            raise RuntimeError(f"the storage password would appear in {leaked[0]}")
    return files


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


def current_umask() -> int:
    """The process umask (temp files are private; an export is not)."""
    mask_ = os.umask(0)
    os.umask(mask_)
    return mask_


def write_folder(out: Path, files: dict[str, bytes]) -> None:
    """Write every file into a temp folder beside `out`, then rename it into place: on
    any error nothing half-written is left, and an earlier export stays whole."""
    if out.exists() and (not out.is_dir() or not _is_export(out)):
        raise UserError(
            f"--out {out}: exists and is not an earlier export; choose another folder or remove it"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        for name, data in files.items():
            atomic_write_bytes(tmp / name, data)
            (tmp / name).chmod(0o666 & ~current_umask())
        tmp.chmod(0o777 & ~current_umask())
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def study_url(name: str, cli_url: str | None) -> str:
    """--storage, else $HPO_STORAGE_URL, else storage/<study>.db: where launch put it."""
    from hpo.config import StorageSection
    from hpo.service.storage import DEFAULT_DIR, resolve_url

    url = resolve_url(StorageSection(), name, cli_url)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        found = []
        for db in sorted(Path(DEFAULT_DIR).glob("*.db")):
            storage = optuna.storages.RDBStorage(f"sqlite:///{db}")
            found += [f"{n} ({db})" for n in optuna.study.get_all_study_names(storage)]
            storage.engine.dispose()
        raise UserError(
            f"no study named {name!r}: {url.removeprefix('sqlite:///')} does not exist; "
            f"studies under {DEFAULT_DIR}/: {', '.join(found) or 'none'} (or pass --storage)"
        )
    return url


def export(name: str, cli_url: str | None, *, trial: int | None, out: str | None) -> Path:
    from hpo.service.runner import load_study

    url = study_url(name, cli_url)
    study = load_study(name, url)
    chosen = pick_trial(study, trial)
    target = Path(out) if out else Path("models") / name
    r = rescore(study, url, chosen)
    write_folder(target, export_files(r, url, target))
    return target
