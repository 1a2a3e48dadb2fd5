"""Presets: the built-in table, overrides from a file, and what they do to render keys."""

from __future__ import annotations

from pathlib import Path

import pytest
from paths import DEMO_SHOT_LIST

from blocks import RenderPresets
from tower.shotlist.errors import InputError
from tower.shotlist.presets import (
    BUILTIN_PRESETS,
    DRAFT_CHECKPOINT,
    FINAL_CHECKPOINT,
    Preset,
    apply_overrides,
    load_presets,
)
from tower.shotlist.shots import load_shot_list
from tower.spec.takes import resolve_takes

DEMO = DEMO_SHOT_LIST


@pytest.mark.parametrize(("name", "row"), [
    ("draft", (8, 512, 512, "dpm_fast", "normal", 5.0, DRAFT_CHECKPOINT, 8)),
    ("standard", (15, 768, 768, "dpmpp_2m", "karras", 6.5, FINAL_CHECKPOINT, 4)),
    ("high", (25, 1024, 1024, "dpmpp_2m_sde", "karras", 7.5, FINAL_CHECKPOINT, 2)),
])
def test_builtin_table(name: str, row: tuple) -> None:
    p = BUILTIN_PRESETS[name]
    assert (p.steps, p.width, p.height, p.sampler, p.scheduler, p.cfg, p.checkpoint,
            p.max_batch) == row
    assert (p.name, p.denoise, p.vae_tiled) == (name, 1.0, False)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "presets.yaml"
    path.write_text(text)
    return path


def _keys(presets: dict[str, Preset]) -> dict[tuple[str, int], tuple[str, str]]:
    takes = resolve_takes(load_shot_list(DEMO, presets), presets)
    return {(t.shot_id, t.take): (t.preset, t.key) for t in takes}


def test_no_file_means_the_builtins_and_a_copy_of_them() -> None:
    presets = load_presets(None)
    assert presets == BUILTIN_PRESETS
    presets.pop("draft")
    assert "draft" in BUILTIN_PRESETS


@pytest.mark.parametrize("text", [
    "standard:\n  description: renamed\n  max_batch: 1\n",
    "presets:\n  high:\n    max_batch: 1\n  draft:\n    description: x\n",
])
def test_description_and_max_batch_change_no_key(tmp_path: Path, text: str) -> None:
    presets = load_presets(_write(tmp_path, text))
    assert presets != BUILTIN_PRESETS
    assert _keys(presets) == _keys(BUILTIN_PRESETS)


@pytest.mark.parametrize(("name", "field", "value"), [
    ("standard", "steps", 20), ("draft", "cfg", 5.5), ("high", "sampler", "euler"),
    ("standard", "scheduler", "normal"), ("standard", "width", 640), ("high", "vae_tiled", True),
    ("standard", "checkpoint", DRAFT_CHECKPOINT), ("draft", "denoise", 0.9),
])
def test_a_pixel_changing_field_changes_only_that_presets_keys(
        tmp_path: Path, name: str, field: str, value: object) -> None:
    presets = load_presets(_write(tmp_path, f"{name}:\n  {field}: {str(value).lower()}\n"))
    assert getattr(presets[name], field) == value
    before, after = _keys(BUILTIN_PRESETS), _keys(presets)
    for take, (preset, key) in before.items():
        assert (after[take][1] != key) == (preset == name), take


def test_extends_adds_presets_that_shots_can_use(tmp_path: Path) -> None:
    path = _write(tmp_path, "presets:\n  storyboard:\n    extends: draft\n    width: 768\n"
                            "    height: 432\n  board2:\n    extends: storyboard\n    steps: 4\n"
                            "  scratch:\n    steps: 3\n    width: 256\n    height: 256\n"
                            "    sampler: euler\n    scheduler: normal\n    cfg: 4\n"
                            "    checkpoint: x.safetensors\n")
    presets = load_presets(path)
    board = presets["storyboard"]
    assert board.model_dump() == {**BUILTIN_PRESETS["draft"].model_dump(), "name": "storyboard",
                                  "width": 768, "height": 432}
    assert (presets["board2"].steps, presets["board2"].height) == (4, 432)
    assert (presets["scratch"].max_batch, presets["scratch"].cfg) == (4, 4.0)
    shots = tmp_path / "ep.yaml"
    shots.write_text("episode: ep01\nshots:\n  - {id: a, prompt: p, preset: storyboard}\n")
    with pytest.raises(InputError, match="unknown preset 'storyboard'"):
        load_shot_list(shots)
    (take,) = resolve_takes(load_shot_list(shots, presets), presets)
    assert (take.preset, take.width, take.height, take.steps) == ("storyboard", 768, 432, 8)


def test_overriding_a_builtin_keeps_its_other_fields() -> None:
    presets = apply_overrides({"high": {"steps": 30}})
    assert presets["high"] == BUILTIN_PRESETS["high"].model_copy(update={"steps": 30})
    assert presets["draft"] is BUILTIN_PRESETS["draft"]


BAD_PRESETS = """\
presets:
  standard:
    steps: 0
    cfg: yes
    sampler: ""
  storyboard:
    extends: draft
    widht: 513
    width: 513
  final4k:
    extends: ultra
  bad name:
    extends: draft
  empty: {}
  scalar: 3
  tiled:
    extends: high
    vae_tile_size: 500
    max_batch: 65
    denoise: 0
"""


