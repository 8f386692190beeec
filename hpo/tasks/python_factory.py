"""`[task] kind = "python"`: debias the user's own model, from a factory they write.

The study file names `factory = "package.module:function"` (or "path/to/file.py:function")
and `options`; the factory is called once per bundle as `function(seed=..., **options)`
and returns an `hpo.UserTask`. Its model is stored in the bundle as a `torch.export`
program, so workers score it without importing the user's code or reading their data.
The bundle key is a hash of what the factory returned (weights and data), so a factory
that changes its output is never served a stale bundle.
"""

from __future__ import annotations

import io
import sys
import time
import warnings
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator
from torch import fx, nn

from hpo.data.cache import bundle_file, content_hash, load_tensors
from hpo.errors import UserError, one_line
from hpo.models import graph_split
from hpo.models.head import logits_only
from hpo.models.model_inputs import ModelInputs, call_model, take, to_device
from hpo.tasks import (
    bundle,
    collect,
    cut,
    hugging_face,
)
from hpo.tasks.base import TaskConfig
from hpo.tasks.classifier import ClassifierConfig, ClassifierTask
from hpo.tasks.classifier_context import ClassifierContext
from hpo.tasks.collect import Collected
from hpo.tasks.factory_import import import_factory
from hpo.tasks.reference_scores import check_references, references_optional
from hpo.tasks.streamed_code import STREAMED_BUNDLE_CODE
from hpo.tasks.user import SPLITS, Split, UserTask, validate_user_task

BUNDLE_CODE = (*STREAMED_BUNDLE_CODE, cut, graph_split)


class PythonTask(ClassifierConfig):
    """A user task: a factory returning `hpo.UserTask`, and its keyword options."""

    kind: Literal["python"] = "python"
    factory: str = Field(min_length=3)
    options: dict[str, Any] = Field(default_factory=dict)
    references: tuple[str, ...] = ("last_layer", "dfr", "leace")

    @field_validator("factory")
    @classmethod
    def _module_colon_function(cls, factory: str) -> str:
        module, sep, function = factory.rpartition(":")
        if not sep or not module or not function.isidentifier():
            raise ValueError(
                f"expected 'module:function' or 'path/to/file.py:function', got {factory!r}"
            )
        return factory

    @field_validator("references")
    @classmethod
    def _known_references(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        check_references(names, can_train_oracle=False, kind="python")
        return names


def call_factory(cfg: PythonTask) -> UserTask:
    function = import_factory(cfg.factory)
    source = f"task.factory {cfg.factory}"
    try:
        task = function(seed=cfg.seed, **cfg.options)
    except TypeError as err:
        raise UserError(
            f"{source}: calling it with seed and options {sorted(cfg.options)} failed: "
            f"{one_line(err)}"
        ) from None
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"{source}: the factory raised {one_line(err)}") from None
    return validate_user_task(task, source)


def export_program(model: nn.Module, example: ModelInputs, source: str) -> bytes:
    """The model as a serialized torch.export program with a dynamic batch dimension
    (inputs given as a dict are exported as keyword arguments)."""
    batch = torch.export.Dim.DYNAMIC
    args: tuple[torch.Tensor, ...]
    kwargs: dict[str, torch.Tensor] | None
    shapes: tuple[dict[int, Any], ...] | dict[str, dict[int, Any]]
    if isinstance(example, torch.Tensor):
        args, kwargs, shapes = (example,), None, ({0: batch},)
    else:
        args, kwargs, shapes = (), dict(example), {k: {0: batch} for k in example}
    try:
        program = torch.export.export(
            model, args, kwargs=kwargs, dynamic_shapes=shapes, strict=False
        )
    except Exception as err:
        raise UserError(
            f"{source}: torch.export cannot capture the model ({one_line(err)}); workers "
            "score it from that capture, without your code: avoid data-dependent Python "
            "control flow in forward()"
        ) from None
    buf = io.BytesIO()
    torch.export.save(program, buf)
    return buf.getvalue()


def load_program(data: torch.Tensor, device: torch.device) -> fx.GraphModule:
    with warnings.catch_warnings():  # torch's own deprecation notices, not the user's
        warnings.simplefilter("ignore", FutureWarning)
        program = torch.export.load(io.BytesIO(data.cpu().numpy().tobytes()))
    return program.module().to(device)


