"""Checking an API-format graph against a server's ``/object_info`` before sending it.

ComfyUI validates a prompt only when it is queued, and answers a whole night's batch
with the same 400 if a preset names a sampler the server lacks. Checking a graph
against the server's own ``/object_info`` (or a recorded copy) finds such mistakes up
front, with the same rules ComfyUI applies in ``execution.validate_inputs``: the node
class exists, every required input is present, links point to an existing node's
output of the right type, enum values are in the list and numbers in range.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ObjectInfo = Mapping[str, Mapping[str, Any]]

_NUMBER_TYPES = {"INT": int, "FLOAT": (int, float)}


def check_graph(graph: Mapping[str, Any], object_info: ObjectInfo) -> list[str]:
    """Every way ``graph`` would fail ComfyUI's validation, as ``node.input: reason``.

    Returns an empty list for a graph the server would accept.
    """
    if not isinstance(graph, Mapping):
        return [f"graph must be a mapping of node ids to nodes, got {type(graph).__name__}"]
    problems: list[str] = []
    if not any(_is_output(node, object_info) for node in graph.values()):
        problems.append("graph has no output node")
    for node_id, node in graph.items():
        problems += _check_node(str(node_id), node, graph, object_info)
    return problems


def _is_output(node: Any, object_info: ObjectInfo) -> bool:
    info = object_info.get(node.get("class_type")) if isinstance(node, Mapping) else None
    return bool(info and info.get("output_node"))


def _check_node(node_id: str, node: Any, graph: Mapping[str, Any],
                object_info: ObjectInfo) -> list[str]:
    if not isinstance(node, Mapping) or "class_type" not in node:
        return [f"{node_id}: not a node (needs class_type and inputs)"]
    info = object_info.get(node["class_type"])
    if not info:
        return [f"{node_id}: unknown node class {node['class_type']!r}"]
    inputs = node.get("inputs", {})
    problems = []
    for name, spec in info["input"].get("required", {}).items():
        if name not in inputs:
            problems.append(f"{node_id}.{name}: required input missing")
        else:
            problems += _check_input(f"{node_id}.{name}", inputs[name], spec, graph, object_info)
    for name, spec in info["input"].get("optional", {}).items():
        if name in inputs:
            problems += _check_input(f"{node_id}.{name}", inputs[name], spec, graph, object_info)
    return problems


def _check_input(where: str, value: Any, spec: list[Any], graph: Mapping[str, Any],
                 object_info: ObjectInfo) -> list[str]:
    kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
    if isinstance(value, list):
        return _check_link(where, value, kind, graph, object_info)
    if kind == "COMBO":  # newer spelling of an enum: ["COMBO", {"options": [...]}]
        kind = list(options.get("options") or [])
    if isinstance(kind, list):
        return [] if value in kind else [f"{where}: {value!r} is not one of the allowed values"]
    if kind in _NUMBER_TYPES:
        return _check_number(where, value, kind, options)
    if kind == "STRING":
        return [] if isinstance(value, str) else [f"{where}: expected text, got {value!r}"]
    if kind == "BOOLEAN":
        return [] if isinstance(value, bool) else [f"{where}: expected true/false"]
    return [f"{where}: a {kind} input must be a link [node_id, output_index]"]


def _check_number(where: str, value: Any, kind: str, options: Mapping[str, Any]) -> list[str]:
    if isinstance(value, bool) or not isinstance(value, _NUMBER_TYPES[kind]):
        return [f"{where}: expected {kind}, got {value!r}"]
    if "min" in options and value < options["min"]:
        return [f"{where}: {value} is below the minimum {options['min']}"]
    if "max" in options and value > options["max"]:
        return [f"{where}: {value} is above the maximum {options['max']}"]
    return []


def _check_link(where: str, link: list[Any], kind: Any, graph: Mapping[str, Any],
                object_info: ObjectInfo) -> list[str]:
    if len(link) != 2 or not isinstance(link[1], int) or isinstance(link[1], bool):
        return [f"{where}: a link must be [node_id, output_index], got {link!r}"]
    source, index = link
    node = graph.get(source)
    if not isinstance(node, Mapping):
        return [f"{where}: links to missing node {source!r}"]
    info = object_info.get(node.get("class_type"))
    if not info:
        return []  # reported on the source node itself
    outputs = info.get("output", [])
    if not 0 <= index < len(outputs):
        return [f"{where}: node {source!r} has no output {index}"]
    if outputs[index] != kind and "*" not in (outputs[index], kind):
        return [f"{where}: expects {kind}, node {source!r} output {index} is {outputs[index]}"]
    return []
