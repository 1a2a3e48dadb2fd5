"""Render graphs, checked against the object_info recorded from a real ComfyUI 0.3.64.

The checking is the simulator's copy of ComfyUI's own validation
(``tower.simulator.validation``), which ``tests/contract`` holds to the real server's
recorded answers; here it runs in-process over a recorded (or edited) ``/object_info``.
"""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paths import CONTRACT, REPO

from tower.comfyui import is_link
from tower.shotlist.presets import BUILTIN_PRESETS
from tower.shotlist.shots import Shot, ShotList, load_shot_list
from tower.simulator.catalog import Catalog
from tower.simulator.validation import validate_prompt
from tower.spec.graph import (
    FRESH_INPUT,
    MAX_TAKE_INDEX,
    build_graph,
    check_batch,
    preflight_graphs,
    root_nodes,
    tile_overlap,
)
from tower.spec.takes import ResolvedTake, resolve_takes

ROOT = REPO
FULL_INFO = json.loads((CONTRACT / "object_info_full.json").read_text())


def _node_files() -> dict:
    """The per-node GET /object_info/<Node> recordings, merged."""
    merged: dict = {}
    for path in CONTRACT.glob("object_info_*.json"):
        if path.name != "object_info_full.json":
            merged |= json.loads(path.read_text())
    return merged


NODE_INFO = _node_files()
INFOS = pytest.mark.parametrize("info", [FULL_INFO, NODE_INFO], ids=["full", "per-node"])


class _RecordedCatalog(Catalog):
    """The simulator's catalog over a given ``/object_info`` instead of its own copy."""

    def __init__(self, info: dict) -> None:  # no super(): its copy is not wanted here
        self.nodes = copy.deepcopy(info)


# Catalogs of the two recordings, built once: copying 600 kB of object_info per graph
# made the property test below the slowest unit test of the suite.
_CATALOGS = {id(FULL_INFO): _RecordedCatalog(FULL_INFO), id(NODE_INFO): _RecordedCatalog(NODE_INFO)}


def refusals(graph: object, info: dict = FULL_INFO) -> list[str]:
    """Why ComfyUI would refuse ``graph``, as ``node: error_type details``; empty when it
    would queue every output. Validation coerces in place, so it gets a copy."""
    catalog = _CATALOGS.get(id(info)) or _RecordedCatalog(info)
    result = validate_prompt(catalog, copy.deepcopy(graph))
    found = [f"{node_id}: {error['type']} {error['details']}"
             for node_id, entry in result.node_errors.items() for error in entry["errors"]]
    if result.error is not None and not found:
        error = result.error
        found.append(f"{error['type']}: {error['message']} {error['details']}".strip())
    return found


def takes_of(preset: str = "standard", takes: int = 4, **shot: object) -> list[ResolvedTake]:
    shot_list = ShotList(episode="ep01", shots=(
        Shot(id="sh010", prompt="Aoi on the rope bridge", preset=preset, takes=takes, **shot),))
    return resolve_takes(shot_list)


def test_recorded_node_files_cover_every_class_we_build_except_latent_from_batch() -> None:
    classes = {n["class_type"] for n in build_graph(takes_of(), "ep01/sh010/x").values()}
    assert classes - set(NODE_INFO) == {"LatentFromBatch"}
    assert classes <= set(FULL_INFO)


@INFOS
@pytest.mark.parametrize("preset", sorted(BUILTIN_PRESETS))
@pytest.mark.parametrize("tile", [None, 64, 512, 1024])
def test_every_preset_builds_a_graph_comfyui_accepts(info: dict, preset: str,
                                                     tile: int | None) -> None:
    takes = takes_of(preset, takes=BUILTIN_PRESETS[preset].max_batch + 1, seed=2**64 - 1)
    if tile is not None:
        takes = [t.with_tiled_decode(tile) for t in takes]
    info = {**info, "LatentFromBatch": FULL_INFO["LatentFromBatch"]}
    for batch in (takes[:1], takes[1:], takes):
        graph = build_graph(batch, "ep01/sh010/abcd1234")
        assert refusals(graph, info) == []
        assert graph["decode"]["class_type"] == ("VAEDecode" if tile is None else "VAEDecodeTiled")


