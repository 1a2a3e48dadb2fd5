"""Shot lists: validation messages, ids, defaults and resolution to takes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from paths import REPO

from tower.shotlist.errors import InputError
from tower.shotlist.names import check_name
from tower.shotlist.presets import BUILTIN_PRESETS
from tower.shotlist.shots import Shot, ShotList, load_shot_list, read_shot_list
from tower.spec.takes import derive_seed, full_prompt, resolve_takes

ROOT = REPO


def problems(tmp_path: Path, name: str, text: str) -> list[str]:
    """The problems loading ``text`` as ``name`` reports, with the folder stripped."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InputError) as caught:
        load_shot_list(path)
    return [str(p).removeprefix(f"{tmp_path}/") for p in caught.value.problems]


def test_demo_episode_loads_and_resolves() -> None:
    shot_list = load_shot_list(ROOT / "shot_lists" / "ep01_demo.yaml")
    takes = resolve_takes(shot_list)
    assert (shot_list.episode, len(shot_list.shots), len(takes)) == ("ep01", 24, 45)
    assert {t.preset for t in takes} == {"draft", "standard", "high"}
    assert len({t.key for t in takes}) < len(takes)  # the callback and ending plates repeat


BAD_LIST = """\
episode: ep 01
title: 5
defaults:
  preset: standrd
  takes: 0
  widht: 512
shots:
  - id: sh010
    promt: "x"
  - id: sh020
    prompt: "  "
    takes: 100
    seed: -1
    width: 500
    height: 8192
  - id: sh020
    prompt: ok
    preset: hihg
  - id: ../etc
    prompt: ok
  - id: 010
    prompt: ok
    tags: [a, 1]
  - just a string
  - id: sh050
    prompt: ok
    takes: yes
    seed: 18446744073709551616
    checkpoint: ""
"""

NAME_RULE = ("must be 1-64 characters: letters, digits, '.', '_' or '-', "
             "starting with a letter or digit")


def test_every_problem_is_reported_at_once_with_line_shot_and_field(tmp_path: Path) -> None:
    assert problems(tmp_path, "ep01.yaml", BAD_LIST) == [
        f"ep01.yaml:1: episode: {NAME_RULE} (got 'ep 01')",
        "ep01.yaml:2: title: must be text (got 5); put it in quotes",
        "ep01.yaml:4: defaults.preset: unknown preset 'standrd' (did you mean 'standard'?); "
        "known: draft, high, standard",
        "ep01.yaml:5: defaults.takes: must be between 1 and 64 (got 0)",
        "ep01.yaml:6: defaults.widht: unknown field (did you mean 'width'?)",
        "ep01.yaml:8 shot sh010: prompt: is required",
        "ep01.yaml:9 shot sh010: promt: unknown field (did you mean 'prompt'?)",
        "ep01.yaml:11 shot sh020: prompt: must not be empty",
        "ep01.yaml:12 shot sh020: takes: must be between 1 and 64 (got 100)",
        "ep01.yaml:13 shot sh020: seed: must be between 0 and 2^64-1 (got -1)",
        "ep01.yaml:14 shot sh020: width: must be a multiple of 8 between 64 and 4096 (got 500)",
        "ep01.yaml:15 shot sh020: height: must be a multiple of 8 between 64 and 4096 (got 8192)",
        "ep01.yaml:16 shot sh020: id: duplicate shot id (first used on line 10)",
        "ep01.yaml:18 shot sh020: preset: unknown preset 'hihg' (did you mean 'high'?); "
        "known: draft, high, standard",
        f"ep01.yaml:19 shot ../etc: id: {NAME_RULE} (got '../etc')",
        "ep01.yaml:21 shot #5: id: must be text (got 8); put it in quotes",
        "ep01.yaml:23 shot #5: tags.1: must be text (got 1); put it in quotes",
        "ep01.yaml:24 shot #6: must be a mapping of fields (id, prompt, ...)",
        "ep01.yaml:27 shot sh050: takes: must be a number, not true/false (got True)",
        "ep01.yaml:28 shot sh050: seed: must be between 0 and 2^64-1 (got 18446744073709551616)",
        "ep01.yaml:29 shot sh050: checkpoint: must not be empty",
    ]


