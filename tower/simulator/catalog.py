"""The node classes the simulator knows: ComfyUI 0.3.64's recorded ``/object_info``.

The recording lives in ``data/object_info.json`` (compact JSON). The checkpoint list of
``CheckpointLoaderSimple`` is replaced with the simulator's configured checkpoints, so
validation and ``/object_info`` agree with ``/models/checkpoints``.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from importlib import resources
from typing import Any

NodeInfo = dict[str, Any]


@cache
def _recorded() -> dict[str, NodeInfo]:
    text = resources.files("tower.simulator").joinpath("data/object_info.json").read_text("utf-8")
    return json.loads(text)


class Catalog:
    """Node definitions for one simulator instance."""

    def __init__(self, checkpoints: tuple[str, ...]) -> None:
        info = copy.deepcopy(_recorded())
        ckpt = info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"]
        ckpt[0] = list(checkpoints)
        self.nodes: dict[str, NodeInfo] = info
        self.body = json.dumps(info).encode("utf-8")  # GET /object_info, serialised once

    def get(self, class_type: str) -> NodeInfo | None:
        node = self.nodes.get(class_type)
        return node if isinstance(node, dict) else None

    def is_output(self, class_type: str) -> bool:
        node = self.get(class_type)
        return bool(node and node.get("output_node"))

    def output_types(self, class_type: str) -> list[Any]:
        node = self.get(class_type)
        return list(node.get("output", [])) if node else []

    def inputs(self, class_type: str) -> dict[str, list[Any]]:
        """Required and optional inputs (name -> config), required first."""
        node = self.get(class_type) or {}
        spec = node.get("input", {})
        return {**spec.get("required", {}), **spec.get("optional", {})}

    def declared(self, class_type: str) -> set[str]:
        """Every input name the class declares: required, optional and hidden."""
        node = self.get(class_type) or {}
        spec = node.get("input", {})
        return {name for part in ("required", "optional", "hidden")
                for name in spec.get(part, {})}

    def required(self, class_type: str) -> dict[str, list[Any]]:
        node = self.get(class_type) or {}
        return dict(node.get("input", {}).get("required", {}))
