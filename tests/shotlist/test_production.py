"""Characters, layouts, line art and preset parts: one vocabulary in YAML, JSON and CSV.

Each bad input is one problem naming the file, line and field; resolution fills the
take's LoRA chain, trigger words, init image, ControlNet, hires pass and upscale model.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from studio import CAST, CONTROL_MODEL, LIST_YAML, problems_of, studio, write_png

from tower.shotlist.presets import BUILTIN_PRESETS, Preset, load_presets
from tower.shotlist.shots import ShotList, load_shot_list
from tower.spec.parts import ControlSpec, HiresSpec, LoraSpec, UpscaleSpec
from tower.spec.takes import full_prompt, resolve_takes

AOI = LoraSpec("char-aoi-v3.safetensors", 0.8, 0.8)
REN = LoraSpec("char-ren-v2.safetensors", 0.7, 0.6)


# ---- one list, three formats -----------------------------------------------------------

def test_yaml_json_and_csv_resolve_to_the_same_takes_and_keys(tmp_path: Path) -> None:
    folder = studio(tmp_path)
    by_format = {name: resolve_takes(load_shot_list(folder / name))
                 for name in ("ep.yaml", "ep.json", "ep.csv")}
    expected = by_format["ep.yaml"]
    for name, takes in by_format.items():
        assert takes == expected, name
        assert [t.key for t in takes] == [t.key for t in expected], name
    first, _, layout, control, plain = expected
    assert first.loras == (AOI, REN)
    assert first.prompt == "aoi, blue hair, school uniform, ren, red scarf, rooftop at dusk"
    assert (layout.loras, layout.denoise, layout.parts) == ((REN,), 0.5, "lora+img2img")
    assert layout.init_image is not None
    assert layout.init_image.path == str(folder / "layouts" / "sh020.png")
    assert control.control == ControlSpec(
        image=control.control.image, model=CONTROL_MODEL, strength=0.9, start=0.1, end=0.8)
    assert control.control.image.path == str(folder / "lineart" / "sh030.png")
    assert (plain.parts, plain.loras, plain.init_image, plain.control) == ("", (), None, None)


def test_a_plain_shot_keeps_its_key_beside_shots_with_parts(tmp_path: Path) -> None:
    folder = studio(tmp_path)
    plain = tmp_path / "plain.yaml"
    plain.write_text("episode: ep01\nshots:\n  - {id: sh040, prompt: plain street}\n")
    with_parts = resolve_takes(load_shot_list(folder / "ep.yaml"))[-1]
    assert with_parts == resolve_takes(load_shot_list(plain))[0]


def test_loaded_list_holds_the_cast_and_absolute_image_paths(tmp_path: Path) -> None:
    folder = studio(tmp_path)
    shot_list = load_shot_list(folder / "ep.yaml")
    assert list(shot_list.characters) == ["aoi", "ren"]
    assert shot_list.characters["ren"].trigger == ("ren", "red scarf", "school uniform")
    layout = shot_list.shots[1].layout
    assert layout is not None and Path(layout.image).is_absolute()
    # The model is self-contained: it round-trips without the include or the folder.
    assert ShotList.model_validate(shot_list.model_dump()) == shot_list


# ---- bad input: one clear problem each -------------------------------------------------

def _edit(folder: Path, old: str, new: str, name: str = "ep.yaml") -> Path:
    path = folder / name
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new))
    return path


@pytest.mark.parametrize(("name", "old", "new", "expected"), [
    ("ep.yaml", "layouts/sh020.png", "layouts/sh021.png",
     "ep.yaml:13 shot sh020: layout.image: missing file {folder}/layouts/sh021.png"),
    ("ep.yaml", "{image: layouts/sh020.png, denoise: 0.5}", "layouts/notes.png",
     "ep.yaml:13 shot sh020: layout: not an image: {folder}/layouts/notes.png"),
    ("ep.yaml", "[aoi, ren]", "[aoi, rem]",
     "ep.yaml:8 shot sh010: characters: unknown character 'rem' (did you mean 'ren'?); "
     "known: aoi, ren"),
    ("characters.yaml", "strength: 0.8", "strength: 150",
     "characters.yaml:4 character aoi: strength: must be at most 100.0 (got 150)"),
    ("characters.yaml", "strength_clip: 0.6", "strength_clip: -150",
     "characters.yaml:9 character ren: strength_clip: must be at least -100.0 (got -150)"),
    ("ep.yaml", "include: characters.yaml", "include: [characters.yaml, cast2.yaml]",
     "ep.yaml:2: include: cannot read {folder}/cast2.yaml: file not found"),
    ("ep.yaml", "include: characters.yaml",
     "include: characters.yaml\ncharacters:\n  ren: {lora: x.safetensors}",
     "ep.yaml:4 character ren: defined twice: first in {folder}/characters.yaml:6"),
    ("ep.yaml", f"  control_model: {CONTROL_MODEL}\n", "  takes: 1\n",
     "ep.yaml:16 shot sh030: control.model: is required (or set defaults.control_model)"),
    ("ep.yaml", "start: 0.1, end: 0.8", "start: 0.8, end: 0.1",
     "ep.yaml:16 shot sh030: control: start must be less than end (got start 0.8, end 0.1)"),
    ("ep.yaml", "denoise: 0.5", "denoise: 0",
     "ep.yaml:13 shot sh020: layout.denoise: must be more than 0.0 (got 0)"),
    ("characters.yaml", "    lora: char-aoi-v3.safetensors\n", "",
     "characters.yaml:2 character aoi: lora: is required"),
    ("characters.yaml", "trigger: [ren,", "trigger: [7,",
     "characters.yaml:10 character ren: trigger.0: must be text (got 7); put it in quotes"),
    ("characters.yaml", "characters:\n", "characters:\n  a oi: {lora: x}\n",
     "characters.yaml:2 character a oi: character name must be 1-64 characters: letters, "
     "digits, '.', '_' or '-', starting with a letter or digit (got 'a oi')"),
    ("ep.yaml", "characters: [ren]", "characters: [ren, ren]",
     "ep.yaml:12 shot sh020: characters: lists 'ren' more than once"),
    ("ep.yaml", "layout: {image", "layuot: {image",
     "ep.yaml:13 shot sh020: layuot: unknown field (did you mean 'layout'?)"),
    ("ep.yaml", "strength: 0.9", "strenght: 0.9",
     "ep.yaml:16 shot sh030: control.strenght: unknown field (did you mean 'strength'?)"),
])
def test_each_bad_input_is_one_problem_with_file_line_and_field(
        tmp_path: Path, name: str, old: str, new: str, expected: str) -> None:
    folder = studio(tmp_path)
    (folder / "layouts" / "notes.png").write_text("storyboard notes, not a picture\n")
    _edit(folder, old, new, name)
    assert problems_of(folder / "ep.yaml") == [expected.format(folder=folder)]


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("layouts/sh020.png,0.5", "layouts/gone.png,0.5",
     "ep.csv:3 shot sh020: layout: missing file {folder}/layouts/gone.png"),
    ("layouts/sh020.png,0.5", "layouts/sh020.png,1.5",
     "ep.csv:3 shot sh020: layout_denoise: must be at most 1.0 (got '1.5')"),
    ("aoi; ren", "aoi; rem",
     "ep.csv:2 shot sh010: characters: unknown character 'rem' (did you mean 'ren'?); "
     "known: aoi, ren"),
    (f"{CONTROL_MODEL},0.9", ",0.9", "ep.csv:4 shot sh030: control_model: is required"),
    ("0.9,0.1,0.8", "11,0.1,0.8",
     "ep.csv:4 shot sh030: control_strength: must be at most 10.0 (got '11')"),
    ("ep01,characters.yaml,sh040", "ep01,cast.yaml,sh040",
     "ep.csv:5: include: differs from earlier rows ('characters.yaml' vs 'cast.yaml')"),
    ("ep01,characters.yaml,sh010", "ep01,nope.yaml,sh010",
     "ep.csv:2: include: cannot read {folder}/nope.yaml: file not found"),
])
def test_csv_problems_name_the_row_and_the_column(tmp_path: Path, old: str, new: str,
                                                  expected: str) -> None:
    folder = studio(tmp_path)
    if "nope" in new:  # every row names the missing file, as a CSV must
        path = folder / "ep.csv"
        path.write_text(path.read_text().replace("characters.yaml", "nope.yaml"))
    else:
        _edit(folder, old, new, "ep.csv")
    assert problems_of(folder / "ep.csv") == [expected.format(folder=folder)]


def test_json_problems_have_lines_too(tmp_path: Path) -> None:
    folder = studio(tmp_path)
    _edit(folder, '"denoise": 0.5', '"denoise": 2', "ep.json")
    [problem] = problems_of(folder / "ep.json")
    assert problem.startswith("ep.json:") and problem.endswith(
        "shot sh020: layout.denoise: must be at most 1.0 (got 2)")


def test_every_problem_at_once_across_the_list_and_its_include(tmp_path: Path) -> None:
    folder = studio(tmp_path)
    _edit(folder, "strength: 0.8", "strength: 150", "characters.yaml")
    _edit(folder, "lineart/sh030.png", "lineart/none.png")
    _edit(folder, "plain street", "plain street\n    characters: [kai]")
    assert problems_of(folder / "ep.yaml") == [
        f"ep.yaml:16 shot sh030: control.image: missing file {folder}/lineart/none.png",
        "ep.yaml:19 shot sh040: characters: unknown character 'kai' (did you mean 'aoi'?); "
        "known: aoi, ren",
        "characters.yaml:4 character aoi: strength: must be at most 100.0 (got 150)",
    ]


@pytest.mark.parametrize(("cast", "expected"), [
    ("- aoi\n", "characters.yaml:1: must hold a 'characters:' mapping"),
    ("characters: [aoi]\n",
     "characters.yaml:1: characters: must map character names to their LoRA, strengths "
     "and trigger words"),
    ("characters: {}\nshots: []\n", "characters.yaml:2: shots: unknown field"),
    ("characters:\n  aoi: {lora: a, strength: 1, strength_model: 2}\n",
     "characters.yaml:2 character aoi: strength_model: give strength, or strength_model "
     "and strength_clip, not both"),
])
def test_bad_include_files(tmp_path: Path, cast: str, expected: str) -> None:
    (tmp_path / "characters.yaml").write_text(cast)
    path = tmp_path / "ep.yaml"
    path.write_text("episode: ep01\ninclude: characters.yaml\nshots: [{id: a, prompt: b}]\n")
    assert problems_of(path) == [expected]


def test_an_include_must_be_yaml_or_json(tmp_path: Path) -> None:
    path = tmp_path / "ep.yaml"
    path.write_text("episode: ep01\ninclude: [cast.csv]\nshots: [{id: a, prompt: b}]\n")
    assert problems_of(path) == [
        f"ep.yaml:2: include: cannot read {tmp_path}/cast.csv: "
        "must be a YAML or JSON file of characters"]


def test_two_includes_defining_one_character_name_both_files(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(CAST)
    (tmp_path / "b.json").write_text('{"characters": {\n "aoi": {"lora": "other.safetensors"}}}')
    path = tmp_path / "ep.yaml"
    path.write_text("episode: ep01\ninclude: [a.yaml, b.json]\nshots: [{id: a, prompt: b}]\n")
    assert problems_of(path) == [
        f"b.json:2 character aoi: defined twice: first in {tmp_path}/a.yaml:2"]


def test_include_paths_are_relative_to_the_list(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    folder = studio(tmp_path / "season" / "ep01")
    monkeypatch.chdir(tmp_path)
    shot_list = load_shot_list(Path("season/ep01/ep.yaml"))
    assert set(shot_list.characters) == {"aoi", "ren"}
    assert shot_list.shots[1].layout.image == str(folder.resolve() / "layouts" / "sh020.png")


# ---- resolution ------------------------------------------------------------------------

@pytest.mark.parametrize(("fields", "strengths"), [
    ("", (1.0, 1.0)),
    ("strength: 0.8", (0.8, 0.8)),
    ("strength_model: 0.7", (0.7, 0.7)),
    ("strength_clip: 0.5", (1.0, 0.5)),
    ("{strength_model: 0.7, strength_clip: -0.2}", (0.7, -0.2)),
    ("strength: -100", (-100.0, -100.0)),
])
def test_lora_strength_defaults(tmp_path: Path, fields: str, strengths: tuple) -> None:
    body = fields.strip("{}").replace(", ", "\n      ").strip()
    path = tmp_path / "ep.yaml"
    path.write_text("episode: ep01\ncharacters:\n  aoi:\n      lora: a.safetensors\n"
                    + (f"      {body}\n" if body else "")
                    + "shots: [{id: a, prompt: b, characters: [aoi]}]\n")
    [take] = resolve_takes(load_shot_list(path))
    assert (take.loras[0].strength_model, take.loras[0].strength_clip) == strengths


@pytest.mark.parametrize("trigger", [
    '"aoi, blue hair"', "[aoi, blue hair]", '["aoi, blue hair"]', '" aoi ,, blue hair, "'])
def test_trigger_forms_agree(tmp_path: Path, trigger: str) -> None:
    path = tmp_path / "ep.yaml"
    path.write_text(f"episode: ep01\ncharacters:\n  aoi: {{lora: a, trigger: {trigger}}}\n"
                    "shots: [{id: a, prompt: rooftop, characters: [aoi]}]\n")
    assert load_shot_list(path).characters["aoi"].trigger == ("aoi", "blue hair")


def test_trigger_words_follow_the_prefix_in_character_order_each_once(tmp_path: Path) -> None:
    folder = studio(tmp_path)
    _edit(folder, "defaults:\n", "defaults:\n  style_prefix: anime key visual\n"
                                 "  style_suffix: detailed background\n")
    _edit(folder, "[aoi, ren]", "[ren, aoi]")
    take = resolve_takes(load_shot_list(folder / "ep.yaml"))[0]
    assert take.prompt == ("anime key visual, ren, red scarf, school uniform, aoi, blue hair, "
                           "rooftop at dusk, detailed background")
    assert full_prompt("p", "shot", "s", ["a", " b ", "a", "", "c"]) == "p, a, b, c, shot, s"
    assert full_prompt("p", "shot", "s") == "p, shot, s"


def test_lora_chain_is_the_characters_in_order_then_the_presets_style(tmp_path: Path) -> None:
    folder = studio(tmp_path)
    presets = load_presets(_presets(tmp_path, "standard:\n  loras:\n"
                                    "    - {name: style-cel.safetensors, strength: 0.5}\n"
                                    "    - {name: grain.safetensors, strength_model: 0.3}\n"))
    _edit(folder, "[aoi, ren]", "[ren, aoi]")
    takes = resolve_takes(load_shot_list(folder / "ep.yaml", presets), presets)
    style = (LoraSpec("style-cel.safetensors", 0.5, 0.5), LoraSpec("grain.safetensors", 0.3, 0.3))
    assert takes[0].loras == (REN, AOI, *style)
    assert takes[-1].loras == style  # a plain shot still gets the preset's style
    assert takes[-1].models == (("checkpoints", takes[-1].checkpoint),
                                ("loras", "style-cel.safetensors"), ("loras", "grain.safetensors"))


# ---- presets: style LoRAs, hires, upscale ----------------------------------------------

def _presets(folder: Path, text: str) -> Path:
    path = folder / "presets.yaml"
    path.write_text(text)
    return path


def test_builtin_presets_add_no_parts() -> None:
    for preset in BUILTIN_PRESETS.values():
        assert (preset.loras, preset.hires, preset.upscale) == ((), None, None)


PARTS_PRESETS = """\
presets:
  final:
    extends: standard
    width: 512
    height: 512
    loras: [{name: style-cel.safetensors, strength: 0.5}]
    hires: {scale: 1.5, denoise: 0.45, steps: 8}
    upscale: {model: anime-x2.safetensors}
  final4k:
    extends: final
    hires: {scale: 2, denoise: 0.5, steps: 10, method: bislerp}
    upscale: {model: anime-x4.safetensors, scale: 4}