def test_demo_episode_graphs_all_pass_the_recorded_object_info() -> None:
    takes = resolve_takes(load_shot_list(ROOT / "shot_lists" / "ep01_demo.yaml"))
    by_shot: dict[str, list[ResolvedTake]] = {}
    for take in takes:
        by_shot.setdefault(take.shot_id, []).append(take)
    for shot_takes in by_shot.values():
        size = BUILTIN_PRESETS[shot_takes[0].preset].max_batch
        for start in range(0, len(shot_takes), size):
            graph = build_graph(shot_takes[start:start + size], "ep01/x/y")
            assert refusals(graph) == [], shot_takes[0].label
            assert graph["latent"]["inputs"]["width"] % 8 == 0


def test_largest_shot_uses_the_top_of_latent_from_batch_ranges() -> None:
    takes = takes_of("draft", takes=64)
    graph = build_graph(takes[60:], "p")
    assert graph["takes"]["inputs"] == {"samples": ["latent", 0], "batch_index": 60, "length": 4}
    assert graph["latent"]["inputs"]["batch_size"] == 64
    assert refusals(build_graph(takes, "p")) == []
    assert takes[-1].take == MAX_TAKE_INDEX


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda g: g["sampler"]["inputs"].update(sampler_name="dpmpp_9m"),
     "sampler: value_not_in_list sampler_name"),
    (lambda g: g["sampler"]["inputs"].update(scheduler="fast"),
     "sampler: value_not_in_list scheduler"),
    (lambda g: g["checkpoint"]["inputs"].update(ckpt_name="x.ckpt"),
     "checkpoint: value_not_in_list ckpt_name"),
    (lambda g: g["sampler"]["inputs"].update(seed=2**64), "sampler: value_bigger_than_max seed"),
    (lambda g: g["sampler"]["inputs"].update(cfg=100.5), "sampler: value_bigger_than_max cfg"),
    (lambda g: g["sampler"]["inputs"].update(steps="many"), "sampler: invalid_input_type steps"),
    (lambda g: g["takes"]["inputs"].update(batch_index=64),
     "takes: value_bigger_than_max batch_index"),
    (lambda g: g["sampler"]["inputs"].pop("negative"),
     "sampler: required_input_missing negative"),
    (lambda g: g["sampler"]["inputs"].update(latent_image=["positive", 0]),
     "sampler: return_type_mismatch latent_image"),
    (lambda g: g["decode"]["inputs"].update(vae=["checkpoint", 3]),
     "decode: exception_during_inner_validation list index out of range"),
    (lambda g: g["save"]["inputs"].update(images=["gone", 0]),
     "save: exception_during_validation 'gone'"),
    (lambda g: g["positive"].update(class_type="CLIPTextEncoder"),
     "invalid_prompt: Cannot execute because node CLIPTextEncoder does not exist."),
    (lambda g: g.pop("save"), "prompt_no_outputs"),
])
def test_refusals_catch_each_kind_of_mistake_in_a_render_graph(edit, expected: str) -> None:
    graph = build_graph(takes_of(), "p")
    edit(graph)
    problems = refusals(graph)
    assert any(p.startswith(expected) for p in problems), problems


@settings(deadline=None)
@given(st.integers(1, 64).flatmap(
    lambda n: st.tuples(st.just(n), st.lists(st.integers(1, 64), min_size=1, max_size=n))))
def test_take_k_gets_noise_index_k_and_the_same_seed_in_any_split(case) -> None:
    n, sizes = case
    takes = takes_of("draft", takes=n, seed=77)
    seen: dict[int, tuple[int, int]] = {}
    start = 0
    for size in sizes * n:
        if start >= n:
            break
        batch = takes[start:start + size]
        graph = build_graph(batch, "p")
        assert refusals(graph) == []
        # LatentFromBatch slices latents batch_index.. out of an empty batch whose
        # latent i is drawn with noise index i, so these are the takes' noise indices.
        sliced = graph["takes"]["inputs"]
        first, length = sliced["batch_index"], sliced["length"]
        assert sliced["samples"] == ["latent", 0]
        assert graph["latent"]["inputs"]["batch_size"] == first + length
        for take, index in zip(batch, range(first, first + length), strict=True):
            seen[take.take] = (index, graph["sampler"]["inputs"]["seed"])
        start += size
    assert seen == {k: (k, 77) for k in range(n)}


