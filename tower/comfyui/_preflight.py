"""Checking graphs against ``/object_info`` before a night's work starts.

A missing checkpoint found at 02:00 on the fortieth batch wastes the night; found
before the first submission it is one clear message. Every problem is collected, so a
single :class:`ComfyUIPreflightError` lists everything missing together with what the
server does have.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

from tower.comfyui._api_format import combo_options, input_extras, is_link
from tower.comfyui._exceptions import ComfyUIPreflightError

NODE_CLASSES = "node classes"
_CATEGORIES = {"ckpt_name": "checkpoints", "sampler_name": "samplers",
               "scheduler": "schedulers", "lora_name": "loras",
               "control_net_name": "controlnet", "model_name": "upscale_models"}
_SHOW_AVAILABLE = 40


def combo_inputs(object_info: Mapping[str, Any], class_type: str) -> dict[str, list[str]]:
    """``{input name: allowed values, as text}`` for every combo input of a node class.

    Upload inputs (LoadImage's ``image``) are left out: ComfyUI validates them by file
    existence only (the node's ``VALIDATE_INPUTS``), and the pipeline uploads the files
    after this check, so the list is no rule for them.
    """
    info = object_info.get(class_type) or {}
    inputs = info.get("input") or {}
    found: dict[str, list[str]] = {}
    for section in ("required", "optional"):
        for name, spec in (inputs.get(section) or {}).items():
            options = combo_options(spec)
            if options is not None and not input_extras(spec).get("image_upload"):
                found[name] = [str(v) for v in options]
    return found


def find_missing(object_info: Mapping[str, Any], graphs: Iterable[Mapping[str, Any]],
                 ) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(missing, available): per category, the values graphs need that the server lacks,
    and the values it offers. Categories are checkpoints, samplers, schedulers, node
    classes, and ``Class.input`` for any other combo input."""
    missing: dict[str, list[str]] = {}
    available: dict[str, list[str]] = {}
    for graph in graphs:
        for node in graph.values():
            class_type = str(node.get("class_type"))
            if class_type not in object_info:
                missing.setdefault(NODE_CLASSES, [])
                if class_type not in missing[NODE_CLASSES]:
                    missing[NODE_CLASSES].append(class_type)
                continue
            combos = combo_inputs(object_info, class_type)
            for name, value in (node.get("inputs") or {}).items():
                if name not in combos or is_link(value) or str(value) in combos[name]:
                    continue
                category = _CATEGORIES.get(name, f"{class_type}.{name}")
                available.setdefault(category, combos[name])
                if str(value) not in missing.setdefault(category, []):
                    missing[category].append(str(value))
    return missing, available


def _line(category: str, values: list[str], offered: list[str], classes: list[str]) -> str:
    line = f"{category}: missing {', '.join(repr(v) for v in values)}"
    if category == NODE_CLASSES:
        close = sorted({m for v in values for m in difflib.get_close_matches(v, classes, 3)})
        hint = f"; similar: {', '.join(close)}" if close else ""
        return f"{line} (server has {len(classes)} node classes{hint})"
    shown = ", ".join(offered[:_SHOW_AVAILABLE])
    more = f", ... ({len(offered)} in all)" if len(offered) > _SHOW_AVAILABLE else ""
    return f"{line} (available: {shown or 'none'}{more})"


def check_graphs(object_info: Mapping[str, Any], graphs: Iterable[Mapping[str, Any]],
                 server: str) -> None:
    """Raise one :class:`ComfyUIPreflightError` listing everything missing on ``server``."""
    missing, available = find_missing(object_info, graphs)
    if not missing:
        return
    classes = sorted(object_info)
    lines = [_line(cat, vals, available.get(cat, []), classes) for cat, vals in missing.items()]
    raise ComfyUIPreflightError(f"{server} cannot render these graphs:\n  " + "\n  ".join(lines),
                                missing=missing)
