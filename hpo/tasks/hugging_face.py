"""A Hugging Face model handed over as a user task: what its export needs beside model.pt.

A `transformers.PreTrainedModel` reaches workers as a `torch.export` program like any
model; its bundle also records the class and the `config.json` (`describe`), so that
`hpo export` can rebuild the class from that config, load the edited state dict into it
(strict) and write `save_pretrained` output (`pretrained_files`): `from_pretrained` on
that folder is the debiased model. transformers is imported only when a bundle names
it (an optional extra: `pip install -e '.[transformers]'`).
"""

from __future__ import annotations

import importlib
import json
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from hpo.errors import UserError


def describe(model: nn.Module) -> dict[str, str] | None:
    """{"class", "config"} of a Hugging Face model (None for any other model)."""
    transformers = sys.modules.get("transformers")
    base = getattr(transformers, "PreTrainedModel", None)
    if base is None or not isinstance(model, base):
        return None
    cls = type(model)
    config = model.config.to_json_string()
    return {"class": f"{cls.__module__}.{cls.__qualname__}", "config": config}


class Pretrained(Protocol):
    """What export uses of a `transformers.PreTrainedModel` (transformers has no types
    under this project's mypy settings)."""

    def save_pretrained(self, save_directory: str) -> None: ...

    @classmethod
    def from_pretrained(cls, path: str) -> nn.Module: ...


def rebuild(hf: Mapping[str, str], state: Mapping[str, torch.Tensor]) -> Pretrained:
    """The model class `hf` names, built from its config, with `state` loaded strictly."""
    try:
        transformers = importlib.import_module("transformers")
    except ImportError:
        raise UserError(
            f"the model is a Hugging Face {hf['class'].rpartition('.')[2]}: exporting it "
            "needs transformers (pip install -e '.[transformers]')"
        ) from None
    module, _, name = hf["class"].rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    config_cls = cls.config_class
    config = config_cls.from_dict(json.loads(hf["config"]))
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # notes on configs it would default otherwise
    try:
        model = cls(config)
    finally:
        transformers.logging.set_verbosity(verbosity)
    model.load_state_dict(dict(state), strict=True)
    pretrained: Pretrained = model.eval()
    return pretrained


def pretrained_files(hf: Mapping[str, str], state: Mapping[str, torch.Tensor]) -> dict[str, bytes]:
    """`save_pretrained` output of the model with `state` (name -> bytes), checked: the
    folder loads with `from_pretrained` into a model with exactly this state."""
    model = rebuild(hf, state)
    with tempfile.TemporaryDirectory(prefix="hpo-hf-") as tmp:
        model.save_pretrained(tmp)
        again = type(model).from_pretrained(tmp).eval()
        files = {p.name: p.read_bytes() for p in sorted(Path(tmp).iterdir()) if p.is_file()}
    loaded = again.state_dict()
    bad = [k for k, v in state.items() if k not in loaded or not torch.equal(loaded[k], v.cpu())]
    if bad:
        raise RuntimeError(f"from_pretrained does not give back the edited {bad[0]}")
    return files