def test_graph_reads_every_setting_from_the_take() -> None:
    take = takes_of("high", takes=1, seed=5, width=640, height=384,
                    checkpoint="anime-draft-sd15.safetensors")[0]
    take = replace(take, negative="blurry", denoise=0.75)
    graph = build_graph([take], "ep01/sh010/k")
    sampler = graph["sampler"]["inputs"]
    assert (sampler["seed"], sampler["steps"], sampler["cfg"], sampler["sampler_name"],
            sampler["scheduler"], sampler["denoise"]) == (
                5, 25, 7.5, "dpmpp_2m_sde", "karras", 0.75)
    assert graph["latent"]["inputs"] == {"width": 640, "height": 384, "batch_size": 1}
    assert graph["checkpoint"]["inputs"]["ckpt_name"] == "anime-draft-sd15.safetensors"
    assert graph["positive"]["inputs"]["text"] == take.prompt
    assert graph["negative"]["inputs"]["text"] == "blurry"
    assert graph["save"]["inputs"]["filename_prefix"] == "ep01/sh010/k"


@pytest.mark.parametrize(("batch", "message"), [
    ("empty", "at least one take"),
    ("skip", "consecutive"),
    ("reverse", "consecutive"),
    ("mixed_seed", "differs from take 0 in seed"),
    ("mixed_shot", "in shot_id"),
    ("mixed_size", "in width"),
])
def test_check_batch_refuses_batches_that_would_not_share_a_graph(batch: str,
                                                                  message: str) -> None:
    takes = takes_of(takes=3)
    cases = {
        "empty": [],
        "skip": [takes[0], takes[2]],
        "reverse": [takes[1], takes[0]],
        "mixed_seed": [takes[0], replace(takes[1], seed=1)],
        "mixed_shot": [takes[0], replace(takes[1], shot_id="sh020")],
        "mixed_size": [takes[0], replace(takes[1], width=512)],
    }
    with pytest.raises(ValueError, match=message):
        check_batch(cases[batch])


def test_check_batch_refuses_take_indices_latent_from_batch_cannot_reach() -> None:
    take = replace(takes_of(takes=1)[0], take=MAX_TAKE_INDEX + 1)
    with pytest.raises(ValueError, match="exceeds 63"):
        build_graph([take], "p")


@pytest.mark.parametrize(("tile", "overlap"), [(64, 0), (256, 32), (512, 64), (4096, 64)])
def test_tile_overlap_stays_on_comfyui_steps(tile: int, overlap: int) -> None:
    assert tile_overlap(tile) == overlap
    spec = FULL_INFO["VAEDecodeTiled"]["input"]["required"]["overlap"][1]
    assert overlap % spec["step"] == 0 and overlap < tile


def test_validation_reads_both_spellings_of_a_choice_list() -> None:
    graph = build_graph(takes_of(), "p")
    info = {**FULL_INFO, "KSampler": {**FULL_INFO["KSampler"], "input": {"required": {
        **FULL_INFO["KSampler"]["input"]["required"],
        "scheduler": ["COMBO", {"options": ["karras", "normal"]}]}}}}
    assert refusals(graph, info) == []
    graph["sampler"]["inputs"]["scheduler"] = "beta"
    assert refusals(graph, info) == [
        "sampler: value_not_in_list scheduler: 'beta' not in ['karras', 'normal']"]


def test_preflight_checks_one_graph_per_distinct_model_sampler_and_decode() -> None:
    takes = resolve_takes(load_shot_list(ROOT / "shot_lists" / "ep01_demo.yaml"))
    takes.append(replace(takes[0], vae_tiled=True))
    graphs = preflight_graphs(takes)
    needs = {(t.checkpoint, t.sampler, t.scheduler, t.vae_tiled) for t in takes}
    built = {(g["checkpoint"]["inputs"]["ckpt_name"], g["sampler"]["inputs"]["sampler_name"],
              g["sampler"]["inputs"]["scheduler"], g["decode"]["class_type"] == "VAEDecodeTiled")
             for g in graphs}
    assert len(graphs) == len(needs) and built == needs
    assert all(refusals(g) == [] for g in graphs)


