"""Production graphs (LoRAs, layouts, ControlNet, hires, upscale) against the recordings.

The node definitions come from the real ComfyUI 0.3.64 that recorded
``tests/contract/recordings/production`` (its LoRA, ControlNet and upscale model lists),
checked with the simulator's copy of ComfyUI's validation, as in ``test_graph.py``.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import replace

import pytest
from paths import CONTRACT
from test_graph import FULL_INFO, refusals

from tower.spec.graph import FRESH_INPUT, build_graph, preflight_graphs, root_nodes
from tower.spec.keys import render_key
from tower.spec.parts import ControlSpec, HiresSpec, InputImage, LoraSpec, UpscaleSpec
from tower.spec.takes import ResolvedTake

PRODUCTION = CONTRACT / "production"
INFO = dict(FULL_INFO)
for _path in PRODUCTION.glob("object_info_*.json"):
    if "before_uploads" not in _path.name:
        INFO |= json.loads(_path.read_text())

LAYOUT = InputImage("/art/layout.png", "a" * 64, 64, 64)
LINEART = InputImage("/art/lineart.png", "b" * 64, 96, 64)
PARTS = {
    "loras": (LoraSpec("char-aoi-v3.safetensors", 0.8, 0.8),
              LoraSpec("style-cel-v1.safetensors", 0.5, 0.5)),
    "init_image": LAYOUT,
    "control": ControlSpec(LINEART, "layout-lineart-sd15.safetensors", 0.9, 0.0, 1.0),
    "hires": HiresSpec(1.5, 0.5, 2),
    "upscale": UpscaleSpec("anime-x2-compact.safetensors", 2),
}
BASE = ResolvedTake(episode="ep02", shot_id="sh020", take=0, prompt="aoi, on the bridge",
                    negative="lowres", seed=7, preset="draft",
                    checkpoint="anime-final-sd15.safetensors", sampler="dpmpp_2m",
                    scheduler="karras", steps=2, cfg=7.0, width=64, height=64)
COMBINATIONS = [combo for size in range(len(PARTS) + 1)
                for combo in itertools.combinations(PARTS, size)]


def take_with(parts: tuple[str, ...], take: int = 0) -> ResolvedTake:
    values = {name: PARTS[name] for name in parts}
    if "init_image" in parts:
        values["denoise"] = 0.6
    return replace(BASE, take=take, **values)


@pytest.mark.parametrize("parts", COMBINATIONS, ids=lambda c: "+".join(c) or "txt2img")
def test_every_combination_of_parts_builds_a_graph_comfyui_accepts(parts) -> None:
    takes = [take_with(parts, k) for k in range(2, 5)]
    graph = build_graph(takes, "ep02/sh020/abcd")
    assert refusals(graph, INFO) == []
    classes = {node["class_type"] for node in graph.values()}
    assert ("LoraLoader" in classes) == ("loras" in parts)
    assert ("VAEEncode" in classes) == ("init_image" in parts)
    assert ("ControlNetApplyAdvanced" in classes) == ("control" in parts)
    assert ("LatentUpscaleBy" in classes) == ("hires" in parts)
    assert ("ImageUpscaleWithModel" in classes) == ("upscale" in parts)
    forced = build_graph(takes, "ep02/sh020/abcd", fresh="tok")
    assert refusals(forced, INFO) == []
    assert {n for n, node in forced.items() if FRESH_INPUT in node["inputs"]} == \
        set(root_nodes(graph))


def test_a_layout_is_encoded_once_repeated_and_sliced_like_an_empty_latent() -> None:
    """Take k of a layout shot gets noise index k: the repeated batch covers the takes
    and LatentFromBatch picks them, exactly as the recorded img2img run did."""
    graph = build_graph([take_with(("init_image",), k) for k in (2, 3)], "ep02/sh020/x")
    assert graph["layout"] == {"class_type": "LoadImage",
                               "inputs": {"image": LAYOUT.upload_name}}
    assert graph["layout_scale"]["inputs"] | {"image": None} == {
        "image": None, "upscale_method": "lanczos", "width": 64, "height": 64,
        "crop": "center"}
    assert graph["latent"] == {"class_type": "RepeatLatentBatch",
                               "inputs": {"samples": ["layout_encode", 0], "amount": 4}}
    assert graph["takes"]["inputs"] == {"samples": ["latent", 0], "batch_index": 2,
                                        "length": 2}
    assert graph["sampler"]["inputs"]["denoise"] == 0.6
    recorded = json.loads((PRODUCTION / "post_prompt_img2img_latent_from_batch.json")
                          .read_text())["request"]["json"]["prompt"]
    chain = [recorded[n]["class_type"] for n in ("10", "11", "12", "13")]
    assert chain == ["LoadImage", "VAEEncode", "RepeatLatentBatch", "LatentFromBatch"]


def test_loras_chain_in_order_and_feed_both_text_encoders_and_every_sampler() -> None:
    graph = build_graph([take_with(("loras", "hires"))], "ep02/sh020/x")
    assert graph["lora_1"]["inputs"]["model"] == ["checkpoint", 0]
    assert graph["lora_2"]["inputs"] | {"lora_name": None} == {
        "model": ["lora_1", 0], "clip": ["lora_1", 1], "lora_name": None,
        "strength_model": 0.5, "strength_clip": 0.5}
    assert graph["positive"]["inputs"]["clip"] == graph["negative"]["inputs"]["clip"] == \
        ["lora_2", 1]
    assert graph["sampler"]["inputs"]["model"] == graph["hires_sampler"]["inputs"]["model"] \
        == ["lora_2", 0]


def test_the_hires_pass_keeps_the_seed_and_runs_its_own_steps_and_denoise() -> None:
    graph = build_graph([take_with(("hires", "upscale"))], "ep02/sh020/x")
    hires = graph["hires_sampler"]["inputs"]
    assert hires["latent_image"] == ["hires_upscale", 0]
    assert (hires["seed"], hires["steps"], hires["denoise"]) == (7, 2, 0.5)
    assert graph["decode"]["inputs"]["samples"] == ["hires_sampler", 0]
    assert graph["save"]["inputs"]["images"] == ["upscale", 0]
    assert take_with(("hires", "upscale")).output_size == (192, 192)


def test_a_controlnet_conditions_both_prompts() -> None:
    graph = build_graph([take_with(("control",))], "ep02/sh030/x")
    control = graph["control"]["inputs"]
    assert (control["positive"], control["negative"]) == (["positive", 0], ["negative", 0])
    assert (control["strength"], control["start_percent"], control["end_percent"]) == \
        (0.9, 0.0, 1.0)
    sampler = graph["sampler"]["inputs"]
    assert (sampler["positive"], sampler["negative"]) == (["control", 0], ["control", 1])


def test_keys_cover_each_part_and_plain_keys_ignore_them() -> None:
    keys = {parts: render_key(take_with(parts)) for parts in COMBINATIONS}
    assert len(set(keys.values())) == len(COMBINATIONS)
    assert keys[()] == render_key(BASE)
    moved = replace(LAYOUT, path="/elsewhere/renamed.png")
    assert render_key(replace(take_with(("init_image",)), init_image=moved)) == \
        keys[("init_image",)]
    edited = replace(LAYOUT, sha256="c" * 64)
    assert render_key(replace(take_with(("init_image",)), init_image=edited)) != \
        keys[("init_image",)]
    stronger = replace(PARTS["loras"][0], strength_model=0.9)
    assert render_key(replace(BASE, loras=(stronger,))) != \
        render_key(replace(BASE, loras=(PARTS["loras"][0],)))


def test_preflight_checks_one_graph_per_set_of_models_and_parts() -> None:
    takes = [take_with(parts, k) for parts in COMBINATIONS for k in range(2)]
    graphs = preflight_graphs(takes)
    assert len(graphs) == len(COMBINATIONS)
    assert all(refusals(graph, INFO) == [] for graph in graphs)