def test_every_bad_override_is_reported_with_its_line(tmp_path: Path) -> None:
    path = _write(tmp_path, BAD_PRESETS)
    with pytest.raises(InputError) as caught:
        load_presets(path)
    assert [str(p).removeprefix(f"{tmp_path}/") for p in caught.value.problems] == [
        "presets.yaml:3 preset standard: steps: must be at least 1 (got 0)",
        "presets.yaml:4 preset standard: cfg: must be a number, not true/false (got True)",
        "presets.yaml:5 preset standard: sampler: must not be empty",
        "presets.yaml:8 preset storyboard: widht: unknown field (did you mean 'width'?)",
        "presets.yaml:9 preset storyboard: width: must be a multiple of 8 (got 513)",
        "presets.yaml:11 preset final4k: extends: unknown preset 'ultra'; "
        "known: draft, high, standard",
        "presets.yaml:12 preset bad name: preset name must be 1-64 characters: letters, "
        "digits, '.', '_' or '-', starting with a letter or digit (got 'bad name')",
        "presets.yaml:14 preset empty: a new preset needs 'extends: <preset>' or every field; "
        "missing: steps, width, height, sampler, scheduler, cfg, checkpoint",
        "presets.yaml:15 preset scalar: must be a mapping of fields",
        "presets.yaml:18 preset tiled: vae_tile_size: must be a multiple of 32 (got 500)",
        "presets.yaml:19 preset tiled: max_batch: must be at most 64 (got 65)",
        "presets.yaml:20 preset tiled: denoise: must be more than 0.0 (got 0)",
    ]


def test_a_problem_inside_a_part_has_its_line_and_a_hint(tmp_path: Path) -> None:
    path = _write(tmp_path, "film:\n  extends: standard\n  hires: {scale: 2, denoise: 0.5, "
                  "steps: 10, metod: area}\n  loras:\n    - {name: a.safetensors, "
                  "strength: 150}\n")
    with pytest.raises(InputError) as caught:
        load_presets(path)
    assert [str(p).removeprefix(f"{tmp_path}/") for p in caught.value.problems] == [
        "presets.yaml:3 preset film: hires.metod: unknown field (did you mean 'method'?)",
        "presets.yaml:5 preset film: loras.0.strength: must be at most 100.0 (got 150)",
    ]


def test_problems_without_a_file_have_no_line() -> None:
    with pytest.raises(InputError) as caught:
        apply_overrides({"draft": {"steps": -1}})
    (problem,) = caught.value.problems
    assert (problem.source, problem.line, problem.field) == ("<presets>", None, "steps")


@pytest.mark.parametrize(("text", "message"), [
    ("- draft\n", "must map preset names to their fields"),
    ("# only a comment\n", "must map preset names to their fields"),
    ("presets: [draft]\n", "must map preset names to their fields"),
    ("draft:\n  steps: 8\ndraft:\n  steps: 9\n", "draft: duplicate key"),
    ("presets:\n  draft: {}\n  1: {extends: draft}\n",
     "presets.yaml:3 preset 1: preset names must be text; put it in quotes"),
])
def test_malformed_presets_files(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        load_presets(_write(tmp_path, text))


MODELS_TABLE = """\
models:
  anime-final-sd15.safetensors: {revision: "2026-11"}
  char-aoi-v3.safetensors:
    revision: 3
presets:
  draft: {on_suspect: rerender}
"""


def test_the_models_table_gives_every_preset_its_revisions(tmp_path: Path) -> None:
    path = tmp_path / "presets.yaml"
    path.write_text(MODELS_TABLE)
    presets = load_presets(path)
    assert {p.model_revisions for p in presets.values()} == {
        (("anime-final-sd15.safetensors", "2026-11"), ("char-aoi-v3.safetensors", "3"))}
    assert presets["draft"].on_suspect == "rerender" and presets["high"].on_suspect == "flag"


@pytest.mark.parametrize(("entry", "line", "words"), [
    ('  anime-final-sd15.safetensors: "2026-11"\n', 2, "must be {revision: <text>}"),
    ("  anime-final-sd15.safetensors: {revision: ''}\n", 2, "must be a non-empty text"),
    ("  anime-final-sd15.safetensors: {revision: 1, hash: x}\n", 2, "the only field"),
    ("  anime-final-sd15.safetensors:\n    revision: true\n", 3, "must be a non-empty text"),
])
def test_a_bad_models_entry_is_reported_with_its_line(tmp_path: Path, entry: str, line: int,
                                                      words: str) -> None:
    path = tmp_path / "presets.yaml"
    path.write_text("models:\n" + entry)
    with pytest.raises(InputError) as caught:
        load_presets(path)
    (problem,) = caught.value.problems
    assert (problem.source, problem.line) == (str(path), line)
    assert problem.where.startswith("models") and words in problem.message, problem


def test_a_presets_block_carries_a_models_table_and_checks_it() -> None:
    block = RenderPresets(presets={"draft": {"steps": 6}},
                          models={"anime-final-sd15.safetensors": {"revision": "2026-12"}})
    presets = block.get_presets()
    assert presets["draft"].steps == 6
    assert presets["draft"].model_revisions == (("anime-final-sd15.safetensors", "2026-12"),)
    with pytest.raises(InputError) as caught:
        RenderPresets(models={"anime-final-sd15.safetensors": {"rev": "x"}}).get_presets()
    (problem,) = caught.value.problems
    assert "the only field" in problem.message and problem.line is None
