"""Where a user model is cut for scoring: at its decomposed layer, found once per bundle.

Three ways, tried in this order:

1. the user's own `UserTask.head` (the layer's input to the logits), exported beside
   the model and checked once against the whole model on probe rows: a mismatch is the
   user's error, one line naming the field;
2. a graph split of the exported model (hpo.models.graph_split), checked the same way;
3. else the whole model, rerun on the raw inputs at every fit step and every α: slower
   by the trunk's cost, and said once, with why (`WholeModelScoring`).

The bundle stores which one it took, the values that cross the cut (per split, by
name), and a few probe rows' logits; a worker rebuilds the head from the stored program
and checks it against those logits before it scores anything with it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import fx, nn
from torch.utils._pytree import tree_leaves

from hpo.errors import UserError
from hpo.models.graph_split import LAYER_INPUT, CannotSplit, split_at
from hpo.models.head import Head, UserHeadModule, logits_of
from hpo.models.model_inputs import ModelInputs, call_model, take, to_device
from hpo.tasks.user import UserTask

CHECK_ROWS = 8  # probe rows the head is checked on against the whole model
Kind = Literal["user_head", "graph_split", "whole_model"]
Exporter = Callable[[nn.Module, torch.Tensor, str], bytes]  # (module, example, source) -> program
Loader = Callable[[torch.Tensor, torch.device], nn.Module]  # stored program -> its module


class WholeModelScoring(UserWarning):
    """Scoring reruns the whole model at every step: no head was found (the message says why)."""


@dataclass
class Cut:
    """How a user model is scored: `head` from the values crossing the cut (None: the
    whole model, for the reason `why`); `trunk` computes those values from model inputs."""

    kind: Kind
    head: Head | None
    why: str = ""
    trunk: Callable[[torch.Tensor], tuple[torch.Tensor, ...]] | None = None
    payload: dict[str, Any] = field(default_factory=dict)  # stored beside the model

    def meta(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "why": self.why,
            "inputs": list(self.head.inputs) if self.head is not None else [],
        }


def find_cut(
    task: UserTask,
    program: fx.GraphModule,
    probe_x: ModelInputs,
    probe_z: torch.Tensor,
    *,
    export: Exporter,
    load: Loader,
    source: str,
) -> Cut:
    """The cut for `task`, whose model is `program` (its exported module); `probe_x` and
    `probe_z`: the model's and the layer's inputs on the first probe rows. Raises a
    UserError for a user head that does not reproduce the model."""
    x = to_device(take(probe_x, slice(0, CHECK_ROWS)), probe_z.device)
    z = probe_z[:CHECK_ROWS]
    with torch.no_grad():
        whole = logits_of(call_model(task.model, x))
    if task.head is not None:
        cut = _checked_user_head(task, x, z, whole, export=export, load=load, source=source)
    elif not isinstance(x, torch.Tensor):
        cut = Cut(
            "whole_model",
            None,
            why="the model takes keyword inputs; the graph split reads one tensor",
        )
    else:
        cut = _checked_graph_split(program, task.layer, x, z, whole)
    if cut.head is not None:
        cut.payload["check"] = {"logits": whole, "rows": torch.tensor(len(x))}
    return cut


def _checked_user_head(
    task: UserTask,
    x: ModelInputs,
    z: torch.Tensor,
    whole: torch.Tensor,
    *,
    export: Exporter,
    load: Loader,
    source: str,
) -> Cut:
    """The user's head, exported and loaded as workers will; a UserError where its logits
    on the check rows are not the whole model's (`whole`)."""
    cut = _user_head(task, z, export=export, load=load, source=source)
    with torch.no_grad():
        got = cut.head(_values(cut, x, z)) if cut.head is not None else None
    if got is None or not _close(got, whole):
        diff = (
            "a different shape"
            if got is None or got.shape != whole.shape
            else (f"max |difference| {float((got - whole).abs().max()):.3g}")
        )
        raise UserError(
            f"{source}: UserTask.head: its logits on {len(x)} probe rows differ from the "
            f"model's ({diff}); it must map the input of layer {task.layer!r} to the "
            "model's logits, through the model's own modules"
        )
    return cut


def _checked_graph_split(
    program: fx.GraphModule, layer: str, x: torch.Tensor, z: torch.Tensor, whole: torch.Tensor
) -> Cut:
    """The graph split, or the whole model (with why) where its logits on the check rows
    are not the whole model's (`whole`)."""
    cut = _graph_split(program, layer, x)
    if cut.head is not None:
        with torch.no_grad():
            got = cut.head(_values(cut, x, z))
        if not _close(got, whole):
            cut = Cut(
                "whole_model",
                None,
                why=f"the graph split's logits differ from the model's by "
                f"{float((got - whole).abs().max()):.3g}",
            )
    return cut


