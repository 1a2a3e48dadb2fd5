"""Prompt validation with ComfyUI's rules and error bodies (``execution.validate_prompt``).

The simulator must refuse exactly what ComfyUI 0.3.64 refuses, with the same JSON, so a
client tested here handles the real server's 400s. Like ComfyUI, validation coerces
values in place (``"steps": "4"`` becomes ``4``) and drops output nodes whose branch is
invalid while still queueing the valid ones (a 200 with non-empty ``node_errors``).
Like ``execution.validate_inputs``, only the inputs a class declares are checked: an
undeclared key is no error and stays in the queued prompt untouched. A class with
``VALIDATE_INPUTS`` (LoadImage) gets no range or choice check on the inputs that function
takes, only its own test: the file exists (fact 10 of the production recordings).
Anything that makes ComfyUI raise (a prompt that is a string, a node that is a number)
raises here too; the HTTP layer turns that into its text/plain 500.
"""

from __future__ import annotations

import sys
import traceback
from dataclasses import dataclass, field
from typing import Any

from tower.comfyui import combo_options
from tower.simulator.catalog import Catalog
from tower.simulator.folders import Folders

Prompt = dict[str, Any]
Verdict = tuple[bool, list[dict[str, Any]], str]
# Classes with VALIDATE_INPUTS(image): the inputs it takes.
CUSTOM_VALIDATED = {"LoadImage": ("image",), "LoadImageMask": ("image",)}


@dataclass
class Validation:
    """The outcome: ``ok`` with the outputs to execute, or the error body parts."""

    ok: bool
    error: dict[str, Any] | None = None
    outputs: list[str] = field(default_factory=list)
    node_errors: dict[str, Any] = field(default_factory=dict)


def _error(kind: str, message: str, details: str = "") -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": {}}


def _has_class_type(node: Any) -> bool:
    if isinstance(node, dict | list | str):
        return "class_type" in node
    raise TypeError(f"argument of type {type(node).__name__!r} is not iterable")


def validate_prompt(catalog: Catalog, prompt: Any, targets: list[str] | None = None,
                    folders: Folders | None = None) -> Validation:
    """Validate (and coerce in place) an API-format prompt.

    ``folders`` are the server's, for LoadImage's file check; without them (a graph
    checked offline) that check is skipped and any file name passes.

    Raises:
        TypeError: where ComfyUI itself would crash (the server answers 500).
    """
    if isinstance(prompt, list):
        if prompt:
            prompt[0]["class_type"]  # ComfyUI indexes a list with its items and crashes
        return Validation(False, _error("prompt_no_outputs", "Prompt has no outputs"))
    if not isinstance(prompt, dict):
        raise TypeError(f"string indices must be integers, not {type(prompt).__name__!r}")
    outputs = []
    for node_id, node in prompt.items():
        if not _has_class_type(node):
            return Validation(False, _error(
                "invalid_prompt", "Cannot execute because a node is missing the class_type "
                "property.", f"Node ID '#{node_id}'"))
        class_type = node["class_type"]
        if catalog.get(class_type) is None:
            return Validation(False, _error(
                "invalid_prompt", f"Cannot execute because node {class_type} does not exist.",
                f"Node ID '#{node_id}'"))
        if catalog.is_output(class_type) and (targets is None or node_id in targets):
            outputs.append(node_id)
    if not outputs:
        return Validation(False, _error("prompt_no_outputs", "Prompt has no outputs"))
    return _validate_outputs(_Checker(catalog, folders), prompt, sorted(outputs))


@dataclass(frozen=True)
class _Checker:
    catalog: Catalog
    folders: Folders | None


def _validate_outputs(checker: _Checker, prompt: Prompt, outputs: list[str]) -> Validation:
    validated: dict[str, Verdict] = {}
    good: list[str] = []
    failures: list[tuple[str, list[dict[str, Any]]]] = []
    node_errors: dict[str, Any] = {}
    for output in outputs:
        try:
            ok, reasons, _ = _validate_node(checker, prompt, output, validated)
        except Exception as ex:
            ok, reasons = False, [_exception_reason(
                "exception_during_validation", "Exception when validating node", ex, {})]
            validated[output] = (False, reasons, output)
        if ok:
            good.append(output)
            continue
        failures.append((output, reasons))
        for node_id, (node_ok, node_reasons, _) in validated.items():
            if node_ok or not node_reasons:
                continue
            entry = node_errors.setdefault(node_id, {
                "errors": node_reasons, "dependent_outputs": [],
                "class_type": prompt[node_id]["class_type"]})
            entry["dependent_outputs"].append(output)
    if good:
        return Validation(True, None, good, node_errors)
    details = "\n".join(f"{r['message']}: {r['details']}" for _, rs in failures for r in rs)
    error = _error("prompt_outputs_failed_validation", "Prompt outputs failed validation",
                   details)
    return Validation(False, error, [], node_errors)


def _exception_reason(kind: str, message: str, ex: Exception,
                      extra: dict[str, Any]) -> dict[str, Any]:
    tb = sys.exc_info()[2]
    return {"type": kind, "message": message, "details": str(ex), "extra_info": {
        **extra, "exception_message": str(ex), "exception_type": type(ex).__name__,
        "traceback": traceback.format_tb(tb)}}