@pytest.mark.parametrize(("text", "expected"), [
    ("episode: ep01\n", "ep01.yaml: shots: must be a non-empty list of shots"),
    ("episode: ep01\nshots: []\n", "ep01.yaml:2: shots: must be a non-empty list of shots"),
    ("episode: ep01\nshots: {id: a}\n", "ep01.yaml:2: shots: must be a non-empty list of shots"),
    ("shots:\n  - {id: a, prompt: b}\n", "ep01.yaml: episode: is required"),
    ("- a\n- b\n", "ep01.yaml:1: must be a mapping with 'episode' and 'shots'"),
    ("episode: ep01\ndefaults: standard\nshots: [{id: a, prompt: b}]\n",
     "ep01.yaml:2: defaults: must be a mapping of fields (got 'standard')"),
    ("episode: ep01\nshots:\n  - id: a\n    prompt: b\n    takes: 2.5\n",
     "ep01.yaml:5 shot a: takes: must be a whole number (got 2.5)"),
    ("episode: ep01\nshots:\n  - id: a\n    prompt: b\n    tags: x\n",
     "ep01.yaml:5 shot a: tags: must be a list (got 'x')"),
    ("episode: ep01\nepisode: ep02\nshots: [{id: a, prompt: b}]\n",
     "ep01.yaml:2: episode: duplicate key"),
    ("episode: ep01\nshots:\n  - id: a\n    prompt: [b\n", "ep01.yaml:5: not valid YAML: "),
    ("episode: ep01\n? [a, b]\n: c\n", "ep01.yaml:2: not valid YAML: found unhashable key"),
    ("episode: ep01\n1: x\nshots: [{id: a, prompt: b}]\n",
     "ep01.yaml:2: 1: field names must be text (got 1)"),
    ("episode: ep01\nshots:\n  - id: a\n    prompt: b\n    null: c\n",
     "ep01.yaml:5 shot a: None: field names must be text (got None)"),
    ("episode: ep01\nshots:\n  - {id: a, prompt: b, 0x10: c, 16: d}\n",
     "ep01.yaml:3: 16: duplicate key"),
])
def test_yaml_structure_errors(tmp_path: Path, text: str, expected: str) -> None:
    assert problems(tmp_path, "ep01.yaml", text)[0].startswith(expected)


def test_json_errors_name_the_line(tmp_path: Path) -> None:
    text = '{"episode": "ep01",\n "shots": [\n  {"id": "a", "prompt": "b"},\n' \
           '  {"id": "c", "prompt": "d",\n   "takes": 65}]}\n'
    assert problems(tmp_path, "ep01.json", text) == [
        "ep01.json:5 shot c: takes: must be between 1 and 64 (got 65)"]
    assert problems(tmp_path, "ep01.json", '{"episode": "ep01",\n "shots": [}') == [
        "ep01.json:2: not valid JSON: Expecting value (column 12)"]
    assert problems(tmp_path, "ep01.json", '{"episode": "a",\n "episode": "b"}') == [
        "ep01.json:2: episode: duplicate key"]


def test_csv_errors_name_the_spreadsheet_row(tmp_path: Path) -> None:
    text = ("episode,id,prompt,takes,seed\n\nep01,a,hello,,\n"
            '"ep01","b","two\nlines",100,\n,,,,\nep01,c,,,x\nep02,a,again,1,\n')
    assert problems(tmp_path, "ep01.csv", text) == [
        "ep01.csv:4 shot b: takes: must be between 1 and 64 (got 100)",
        "ep01.csv:7 shot c: prompt: is required",
        "ep01.csv:7 shot c: seed: must be a whole number (got 'x')",
        "ep01.csv:8: episode: differs from earlier rows ('ep01' vs 'ep02')",
        "ep01.csv:8 shot a: id: duplicate shot id (first used on line 3)",
    ]


@pytest.mark.parametrize(("header", "expected"), [
    ("id,prompt\n", "ep01.csv:1: episode: is required: add an 'episode' column"),
    ("episode,id,prompt,id\n", "ep01.csv:1: column(s) repeated in the header: id"),
    (",,\n", "ep01.csv:1: CSV has no header row"),
])
def test_csv_header_errors(tmp_path: Path, header: str, expected: str) -> None:
    assert problems(tmp_path, "ep01.csv", header + "ep01,a,b,c\n") == [expected]


