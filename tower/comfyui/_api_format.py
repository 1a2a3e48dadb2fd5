"""How ComfyUI's JSON spells a link and a choice list: one reading for the whole project.

The client's preflight, the render graph (``tower.spec.graph``) and the simulator's
validation and executor all need these two answers. Each used to read them its own way,
and two readings of one format drift apart the day ComfyUI adds a spelling; so they
live here, in the lowest package that needs them (``tower.comfyui`` imports neither the
spec nor the simulator), and everything else calls them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def is_link(value: object) -> bool:
    """Whether a prompt input is a link ``[node_id, output_index]``.

    ComfyUI's own rule (``comfy_execution/graph_utils.py`` ``is_link``), which decides
    what its cache keys and execution treat as an edge: a list of a string and a
    number. Anything else is a constant, however link-like it looks.
    """
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], int | float))


def combo_options(spec: object) -> list[Any] | None:
    """The allowed values of an ``/object_info`` input spec, or None if it is no choice list.

    ComfyUI spells a choice list two ways: ``[[...values...], {...}]`` (older nodes) and
    ``["COMBO", {"options": [...]}]`` (newer ones; ``execution.validate_inputs`` reads
    ``extra_info.get("options", [])``, so a ``COMBO`` without options allows nothing).
    Values come back as the server sent them; callers that compare text convert them.
    """
    if not isinstance(spec, list) or not spec:
        return None
    kind = spec[0]
    if isinstance(kind, list):
        return list(kind)
    if kind != "COMBO":
        return None
    return list(input_extras(spec).get("options") or [])


def input_extras(spec: list[Any]) -> Mapping[str, Any]:
    """The options dict of an ``/object_info`` input spec (``[type, {...}]``), or empty."""
    return spec[1] if len(spec) > 1 and isinstance(spec[1], Mapping) else {}