def _validate_node(checker: _Checker, prompt: Prompt, node_id: str,
                   validated: dict[str, Verdict]) -> Verdict:
    if node_id in validated:
        return validated[node_id]
    catalog = checker.catalog
    node = prompt[node_id]
    inputs = node.setdefault("inputs", {})
    class_type = node["class_type"]
    required = catalog.required(class_type)
    custom = CUSTOM_VALIDATED.get(class_type, ())
    errors: list[dict[str, Any]] = []
    valid = True
    for name, config in catalog.inputs(class_type).items():
        if name not in inputs:
            if name in required:
                errors.append({"type": "required_input_missing",
                               "message": "Required input is missing", "details": name,
                               "extra_info": {"input_name": name}})
            continue
        info = [config[0], config[1] if len(config) > 1 else {}]
        # Not is_link: ComfyUI validates any list as an attempted link, so a list of the
        # wrong shape gets bad_linked_input instead of passing as a constant.
        if isinstance(inputs[name], list):
            link_error, link_ok = _check_link(checker, prompt, name, info, inputs[name],
                                              validated)
            if link_error:
                errors.append(link_error)
            valid = valid and link_ok
            continue
        error = _check_value(inputs, name, info, checked=name not in custom)
        if error:
            errors.append(error)
    errors.extend(_custom_errors(checker.folders, custom, inputs))
    verdict = (not errors and valid, errors, node_id)
    validated[node_id] = verdict
    return verdict


def _types_match(received: Any, expected: Any) -> bool:
    if received == expected or not isinstance(received, str) or not isinstance(expected, str):
        return True
    if "*" in (received, expected):
        return True
    return bool({t.strip() for t in received.split(",")} & {t.strip() for t in expected.split(",")})


def _custom_errors(folders: Folders | None, names: tuple[str, ...],
                   inputs: dict[str, Any]) -> list[dict[str, Any]]:
    """LoadImage's ``VALIDATE_INPUTS``: ``"Invalid image file: <name>"`` unless it exists."""
    errors = []
    for name in names:
        value = inputs.get(name)
        if folders is None or name not in inputs or isinstance(value, list):
            continue
        if not folders.exists_annotated(value):
            errors.append({"type": "custom_validation_failed",
                           "message": "Custom validation failed for node",
                           "details": f"{name} - Invalid image file: {value}",
                           "extra_info": {"input_name": name}})
    return errors


def _check_link(checker: _Checker, prompt: Prompt, name: str, info: list[Any], link: list[Any],
                validated: dict[str, Verdict]) -> tuple[dict[str, Any] | None, bool]:
    """Check one linked input; returns (error for this node, whether the link is valid)."""
    catalog = checker.catalog
    if len(link) != 2:
        return ({"type": "bad_linked_input", "message": "Bad linked input, must be a length-2 "
                 "list of [node_id, slot_index]", "details": name,
                 "extra_info": {"input_name": name, "input_config": info,
                                "received_value": link}}, False)
    source = link[0]
    received = catalog.output_types(prompt[source]["class_type"])[link[1]]
    if not _types_match(received, info[0]):
        return ({"type": "return_type_mismatch",
                 "message": "Return type mismatch between linked nodes",
                 "details": f"{name}, received_type({received}) mismatch input_type({info[0]})",
                 "extra_info": {"input_name": name, "input_config": info,
                                "received_type": received, "linked_node": link}}, False)
    try:
        ok, _, _ = _validate_node(checker, prompt, source, validated)
    except Exception as ex:
        # ComfyUI files this under the linked node, naming this node's input.
        reason = _exception_reason("exception_during_inner_validation",
                                   "Exception when validating inner node", ex,
                                   {"input_name": name, "input_config": info,
                                    "linked_node": link})
        validated[source] = (False, [reason], source)
        return None, False
    return None, ok


_CONVERT = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}


def _check_value(inputs: dict[str, Any], name: str, info: list[Any],
                 checked: bool = True) -> dict[str, Any] | None:
    """Coerce ``inputs[name]`` like ComfyUI and check its bounds and choices (unless
    ``checked`` is False: an input the class's ``VALIDATE_INPUTS`` takes)."""
    kind = info[0]
    val = inputs[name]
    if isinstance(val, dict) and "__value__" in val:
        val = inputs[name] = val["__value__"]
    convert = _CONVERT.get(kind) if isinstance(kind, str) else None
    if convert is not None:
        try:
            val = inputs[name] = convert(val)
        except Exception as ex:
            return {"type": "invalid_input_type",
                    "message": f"Failed to convert an input value to a {kind} value",
                    "details": f"{name}, {val}, {ex}",
                    "extra_info": {"input_name": name, "input_config": info,
                                   "received_value": val, "exception_message": str(ex)}}
    if not checked:
        return None
    bounds = _check_bounds(name, info, val)
    if bounds:
        return bounds
    return _check_choice(name, info, val)


def _check_bounds(name: str, info: list[Any], val: Any) -> dict[str, Any] | None:
    extra = info[1]
    extra_info = {"input_name": name, "input_config": info, "received_value": val}
    try:
        if "min" in extra and val < extra["min"]:
            return {"type": "value_smaller_than_min",
                    "message": f"Value {val} smaller than min of {extra['min']}",
                    "details": name, "extra_info": extra_info}
        if "max" in extra and val > extra["max"]:
            return {"type": "value_bigger_than_max",
                    "message": f"Value {val} bigger than max of {extra['max']}",
                    "details": name, "extra_info": extra_info}
    except TypeError:
        return None
    return None


def _check_choice(name: str, info: list[Any], val: Any) -> dict[str, Any] | None:
    options = combo_options(info)
    if options is None or val in options:
        return None
    config: list[Any] | None = info
    listed = str(options)
    if len(options) > 20:
        listed, config = f"(list of length {len(options)})", None
    return {"type": "value_not_in_list", "message": "Value not in list",
            "details": f"{name}: '{val}' not in {listed}",
            "extra_info": {"input_name": name, "input_config": config, "received_value": val}}