def _user_head(
    task: UserTask, z: torch.Tensor, *, export: Exporter, load: Loader, source: str
) -> Cut:
    module = UserHeadModule(task.model, task.head).eval()
    try:
        with torch.no_grad():
            module(z[:2])
    except Exception as err:
        raise UserError(
            f"{source}: UserTask.head raised {type(err).__name__} on the layer's input "
            f"{tuple(z[:2].shape)}: {str(err).strip().splitlines()[0] if str(err) else ''}"
        ) from None
    data = export(module, z[:2], f"{source}: UserTask.head")
    stored = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    cut = user_head_cut(load(stored, z.device))
    cut.payload["head_program"] = stored
    return cut


def user_head_cut(program: nn.Module) -> Cut:
    """A loaded user-head program as a cut: it takes the layer's input alone."""
    read = _attrs_read(program)
    prefix = "model."
    return Cut(
        "user_head",
        Head(
            module=program,
            inputs=(LAYER_INPUT,),
            overridable=frozenset(k[len(prefix) :] for k in read if k.startswith(prefix)),
            source="UserTask.head",
            prefix=prefix,
        ),
    )


def _graph_split(program: fx.GraphModule, layer: str, x: torch.Tensor) -> Cut:
    try:
        with torch.no_grad():
            out = program(x[:2])
        logits = logits_of(out)
        leaf = next(i for i, t in enumerate(tree_leaves(out)) if t is logits)
        split = split_at(program, layer, leaf)
    except CannotSplit as err:
        return Cut("whole_model", None, why=f"the exported graph cannot be cut there: {err}")
    except StopIteration:
        return Cut("whole_model", None, why="the logits are not one of the model's outputs")
    head = Head(
        module=split.head,
        inputs=split.names,
        overridable=split.overridable,
        source="a graph split of the exported model",
    )
    return Cut("graph_split", head, trunk=split.trunk, payload={"logits_leaf": torch.tensor(leaf)})


def graph_split_cut(program: fx.GraphModule, layer: str, leaf: int) -> Cut:
    """The graph split a bundle recorded, made again from the same program (a worker)."""
    split = split_at(program, layer, leaf)
    head = Head(split.head, split.names, split.overridable, "a graph split of the exported model")
    return Cut("graph_split", head, trunk=split.trunk)


@torch.no_grad()
def carried(cut: Cut, x: ModelInputs, batch_size: int = 1024) -> dict[str, torch.Tensor]:
    """The values besides the layer's input that cross the cut, on model inputs `x` (a
    graph split's trunk reads one tensor: only a cut of a tensor-input model carries)."""
    if cut.head is None or cut.trunk is None or len(cut.head.inputs) == 1:
        return {}
    assert isinstance(x, torch.Tensor)
    parts = [cut.trunk(x[i : i + batch_size])[1:] for i in range(0, len(x), batch_size)]
    names = cut.head.inputs[1:]
    return {name: torch.cat([p[j] for p in parts]) for j, name in enumerate(names)}


def check_loaded(cut: Cut, values: dict[str, torch.Tensor], stored: dict[str, Any]) -> None:
    """A rebuilt head must give the logits recorded when the bundle was made."""
    assert cut.head is not None
    missing = sorted(set(cut.head.inputs) - set(values))
    if missing:
        raise RuntimeError(
            f"the head rebuilt from the bundle reads {', '.join(missing)}, which the bundle "
            "does not cache; rebuild the bundle (delete it from the cache)"
        )
    rows = int(stored["rows"])
    got = cut.head({k: v[:rows] for k, v in values.items()})
    if not _close(got, stored["logits"].to(got.device)):
        raise RuntimeError(
            f"the head rebuilt from the bundle ({cut.head.source}) does not give the logits "
            "recorded with it; rebuild the bundle (delete it from the cache)"
        )


def warn_whole_model(why: str, layer: str) -> None:
    warnings.warn(
        f"scoring runs the whole model on the raw inputs at every fit step and α (no head "
        f"from layer {layer!r}: {why}); give UserTask.head to run from the layer",
        WholeModelScoring,
        stacklevel=3,
    )


def _values(cut: Cut, x: ModelInputs, z: torch.Tensor) -> dict[str, torch.Tensor]:
    return {LAYER_INPUT: z, **carried(cut, x)}


def _close(got: torch.Tensor, want: torch.Tensor) -> bool:
    if got.shape != want.shape:
        return False
    scale = 1.0 + float(want.abs().max())
    return bool((got - want).abs().max() <= 1e-4 * scale)


def _attrs_read(module: nn.Module) -> set[str]:
    graph = getattr(module, "graph", None)
    if graph is None:
        return {k for k, _ in module.named_parameters()} | {k for k, _ in module.named_buffers()}
    return {str(n.target) for n in graph.nodes if n.op == "get_attr" and n.users}
