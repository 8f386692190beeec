"""A Hugging Face sequence classifier and its tokenizer, from a local folder.

`transformers` is optional (`pip install -e '.[transformers]'`) and imported only here.
The folder is what `save_pretrained` writes (config, weights, tokenizer files); it is
read with `local_files_only=True`, so nothing downloads. The model returns its logits as
a tensor (hpo.models.final_layer.logits_output). A worker rebuilds the same model from
the stored config and state dict, without the folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from hpo.errors import UserError
from hpo.models.final_layer import logits_output


def transformers_module() -> Any:
    try:
        import transformers
    except ImportError:
        raise UserError(
            "task.model: transformers is not installed; pip install -e '.[transformers]'"
        ) from None
    # transformers' logging helpers are unannotated (unused where it is not installed)
    transformers.logging.set_verbosity_error()  # type: ignore[no-untyped-call, unused-ignore]
    return transformers


def text_classifier(path: Path) -> tuple[nn.Module, Any, dict[str, Any]]:
    """(model in eval mode, tokenizer, its config as a dict) from the folder `path`."""
    if not path.is_dir():
        why = "is a file" if path.exists() else "does not exist"
        raise UserError(
            f"task.model: {path} {why}; give the folder save_pretrained wrote (model and tokenizer)"
        )
    tf = transformers_module()
    try:
        tokenizer = tf.AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as err:
        raise UserError(f"task.model: no tokenizer in {path} ({_first(err)})") from None
    try:
        model = tf.AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True)
    except Exception as err:
        raise UserError(f"task.model: no sequence classifier in {path} ({_first(err)})") from None
    return logits_output(model.eval()), tokenizer, model.config.to_dict()


def rebuild_classifier(config: dict[str, Any]) -> nn.Module:
    """The same architecture from its stored config, untrained (load its state next)."""
    tf = transformers_module()
    fields = dict(config)
    cfg = tf.AutoConfig.for_model(fields.pop("model_type"), **fields)
    return logits_output(tf.AutoModelForSequenceClassification.from_config(cfg).eval())


def _first(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:200]
