"""Cutting an exported model's graph at a layer: a trunk that computes what is live across
the cut, and a head that finishes the forward pass from it.

A user model reaches the service as a `torch.export` program (hpo.tasks.python_factory),
whose `module()` is a `torch.fx.GraphModule` of aten operations, each tagged with the
module that ran it (`nn_module_stack`). The cut is at the decomposed layer: the head is
the layer's operations and every operation that depends on them; the trunk is the rest.
What the head reads from the trunk is the layer's input and whatever else crosses the
cut (a transformer's residual stream, its attention mask, the positions a classifier
pools at): those values, one row per sample, are what a bundle caches. Values that do
not depend on the data (positions, causal masks, sizes) are recomputed in the head
instead, so the head gives the same logits on any batch of samples.

The split refuses (`CannotSplit`, one line saying why) where it cannot promise that:
a layer called twice, a value crossing the cut that is not one row per sample, a
program exported with a fixed batch size. The caller then falls back to the whole model.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import fx

LAYER_INPUT = "z"  # the name of the layer's input among the values crossing the cut

_SHAPE_OPS = {
    torch.ops.aten.sym_size.int,
    torch.ops.aten.sym_numel.default,
    torch.ops.aten.sym_stride.int,
    torch.ops.aten.sym_storage_offset.default,
}


class CannotSplit(Exception):
    """The graph cannot be cut at the layer; the message says why, in one line."""


@dataclass(frozen=True)
class GraphSplit:
    """The model cut at a layer.

    trunk: x -> (the layer's input, *the other values crossing the cut), in `names` order.
    head: (*values in `names` order) -> logits.
    names: the values crossing the cut; names[0] is LAYER_INPUT, the others are the
        graph's node names (stable for one program: a worker splitting the same program
        finds the same names).
    overridable: the parameter and buffer names (the base model's state-dict keys) only
        the head reads: replacing one of them in the head is replacing it in the model.
    """

    trunk: fx.GraphModule
    head: fx.GraphModule
    names: tuple[str, ...]
    overridable: frozenset[str]


def split_at(program: fx.GraphModule, layer: str, logits_leaf: int = 0) -> GraphSplit:
    """Cut `program` (an exported model's `module()`) at the input of module `layer`.
    `logits_leaf`: which of the graph's flat outputs is the logits."""
    nodes = list(program.graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise CannotSplit(f"the model takes {len(placeholders)} inputs, not one tensor")
    batch = _batch_symbol(placeholders[0])
    output = next(n for n in nodes if n.op == "output")
    leaves = output.args[0] if isinstance(output.args[0], (tuple, list)) else (output.args[0],)
    logits = leaves[logits_leaf]
    inside, layer_input = _layer_operations(nodes, layer)
    if not isinstance(logits, fx.Node) or logits not in _descendants(inside):
        raise CannotSplit(f"the logits do not depend on {layer!r}")
    head_nodes = _descendants(inside) & _ancestors(logits)
    head, crossing = _head_graph(nodes, head_nodes, layer_input, logits, batch)
    trunk = _trunk_graph(nodes, head_nodes, crossing)
    head_module = _pruned(program, head, "Head")
    trunk_module = _pruned(program, trunk, "Trunk")
    names = (LAYER_INPUT, *(n.name for n in crossing[1:]))
    return GraphSplit(
        trunk=trunk_module,
        head=head_module,
        names=names,
        overridable=frozenset(_attrs_read(head_module.graph) - _attrs_read(trunk_module.graph)),
    )


def _layer_operations(nodes: list[fx.Node], layer: str) -> tuple[list[fx.Node], fx.Node]:
    """The operations that run in module `layer`, and the one tensor they are called on."""
    inside = [n for n in nodes if n.op == "call_function" and _runs_in(n, layer)]
    if not inside:
        raise CannotSplit(f"no operation of {layer!r} in the exported graph")
    inside_set = set(inside)
    entries = {
        a
        for n in inside
        for a in n.all_input_nodes
        if a not in inside_set and a.op != "get_attr" and _is_tensor(a)
    }
    if len(entries) != 1:
        raise CannotSplit(
            f"{layer!r} is called on {len(entries)} different tensors (is it called twice?)"
        )
    (layer_input,) = entries
    return inside, layer_input


def _head_graph(
    nodes: list[fx.Node],
    head_nodes: set[fx.Node],
    layer_input: fx.Node,
    logits: fx.Node,
    batch: object,
) -> tuple[fx.Graph, list[fx.Node]]:
    """The head's graph, and the trunk's nodes whose values cross the cut into it (the
    layer's input first, then in the order the head meets them)."""
    data_dependent = _data_dependent(nodes)
    head = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    crossing: list[fx.Node] = [layer_input]
    z = head.placeholder(LAYER_INPUT)
    z.meta = dict(layer_input.meta)
    env[layer_input] = z
    _check_one_row_per_sample(layer_input, batch)
    later: list[tuple[fx.Node, fx.Node]] = []

    def bring(node: fx.Node) -> fx.Node:
        """`node` in the head: carried across the cut, recomputed there, or a constant."""
        if node in env:
            return env[node]
        if isinstance(node.meta.get("val"), torch.SymInt):
            env[node] = _size_in_head(head, node, z, batch)
        elif node.op == "get_attr" or not data_dependent[node]:
            env[node] = head.node_copy(node, bring)
        else:
            if not _is_tensor(node):
                raise CannotSplit(f"{node.name} crosses the cut and is not a tensor")
            _check_one_row_per_sample(node, batch)
            value = head.placeholder(node.name)
            value.meta = dict(node.meta)
            later.append((node, value))
            crossing.append(node)
            env[node] = value
        return env[node]

    for node in nodes:
        if node in head_nodes and node.op != "output":
            env[node] = head.node_copy(node, bring)
    head.output(env[logits])
    # placeholders first, in the order the values were met (after z)
    _move_placeholders_first(head, [z] + [v for _, v in later])
    return head, crossing


def _trunk_graph(
    nodes: list[fx.Node], head_nodes: set[fx.Node], crossing: list[fx.Node]
) -> fx.Graph:
    """Everything outside the head, returning the values that cross the cut."""
    trunk = fx.Graph()
    tenv: dict[fx.Node, fx.Node] = {}
    for node in nodes:
        if node.op == "output" or node in head_nodes:
            continue
        tenv[node] = trunk.node_copy(node, lambda a: tenv[a])
    trunk.output(tuple(tenv[n] for n in crossing))
    return trunk


def _pruned(program: fx.GraphModule, graph: fx.Graph, name: str) -> fx.GraphModule:
    """`graph` as a module with `program`'s attributes, without the operations nothing uses."""
    module = fx.GraphModule(program, graph, class_name=name)
    module.graph.eliminate_dead_code()
    module.delete_all_unused_submodules()
    module.recompile()
    return module


def _runs_in(node: fx.Node, layer: str) -> bool:
    stack = node.meta.get("nn_module_stack") or {}
    return any(path == layer for path, _ in stack.values())


def _is_tensor(node: fx.Node) -> bool:
    return isinstance(node.meta.get("val"), torch.Tensor)


def _batch_symbol(placeholder: fx.Node) -> object:
    val = placeholder.meta.get("val")
    if not isinstance(val, torch.Tensor) or val.dim() == 0:
        raise CannotSplit("the model's input is not a tensor with a sample dimension")
    size = val.shape[0]
    if not isinstance(size, torch.SymInt):
        raise CannotSplit("the model was exported with a fixed batch size")
    return size.node.expr


def _check_one_row_per_sample(node: fx.Node, batch: object) -> None:
    """A value crossing the cut must have the sample as its first dimension, and only
    there: it is cached per sample and sliced into batches."""
    shape = node.meta["val"].shape
    first = shape[0] if len(shape) else None
    rest = [s for s in shape[1:] if isinstance(s, torch.SymInt)]
    if not isinstance(first, torch.SymInt) or first.node.expr != batch or rest:
        raise CannotSplit(
            f"{node.name} (shape {tuple(shape)}) crosses the cut without the sample as its "
            "first dimension"
        )


def _size_in_head(head: fx.Graph, node: fx.Node, z: fx.Node, batch: object) -> fx.Node:
    """A size crossing the cut, recomputed in the head: the batch size is z's first one."""
    expr = node.meta["val"].node.expr
    if expr == batch:
        size = head.call_function(torch.ops.aten.sym_size.int, (z, 0))
        size.meta = dict(node.meta)
        return size
    if getattr(expr, "is_number", False):
        return int(expr)  # type: ignore[return-value]  # a constant: fx takes it as an argument
    raise CannotSplit(f"the size {node.name} = {expr} crosses the cut")


def _descendants(start: Iterable[fx.Node]) -> set[fx.Node]:
    seen: set[fx.Node] = set()
    todo = list(start)
    while todo:
        node = todo.pop()
        if node in seen:
            continue
        seen.add(node)
        todo.extend(node.users)
    return seen


def _ancestors(node: fx.Node) -> set[fx.Node]:
    seen: set[fx.Node] = set()
    todo = [node]
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(n.all_input_nodes)
    return seen


def _data_dependent(nodes: list[fx.Node]) -> dict[fx.Node, bool]:
    """Whether each node's value depends on the input's values (not only its size)."""
    out: dict[fx.Node, bool] = {}
    for node in nodes:
        if node.op == "placeholder":
            out[node] = True
        elif node.op == "get_attr" or node.target in _SHAPE_OPS:
            out[node] = False
        else:
            out[node] = any(out.get(a, False) for a in node.all_input_nodes)
    return out


def _move_placeholders_first(graph: fx.Graph, placeholders: list[fx.Node]) -> None:
    """The head's inputs first, in this order (each prepended before the first other node)."""
    anchor = next(n for n in graph.nodes if n.op != "placeholder" or n not in placeholders)
    for p in placeholders:
        if p is not anchor:
            anchor.prepend(p)


def _attrs_read(graph: fx.Graph) -> set[str]:
    return {str(n.target) for n in graph.nodes if n.op == "get_attr" and n.users}
