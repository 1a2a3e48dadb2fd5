"""The one reading of ComfyUI's link and choice-list spellings, by table."""

from __future__ import annotations

import json

import pytest
from paths import CONTRACT

from tower.comfyui import combo_options, is_link

FULL_INFO = json.loads((CONTRACT / "object_info_full.json").read_text())


@pytest.mark.parametrize(("value", "link"), [
    (["checkpoint", 0], True),
    (["checkpoint", 2.0], True),        # graph_utils.is_link accepts a float index
    ([1, 0], False),                    # node ids are strings
    (["checkpoint", "0"], False),
    (["checkpoint"], False),
    (["checkpoint", 0, 1], False),
    (("checkpoint", 0), False),         # JSON has no tuples; ComfyUI checks for a list
    ("checkpoint", False),
    (7, False),
])
def test_is_link_follows_comfyuis_rule(value: object, link: bool) -> None:
    assert is_link(value) is link


@pytest.mark.parametrize(("spec", "options"), [
    ([["a", "b"], {"tooltip": "x"}], ["a", "b"]),
    ([[1, 2]], [1, 2]),                                   # values come back as sent
    (["COMBO", {"options": ["x", "y"]}], ["x", "y"]),
    (["COMBO", {"image_upload": True}], []),              # no options: nothing allowed
    (["COMBO"], []),
    (["INT", {"default": 0}], None),
    (["MODEL"], None),
    ([], None),
    ("COMBO", None),
])
def test_combo_options_reads_both_spellings(spec: object, options: list | None) -> None:
    assert combo_options(spec) == options


def test_the_recorded_server_uses_both_spellings() -> None:
    """Why both matter: ComfyUI 0.3.64 sends each, for different node classes."""
    kinds = {"list" if isinstance(spec[0], list) else spec[0]
             for node in FULL_INFO.values()
             for part in ("required", "optional")
             for spec in (node["input"].get(part) or {}).values()
             if combo_options(spec) is not None}
    assert kinds == {"list", "COMBO"}
    sampler = FULL_INFO["KSampler"]["input"]["required"]["sampler_name"]
    assert "euler" in combo_options(sampler)
