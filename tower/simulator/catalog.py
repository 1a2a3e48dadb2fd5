"""The node classes the simulator knows: ComfyUI 0.3.64's recorded ``/object_info``.

The recording lives in ``data/object_info.json`` (compact JSON, the parent recording
set). ``data/object_info_production.json`` holds the nodes the production recordings
captured again; where the two disagree (``UpscaleModelLoader``,
``ImageUpscaleWithModel``: old-style specs there, V3 ``COMBO`` specs in the parent set)
the production body wins, as it is the one recorded with model files present.

Model choice lists are filled from the configuration, so validation and ``/object_info``
agree with ``/models/<folder>``. LoadImage's list is the input folder's, read on every
request: the serialised body keeps a placeholder for it and splices the list in, so an
upload shows at once without re-serialising 600 kB.
"""

from __future__ import annotations

import copy
import json
import re
from functools import cache
from importlib import resources
from typing import Any

from tower.simulator.config import SimulatorConfig

NodeInfo = dict[str, Any]

# (node class, input) -> the model folder its choice list comes from.
MODEL_INPUTS = {
    ("CheckpointLoaderSimple", "ckpt_name"): "checkpoints",
    ("CheckpointLoader", "ckpt_name"): "checkpoints",
    ("unCLIPCheckpointLoader", "ckpt_name"): "checkpoints",
    ("ImageOnlyCheckpointLoader", "ckpt_name"): "checkpoints",
    ("CreateHookModelAsLora", "ckpt_name"): "checkpoints",
    ("CreateHookModelAsLoraModelOnly", "ckpt_name"): "checkpoints",
    ("LoraLoader", "lora_name"): "loras",
    ("LoraLoaderModelOnly", "lora_name"): "loras",
    ("CreateHookLora", "lora_name"): "loras",
    ("CreateHookLoraModelOnly", "lora_name"): "loras",
    ("ControlNetLoader", "control_net_name"): "controlnet",
    ("DiffControlNetLoader", "control_net_name"): "controlnet",
    ("UpscaleModelLoader", "model_name"): "upscale_models",
}
# Node classes whose ``image`` list is the input folder: LoadImage lists image files
# only, LoadImageMask every top-level file (nodes.py INPUT_TYPES).
INPUT_LISTS = {"LoadImage": ("image",), "LoadImageMask": None}
_HOLE = "\u0000input files of {}\u0000"
_HOLES = re.compile(r'"\\u0000input files of (\w+)\\u0000"')  # as json.dumps spells one


def _data(name: str) -> Any:
    return json.loads(resources.files("tower.simulator").joinpath(f"data/{name}")
                      .read_text("utf-8"))


@cache
def _recorded() -> dict[str, NodeInfo]:
    info = _data("object_info.json")
    info.update(_data("object_info_production.json"))
    return info


def set_choices(spec: list[Any], values: Any) -> None:
    """Replace a choice list in place, in whichever of ComfyUI's two spellings it uses."""
    if spec and spec[0] == "COMBO":
        spec[1]["options"] = values
    else:
        spec[0] = values


class Catalog:
    """Node definitions for one simulator instance."""

    def __init__(self, config: SimulatorConfig) -> None:
        info = copy.deepcopy(_recorded())
        for (node, name), folder in MODEL_INPUTS.items():
            if node in info:
                set_choices(info[node]["input"]["required"][name], config.models(folder))
        self.nodes: dict[str, NodeInfo] = info
        # The body with a placeholder for each input-folder list, split around them:
        # [text, node, text, node, ..., text]. Only the holed nodes are copied.
        holed = dict(info)
        for node in INPUT_LISTS:
            holed[node] = copy.deepcopy(info[node])
            set_choices(holed[node]["input"]["required"]["image"], _HOLE.format(node))
        self._pieces = _HOLES.split(json.dumps(holed))

    def get(self, class_type: str) -> NodeInfo | None:
        node = self.nodes.get(class_type)
        return node if isinstance(node, dict) else None

    def object_info(self, listing: dict[str, list[str]]) -> bytes:
        """The body of ``GET /object_info``, with ``listing`` (node -> its input-folder
        list, see :data:`INPUT_LISTS`) spliced in."""
        pieces = list(self._pieces)
        pieces[1::2] = [json.dumps(listing[node]) for node in pieces[1::2]]
        return "".join(pieces).encode("utf-8")

    def node_info(self, class_type: str, listing: dict[str, list[str]]) -> NodeInfo | None:
        """``GET /object_info/<class>``'s entry, with its input-folder list if it has one."""
        node = self.get(class_type)
        if node is None or class_type not in listing:
            return node
        node = copy.deepcopy(node)
        set_choices(node["input"]["required"]["image"], listing[class_type])
        return node

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