def test_csv_warns_about_unknown_columns_and_extra_cells(tmp_path: Path) -> None:
    path = tmp_path / "ep01.csv"
    path.write_text("episode,id,promt,prompt,scene\nep01,a,x,hello,3,surplus\n")
    loaded = read_shot_list(path)
    assert loaded.shot_list.shots[0].prompt == "hello"
    assert [str(w).removeprefix(f"{tmp_path}/") for w in loaded.warnings] == [
        "ep01.csv:2: more cells than header columns; extra cells ignored",
        "ep01.csv:1: promt: unknown column, ignored (did you mean 'prompt'?)",
        "ep01.csv:1: scene: unknown column, ignored (did you mean 'seed'?)",
    ]


@pytest.mark.parametrize("name", [
    "a", "sh010", "ep01", "S01E02", "shot_10-b.v2", "9", "a" * 64, "x.y",
])
def test_good_ids(name: str) -> None:
    assert check_name(name) == name
    assert Shot(id=name, prompt="p").id == name


@pytest.mark.parametrize("name", [
    "", "a" * 65, "-a", ".a", "_a", "..", "a..b", "a/b", "a\\b", "a b", "sh010 ", "shé",
    "a:b", "a\nb", "C:", "~a", "$HOME", "a*", "シーン1",
])
def test_bad_ids_are_errors_never_sanitised(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="must"):
        check_name(name)
    path = tmp_path / "ep.yaml"
    path.write_text(f"episode: {json.dumps(name)}\nshots:\n  - id: {json.dumps(name)}\n"
                    "    prompt: p\n")
    with pytest.raises(InputError) as caught:
        load_shot_list(path)
    assert [(p.line, p.field) for p in caught.value.problems] == [(1, "episode"), (3, "id")]


def test_resolution_applies_defaults_then_shot_fields() -> None:
    shot_list = ShotList.model_validate({
        "episode": "ep01",
        "defaults": {"preset": "draft", "negative": "lowres", "style_prefix": "anime",
                     "style_suffix": "by tower ", "width": 640, "takes": 2,
                     "checkpoint": "house.safetensors"},
        "shots": [
            {"id": "a", "prompt": " rope bridge "},
            {"id": "b", "prompt": "market", "preset": "high", "negative": "", "takes": 1,
             "seed": 0, "width": 256, "height": 128, "checkpoint": "mine.safetensors"},
        ],
    })
    a0, a1, b0 = resolve_takes(shot_list)
    draft, high = BUILTIN_PRESETS["draft"], BUILTIN_PRESETS["high"]
    assert (a0.take, a1.take, b0.take) == (0, 1, 0)
    assert a0.prompt == "anime, rope bridge, by tower"
    assert (a0.negative, a0.checkpoint, a0.width, a0.height) == (
        "lowres", "house.safetensors", 640, draft.height)
    assert (a0.steps, a0.sampler, a0.scheduler, a0.cfg) == (
        draft.steps, draft.sampler, draft.scheduler, draft.cfg)
    assert a0.seed == a1.seed == derive_seed("ep01", "a")
    assert (b0.preset, b0.steps, b0.negative, b0.seed, b0.width, b0.height, b0.checkpoint) == (
        "high", high.steps, "", 0, 256, 128, "mine.safetensors")


def test_resolution_can_pick_shots_and_override_the_preset() -> None:
    shot_list = load_shot_list(ROOT / "shot_lists" / "ep01_demo.yaml")
    takes = resolve_takes(shot_list, preset_override="draft", shots={"sh030", "sh010"})
    assert [(t.shot_id, t.take) for t in takes] == [
        ("sh010", 0), ("sh010", 1), ("sh030", 0), ("sh030", 1), ("sh030", 2)]
    assert {t.preset for t in takes} == {"draft"} and {t.steps for t in takes} == {8}
    with pytest.raises(KeyError, match="sh999"):
        resolve_takes(shot_list, shots={"sh999"})
    with pytest.raises(KeyError, match="unknown preset 'ultra'"):
        resolve_takes(shot_list, preset_override="ultra")


@pytest.mark.parametrize(("prefix", "prompt", "suffix", "expected"), [
    ("", "a", "", "a"),
    ("anime", "a", "", "anime, a"),
    (" anime ", " a ", " b ", "anime, a, b"),
    ("", "a", "b", "a, b"),
])
def test_full_prompt(prefix: str, prompt: str, suffix: str, expected: str) -> None:
    assert full_prompt(prefix, prompt, suffix) == expected
