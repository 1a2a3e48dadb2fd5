"""Render keys: stable, complete over what changes pixels, blind to everything else."""

from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, replace
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tower.shotlist.presets import BUILTIN_PRESETS
from tower.shotlist.shots import Shot, ShotList
from tower.spec.keys import KEY_FIELDS, render_key
from tower.spec.takes import ResolvedTake, derive_seed, resolve_takes

BASE = ResolvedTake(
    episode="ep01", shot_id="sh010", take=0, prompt="anime key visual, Aoi on the rope bridge",
    negative="lowres", seed=20261127, preset="standard",
    checkpoint="anime-final-sd15.safetensors", sampler="dpmpp_2m", scheduler="karras",
    steps=15, cfg=6.5, width=768, height=768,
)
UNICODE = replace(BASE, take=3, prompt="夜の灯台, lighthouse at night", seed=2**64 - 1,
                  width=1024, height=576, cfg=7.0, sampler="dpmpp_2m_sde")
TILED = replace(BASE, vae_tiled=True, vae_tile_size=512, denoise=0.6,
                checkpoint="anime-draft-sd15.safetensors", seed=0)


@pytest.mark.parametrize(("take", "expected"), [
    (BASE, "b8e2e67842ea4fa93b493a367d8d0f32713958563443c2e4180e9cfe4b38b50a"),
    (UNICODE, "4c2ee62ab33f76e5dd09ec227a33406ef68f92f0ee386c85bf97207c4bf77ea5"),
    (TILED, "459acd6568f727a4af32310fff17bfbfdaa08b7e398dd8dfaafe301d22ac321b"),
], ids=["base", "unicode-maxseed", "tiled"])
def test_golden_keys_never_change(take: ResolvedTake, expected: str) -> None:
    # A change here orphans every rendered image: bump GRAPH_VERSION on purpose instead.
    assert render_key(take) == take.key == expected


def test_key_is_sha256_of_the_documented_canonical_json() -> None:
    canonical = (
        '{"cfg":"6.5","checkpoint":"anime-final-sd15.safetensors","denoise":"1.0",'
        '"graph":"tower-graph-1","height":768,"negative":"lowres",'
        '"prompt":"anime key visual, Aoi on the rope bridge","sampler":"dpmpp_2m",'
        '"scheduler":"karras","seed":"20261127","steps":15,"take":0,"vae":"full","width":768}'
    )
    assert render_key(BASE) == hashlib.sha256(canonical.encode()).hexdigest()


def test_derived_seed_is_fixed_for_an_episode_and_shot() -> None:
    assert derive_seed("ep01", "sh010") == 7956525375522057901
    assert derive_seed("ep01", "sh020") != derive_seed("ep02", "sh010")


def test_key_ignores_attribute_order() -> None:
    fields = list(asdict(BASE).items())
    for seed in range(5):
        random.Random(seed).shuffle(fields)
        assert render_key(SimpleNamespace(**dict(fields))) == BASE.key


CHANGES: list[tuple[str, Any]] = [
    ("checkpoint", "anime-draft-sd15.safetensors"), ("prompt", "Aoi on the rope bridge"),
    ("negative", "lowres, blurry"), ("seed", 20261128), ("take", 1), ("steps", 16),
    ("cfg", 6.6), ("sampler", "euler"), ("scheduler", "normal"), ("width", 776),
    ("height", 760), ("denoise", 0.99), ("vae_tiled", True),
]


def test_change_table_covers_every_key_field() -> None:
    assert {name for name, _ in CHANGES} | {"vae_tile_size"} == set(KEY_FIELDS)


@pytest.mark.parametrize(("field", "value"), CHANGES, ids=[c[0] for c in CHANGES])
def test_each_key_field_changes_the_key(field: str, value: Any) -> None:
    assert replace(BASE, **{field: value}).key != BASE.key


def test_tile_size_counts_only_when_decoding_tiled() -> None:
    assert replace(BASE, vae_tile_size=256).key == BASE.key
    assert replace(TILED, vae_tile_size=256).key != TILED.key


@pytest.mark.parametrize(("field", "value"), [
    ("episode", "ep99"), ("shot_id", "sh999"), ("preset", "high"), ("cfg", 6.50),
])
def test_names_and_equal_numbers_do_not_change_the_key(field: str, value: Any) -> None:
    assert replace(BASE, **{field: value}).key == BASE.key


def test_whole_number_cfg_hashes_like_its_float() -> None:
    assert replace(BASE, cfg=7).key == replace(BASE, cfg=7.0).key


def test_identical_shots_in_different_episodes_share_keys() -> None:
    shot = {"prompt": "night market", "seed": 5050, "takes": 2}
    one = ShotList(episode="ep01", shots=(Shot(id="sh050", **shot),))
    two = ShotList(episode="ep07", shots=(Shot(id="sh220", preset="standard", **shot),))
    assert [t.key for t in resolve_takes(one)] == [t.key for t in resolve_takes(two)]


def test_keys_do_not_depend_on_how_takes_are_batched() -> None:
    shot_list = ShotList(episode="ep01", shots=(Shot(id="a", prompt="p", takes=6),))
    solo = {**BUILTIN_PRESETS,
            "standard": BUILTIN_PRESETS["standard"].model_copy(update={"max_batch": 1})}
    keys = [t.key for t in resolve_takes(shot_list)]
    assert keys == [t.key for t in resolve_takes(shot_list, solo)]
    assert len(set(keys)) == 6


texts = st.text(max_size=40)
sizes = st.integers(8, 512).map(lambda x: x * 8)
takes = st.builds(
    ResolvedTake, episode=st.just("ep01"), shot_id=st.just("sh010"),
    take=st.integers(0, 63), prompt=texts, negative=texts, seed=st.integers(0, 2**64 - 1),
    preset=st.just("standard"), checkpoint=st.sampled_from(["a.safetensors", "b.ckpt"]),
    sampler=st.sampled_from(["euler", "dpmpp_2m"]), scheduler=st.sampled_from(["karras", "normal"]),
    steps=st.integers(1, 100), cfg=st.floats(0, 100), width=sizes, height=sizes,
    denoise=st.floats(0.01, 1.0),
    vae_tiled=st.booleans(), vae_tile_size=st.sampled_from([256, 512]),
)


@settings(deadline=None)
@given(takes, st.sampled_from([n for n in KEY_FIELDS if n != "vae_tile_size"]))
def test_keys_are_hex_deterministic_and_separate_takes(take: ResolvedTake, field: str) -> None:
    key = render_key(take)
    assert len(key) == 64 and int(key, 16) >= 0
    assert render_key(replace(take)) == key
    current = getattr(take, field)
    other = {bool: lambda v: not v, int: lambda v: v + 1 if v < 63 else v - 1,
             float: lambda v: v / 2 if v else 0.5, str: lambda v: v + "x"}[type(current)]
    assert render_key(replace(take, **{field: other(current)})) != key