class Python(ClassifierTask):
    kind: ClassVar[str] = "python"
    config: ClassVar[type[TaskConfig]] = PythonTask

    def build(
        self, cfg: PythonTask, *, data_dir: Any, device: torch.device, progress: bool
    ) -> tuple[Path, dict[str, float]]:
        t0 = time.perf_counter()
        task = call_factory(cfg)
        timings = {"factory": time.perf_counter() - t0}
        model = task.model.eval()
        collected = None
        if task.streams:  # read once: the data's digest is known only after a pass
            t0 = time.perf_counter()
            collected = collect.collect_splits(model, task, device, cfg.seed)
            timings["activations"] = time.perf_counter() - t0
        data_sha = _data_digest(task, collected)
        key = _bundle_key(cfg, task, model, data_sha)
        path = bundle_file(self.kind, key)
        if path.exists():
            return path, timings
        stored, found = _export_and_cut(cfg, task, model, collected, device)
        timings |= bundle.write_bundle(
            path,
            task,
            references=cfg.references,
            optional_references=references_optional(cfg),
            oracle=None,
            seed=cfg.seed,
            meta=_bundle_meta(cfg, key, data_sha, model),
            model_payload={"state": model.state_dict(), "program": stored},
            device=device,
            collected=collected,
            cut=found,
        )
        return path, timings

    def load(self, cfg: PythonTask, path: Path, device: torch.device) -> ClassifierContext:
        t0 = time.perf_counter()
        stored = load_tensors(path, map_location=device)
        model = load_program(stored["model"]["program"], device)
        meta = stored["meta"]
        module, _, name = meta["model_class"].rpartition(".")
        card = {
            "summary": f"A `{name}` returned by the factory `{cfg.factory}`",
            "class": meta["model_class"],
            "load": (
                f"model = ...  # construct your {name} as your factory does "
                f"(defined in {meta['model_file'] or module})"
            ),
        }
        if "hf" in meta:  # a Hugging Face model: its class rebuilt from the stored config
            card["load"] = (
                f"from transformers import {name}\n"
                f'model = {name}.from_pretrained("hf")  # the edited model itself; or:'
            )
        found = load_cut(stored, model, meta["layer"], device)
        ctx = bundle.context_from_bundle(stored, model, path, card, head=found.head)
        if found.head is not None:
            cut.check_loaded(found, ctx.splits["probe"].values(), stored["cut"]["check"])
        ctx.timings = {"load": time.perf_counter() - t0}
        return ctx


def load_cut(
    stored: dict[str, Any], program: nn.Module, layer: str, device: torch.device
) -> cut.Cut:
    """The cut the bundle recorded, made again from what it stores; the whole model
    (said once, with why) where it found none."""
    meta = stored["meta"].get("cut", {"kind": "whole_model", "why": "an older bundle"})
    if meta["kind"] == "graph_split":
        assert isinstance(program, torch.fx.GraphModule)
        return cut.graph_split_cut(program, layer, int(stored["cut"]["logits_leaf"]))
    if meta["kind"] == "user_head":
        return cut.user_head_cut(load_program(stored["cut"]["head_program"], device))
    cut.warn_whole_model(meta["why"], layer)
    return cut.Cut("whole_model", None, why=meta["why"])


def _data_digest(task: UserTask, collected: Collected | None) -> str:
    """The digest of the data: of what a streamed pass read, else of every split's tensors."""
    if collected is not None:
        assert collected.digest is not None
        return collected.digest
    return bundle.tensor_digest([t for s in SPLITS for t in vars(getattr(task, s)).values()])


def _bundle_key(cfg: PythonTask, task: UserTask, model: nn.Module, data_sha: str) -> str:
    """What the factory returned (data, weights, layer, row caps, head) and the code."""
    weights = bundle.tensor_digest(list(model.state_dict().values()))
    return content_hash(
        {
            "task": cfg.model_dump(mode="json"),
            "references_optional": references_optional(cfg),
            "data": data_sha,
            "weights": weights,
            "layer": task.layer,
            "rows": [task.max_rows, task.tokens_per_sample],
            "head": None if task.head is None else getattr(task.head, "__qualname__", "head"),
            "code": bundle.code_fingerprint(BUNDLE_CODE),
        }
    )


def _export_and_cut(
    cfg: PythonTask,
    task: UserTask,
    model: nn.Module,
    collected: Collected | None,
    device: torch.device,
) -> tuple[torch.Tensor, cut.Cut]:
    """The model's torch.export program (as the bytes the bundle stores) and the cut it
    is scored from, found on the program as workers will load it."""
    source = f"task.factory {cfg.factory}"
    if collected:
        example, check = collected.example, collected.splits["probe"].x
    else:
        assert isinstance(task.probe, Split)  # nothing streams: every split is tensors
        example, check = take(task.probe.x, slice(0, 2)), task.probe.x
    with torch.no_grad():
        flat = isinstance(call_model(model, example), torch.Tensor)
    program = export_program(model if flat else logits_only(model), example, source)
    stored = torch.frombuffer(bytearray(program), dtype=torch.uint8)
    if check is None:  # a streamed split scored from the layer keeps no model inputs
        check = example
    check = to_device(take(check, slice(0, cut.CHECK_ROWS)), device)
    probe_z = collect.module_inputs(model.to(device), task.layer, check)
    found = cut.find_cut(
        task,
        load_program(stored, device),  # as workers will see the model
        check,
        probe_z,
        export=export_program,
        load=load_program,
        source=source,
    )
    return stored, found


def _bundle_meta(cfg: PythonTask, key: str, data_sha: str, model: nn.Module) -> dict[str, Any]:
    cls = type(model)
    return {
        "key": key,
        "data_sha256": data_sha,
        "task": cfg.model_dump(mode="json"),
        "model_class": f"{cls.__module__}.{cls.__qualname__}",
        "model_file": sys.modules[cls.__module__].__file__ or "",
        **({"hf": hf} if (hf := hugging_face.describe(model)) is not None else {}),
    }
