"""Presets files and block fields: every invalid value is refused with its field named.

A wrong setting found at 02:00 by a crashed flow costs the night; found when the file
is read or the block is saved, it is one line to fix. Each row of the tables is one
mistake a person can make by hand (in YAML, the Prefect UI, or a deployment file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from blocks import ComfyUIServer, RenderPresets, RenderStore
from tower.shotlist.errors import InputError
from tower.shotlist.presets import load_presets

# (fields of preset "draft" or a new preset, field named, words of the message)
PRESET_CASES: list[tuple[str, dict[str, Any], str, str]] = [
    ("draft", {"steps": -5}, "steps", "at least 1"),
    ("draft", {"steps": 0}, "steps", "at least 1"),
    ("draft", {"steps": "many"}, "steps", "whole number"),
    ("draft", {"steps": True}, "steps", "not true/false"),
    ("draft", {"width": 0}, "width", "at least 64"),
    ("draft", {"height": 100}, "height", "multiple of 8"),
    ("draft", {"width": 8192}, "width", "at most 4096"),
    ("draft", {"cfg": -1}, "cfg", "at least 0"),
    ("draft", {"cfg": ".nan"}, "cfg", "must be a finite number"),
    ("draft", {"denoise": ".inf"}, "denoise", "must be a finite number"),
    ("draft", {"denoise": 0}, "denoise", "more than 0"),
    ("draft", {"sampler": ""}, "sampler", "must not be empty"),
    ("draft", {"max_batch": 0}, "max_batch", "at least 1"),
    ("draft", {"vae_tile_size": 100}, "vae_tile_size", "multiple of 32"),
    ("draft", {"vae_tiled": "sometimes"}, "vae_tiled", "true or false"),
    ("draft", {"stpes": 8}, "stpes", "did you mean 'steps'"),
    ("draft", {"loras": [{"name": "x.safetensors", "strength": 101}]}, "loras.0.strength",
     "at most"),
    ("draft", {"loras": [{"strength": 1}]}, "loras.0.name", "is required"),
    ("draft", {"hires": {"scale": 1, "denoise": 0.5, "steps": 5}}, "hires.scale", "more than 1"),
    ("draft", {"hires": {"scale": 2, "denoise": 0.5, "steps": 0}}, "hires.steps", "at least 1"),
    ("draft", {"hires": {"scale": 2, "denoise": 0.5, "steps": 5, "method": "cubic"}},
     "hires.method", "bicubic"),
    ("draft", {"upscale": {"model": "x.pth", "scale": 0}}, "upscale.scale", "at least 1"),
    ("draft", {"upscale": "x.pth"}, "upscale", "mapping of fields"),
    ("fast", {"extends": "drfat"}, "extends", "unknown preset 'drfat'"),
    ("fast", {"steps": 4}, "", "missing: width, height"),
]


def _yaml(value: Any) -> str:
    """Flow-style YAML of a test value (``.nan`` stays YAML's not-a-number)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    if isinstance(value, str) and value not in (".nan", ".inf"):
        return f'"{value}"'
    return str(value).lower() if isinstance(value, bool) else str(value)


@pytest.mark.parametrize(("name", "fields", "field", "words"), PRESET_CASES)
def test_presets_file_names_the_preset_field_and_line(tmp_path: Path, name: str,
                                                      fields: dict[str, Any], field: str,
                                                      words: str) -> None:
    path = tmp_path / "presets.yaml"
    body = "".join(f"  {key}: {_yaml(value)}\n" for key, value in fields.items())
    path.write_text(f"# studio presets\nhigh:\n  steps: 30\n{name}:\n{body}")
    with pytest.raises(InputError) as caught:
        load_presets(path)
    (problem,) = caught.value.problems
    assert problem.source == str(path) and problem.where == f"preset {name}"
    assert (problem.field or "") == field and words in problem.message, problem
    assert problem.line is not None and problem.line >= 4, problem


@pytest.mark.parametrize(("fields", "field", "words"), [
    ({"draft": {"steps": -1}}, "steps", "at least 1"),
    ({"draft": {"colour": "red"}}, "colour", "unknown field"),
    ({"../x": {"extends": "draft"}}, None, "preset name must"),
])
def test_presets_block_names_the_field(fields: dict[str, Any], field: str | None,
                                       words: str) -> None:
    with pytest.raises(InputError) as caught:
        RenderPresets(presets=fields).get_presets()
    (problem,) = caught.value.problems
    assert problem.field == field and words in problem.message, problem


SERVER = {"name": "gpu-a", "base_url": "http://10.0.0.5:8188"}


@pytest.mark.parametrize(("fields", "field", "words"), [
    ({"base_url": "10.0.0.5:8188"}, "base_url", "http(s)://"),
    ({"base_url": "//10.0.0.5:8188"}, "base_url", "http(s)://"),
    ({"base_url": "ws://10.0.0.5:8188"}, "base_url", "http(s)://"),
    ({"base_url": "http://10.0.0.5:99999"}, "base_url", "port"),
    ({"base_url": "http://:8188"}, "base_url", "http(s)://"),
    ({"name": ""}, "name", "1-64 characters"),
    ({"name": "../gpu"}, "name", "1-64 characters"),
    ({"vram_budget_mb": -1}, "vram_budget_mb", "greater than 0"),
    ({"vram_budget_mb": 0}, "vram_budget_mb", "greater than 0"),
    ({"vram_budget_mb": float("inf")}, "vram_budget_mb", "finite"),
    ({"timeout_s": 0}, "timeout_s", "greater than 0"),
    ({"timeout_s": float("nan")}, "timeout_s", "finite"),
    ({"connect_timeout_s": -1}, "connect_timeout_s", "greater than 0"),
    ({"render_timeout_s": 0}, "render_timeout_s", "greater than 0"),
    ({"max_queue_depth": 0}, "max_queue_depth", "greater than or equal to 1"),
    ({"max_queue_depth": 17}, "max_queue_depth", "less than or equal to 16"),
    ({"max_queue_depth": True}, "max_queue_depth", "not true/false"),
    ({"max_queue_depth": "two"}, "max_queue_depth", "valid integer"),
    ({"speed": 0}, "speed", "greater than 0"),
    ({"speed": "fast"}, "speed", "valid number"),
    ({"gpu_profile": "7gb"}, "gpu_profile", "known:"),
    ({"auth_header": "X Token"}, "auth_header", "header name"),
    ({"auth_header": "X-Token\r\nHost: evil"}, "auth_header", "header name"),
    ({"verify_tls": "maybe"}, "verify_tls", "valid boolean"),
])
def test_server_block_rejects_each_bad_field_by_name(fields: dict[str, Any], field: str,
                                                     words: str) -> None:
    with pytest.raises(ValidationError) as caught:
        ComfyUIServer(**{**SERVER, **fields})
    errors = caught.value.errors(include_url=False)
    assert [error["loc"] for error in errors] == [(field,)], errors
    assert words in str(caught.value)


@pytest.mark.parametrize(("fields", "field", "words"), [
    ({"data_root": ""}, "data_root", "must name a folder"),
    ({"data_root": "   "}, "data_root", "must name a folder"),
    ({"base_url": "renders.studio.lan/tower"}, "base_url", "http(s)://"),
    ({"base_url": "file:///srv/renders"}, "base_url", "http(s)://"),
])
def test_store_block_rejects_each_bad_field_by_name(fields: dict[str, Any], field: str,
                                                    words: str) -> None:
    with pytest.raises(ValidationError) as caught:
        RenderStore(**fields)
    errors = caught.value.errors(include_url=False)
    assert [error["loc"] for error in errors] == [(field,)], errors
    assert words in str(caught.value)


def test_the_values_the_tables_border_on_are_accepted() -> None:
    """The limits themselves are valid, so the tables test the rules, not typos."""
    server = ComfyUIServer(**SERVER, vram_budget_mb=0.5, max_queue_depth=16, speed=0.1,
                           auth_header="X-Api-Key")
    assert (server.budget_mb, server.max_queue_depth) == (0.5, 16)
    assert RenderStore(data_root="farm", base_url=" https://r.lan/t ").base_url == \
        "https://r.lan/t/"
    presets = RenderPresets(presets={"draft": {"steps": 1, "width": 64, "height": 4096},
                                     "fast": {"extends": "draft", "max_batch": 64}})
    loaded = presets.get_presets()
    assert (loaded["fast"].steps, loaded["fast"].max_batch, loaded["draft"].height) == (
        1, 64, 4096)