# -- forced graphs ------------------------------------------------------------------

_FIXED = {"prompt": "Aoi on the rope bridge", "negative": "lowres", "seed": 7,
          "checkpoint": "anime-draft-sd15.safetensors", "sampler": "euler",
          "scheduler": "normal", "steps": 12, "cfg": 6.5, "width": 512, "height": 768,
          "denoise": 1.0, "vae_tiled": False, "vae_tile_size": 512}
# build_graph's output before forced graphs existed, byte for byte (json.dumps).
_UNFORCED_JSON = (
    '{"checkpoint": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": '
    '"anime-draft-sd15.safetensors"}}, "positive": {"class_type": "CLIPTextEncode", "inputs": '
    '{"text": "Aoi on the rope bridge", "clip": ["checkpoint", 1]}}, "negative": {"class_type": '
    '"CLIPTextEncode", "inputs": {"text": "lowres", "clip": ["checkpoint", 1]}}, "latent": '
    '{"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 768, "batch_size": '
    '3}}, "takes": {"class_type": "LatentFromBatch", "inputs": {"samples": ["latent", 0], '
    '"batch_index": 1, "length": 2}}, "sampler": {"class_type": "KSampler", "inputs": {"model": '
    '["checkpoint", 0], "seed": 7, "steps": 12, "cfg": 6.5, "sampler_name": "euler", '
    '"scheduler": "normal", "positive": ["positive", 0], "negative": ["negative", 0], '
    '"latent_image": ["takes", 0], "denoise": 1.0}}, "decode": {"class_type": "VAEDecode", '
    '"inputs": {"samples": ["sampler", 0], "vae": ["checkpoint", 2]}}, "save": {"class_type": '
    '"SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": '
    '"ep01/sh010/abcd1234"}}}')


def _fixed_takes() -> list[ResolvedTake]:
    return [replace(t, **_FIXED) for t in takes_of("draft", takes=3)][1:3]


def test_a_graph_that_is_not_forced_is_byte_identical_to_before() -> None:
    takes = _fixed_takes()
    assert json.dumps(build_graph(takes, "ep01/sh010/abcd1234")) == _UNFORCED_JSON
    assert json.dumps(build_graph(takes, "ep01/sh010/abcd1234", fresh=None)) == _UNFORCED_JSON
    assert FRESH_INPUT not in _UNFORCED_JSON


@pytest.mark.parametrize("tiled", [False, True])
def test_a_forced_graph_carries_the_token_on_every_root_node_only(tiled: bool) -> None:
    takes = [replace(t, vae_tiled=tiled) for t in _fixed_takes()]
    plain = build_graph(takes, "ep01/sh010/abcd1234")
    forced = build_graph(takes, "ep01/sh010/abcd1234", fresh="tower-abc-f123")
    assert root_nodes(forced) == root_nodes(plain) == ["checkpoint", "latent"]
    carrying = {node_id for node_id, node in forced.items() if FRESH_INPUT in node["inputs"]}
    assert carrying == {"checkpoint", "latent"}
    assert {forced[n]["inputs"][FRESH_INPUT] for n in carrying} == {"tower-abc-f123"}
    for node in forced.values():
        node["inputs"].pop(FRESH_INPUT, None)
    assert forced == plain  # nothing else changes


def test_a_forced_graph_still_passes_comfyuis_validation_rules() -> None:
    graph = build_graph(takes_of("standard", takes=2), "ep01/sh010/x", fresh="tower-x-f1")
    assert refusals(graph) == []


def test_every_node_is_downstream_of_a_root_so_the_token_reaches_every_cache_key() -> None:
    graph = build_graph(takes_of("standard", takes=2), "ep01/sh010/x", fresh="t")
    reached = set(root_nodes(graph))
    while True:
        more = {node_id for node_id, node in graph.items()
                if any(is_link(v) and v[0] in reached for v in node["inputs"].values())}
        if more <= reached:
            break
        reached |= more
    assert reached == set(graph)