"""


def test_presets_carry_hires_and_upscale_into_the_takes(tmp_path: Path) -> None:
    presets = load_presets(_presets(tmp_path, PARTS_PRESETS))
    path = tmp_path / "ep.yaml"
    path.write_text("episode: ep01\nshots:\n  - {id: a, prompt: b, preset: final}\n"
                    "  - {id: c, prompt: d, preset: final4k}\n")
    final, final4k = resolve_takes(load_shot_list(path, presets), presets)
    assert final.hires == HiresSpec(1.5, 0.45, 8, "nearest-exact")
    assert final.upscale == UpscaleSpec("anime-x2.safetensors", 2)
    assert (final.sample_size, final.output_size) == ((768, 768), (1536, 1536))
    assert final4k.loras == final.loras == (LoraSpec("style-cel.safetensors", 0.5, 0.5),)
    assert final4k.hires == HiresSpec(2.0, 0.5, 10, "bislerp")
    assert final4k.output_size == (4096, 4096)
    assert final.parts == final4k.parts == "lora+hires+upscale"


def test_a_hires_pass_changes_only_that_presets_keys(tmp_path: Path) -> None:
    folder = studio(tmp_path)
    presets = load_presets(_presets(tmp_path, "high:\n  hires: {scale: 1.5, denoise: 0.5, "
                                              "steps: 8}\n"))
    _edit(folder, "  - id: sh040\n", "  - id: sh040\n    preset: high\n")
    before = resolve_takes(load_shot_list(folder / "ep.yaml"))
    after = resolve_takes(load_shot_list(folder / "ep.yaml", presets), presets)
    changed = [b.shot_id for b, a in zip(before, after, strict=True) if a.key != b.key]
    assert changed == ["sh040"]


@pytest.mark.parametrize(("text", "expected"), [
    ("standard:\n  hires:\n    scale: 1\n    denoise: 0.5\n    steps: 8\n",
     "presets.yaml:3 preset standard: hires.scale: must be more than 1.0 (got 1)"),
    ("standard:\n  hires: {scale: 4.5, denoise: 0.5, steps: 8}\n",
     "presets.yaml:2 preset standard: hires.scale: must be at most 4.0 (got 4.5)"),
    ("standard:\n  hires:\n    scale: 2\n    denoise: 0.5\n    steps: 0\n",
     "presets.yaml:5 preset standard: hires.steps: must be at least 1 (got 0)"),
    ("standard:\n  hires:\n    scale: 2\n    denoise: 0.5\n    steps: 4\n    method: lanczos\n",
     "presets.yaml:6 preset standard: hires.method: must be one of nearest-exact, bilinear, "
     "area, bicubic, bislerp (got 'lanczos')"),
    ("standard:\n  hires:\n    scale: 2\n    steps: 4\n",
     "presets.yaml:2 preset standard: hires.denoise: is required"),
    ("standard:\n  upscale: {model: x4.pth, scale: 0}\n",
     "presets.yaml:2 preset standard: upscale.scale: must be at least 1 (got 0)"),
    ("standard:\n  upscale: {scale: 2}\n",
     "presets.yaml:2 preset standard: upscale.model: is required"),
    ("standard:\n  loras:\n    - name: a\n    - name: b\n      strength: 150\n",
     "presets.yaml:5 preset standard: loras.1.strength: must be at most 100.0 (got 150)"),
    ("standard:\n  loras: style.safetensors\n",
     "presets.yaml:2 preset standard: loras: must be a list (got 'style.safetensors')"),
])
def test_bad_preset_parts_are_one_problem_each(tmp_path: Path, text: str, expected: str) -> None:
    assert problems_of(_presets(tmp_path, text), load_presets) == [expected]


def test_a_preset_built_in_code_takes_the_same_parts() -> None:
    preset = Preset.model_validate({**BUILTIN_PRESETS["draft"].model_dump(),
                                    "loras": [{"name": "s", "strength": 0.5}],
                                    "upscale": {"model": "x2"}})
    assert preset.loras[0].spec() == LoraSpec("s", 0.5, 0.5)
    assert preset.upscale is not None and preset.upscale.spec() == UpscaleSpec("x2", 2)


def test_a_list_built_in_code_is_checked_for_its_references(tmp_path: Path) -> None:
    write_png(tmp_path / "l.png")
    with pytest.raises(ValueError, match="unknown character 'aoi'"):
        ShotList.model_validate({"episode": "e", "shots": [
            {"id": "a", "prompt": "b", "characters": ["aoi"]}]})
    with pytest.raises(ValueError, match=r"control.model: is required"):
        ShotList.model_validate({"episode": "e", "shots": [
            {"id": "a", "prompt": "b", "control": str(tmp_path / "l.png")}]})


def test_the_listed_yaml_is_what_the_studio_module_writes() -> None:
    # Line numbers in the tables above are those of this text.
    assert LIST_YAML.splitlines()[12] == "    layout: {image: layouts/sh020.png, denoise: 0.5}"
    assert CAST.splitlines()[3] == "    strength: 0.8"
