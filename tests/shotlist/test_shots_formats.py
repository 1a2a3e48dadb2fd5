"""YAML, JSON and CSV describe the same shot lists; shipped lists load and agree."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paths import CONTRACT, REPO

from tower.shotlist.errors import InputError
from tower.shotlist.presets import BUILTIN_PRESETS, load_presets
from tower.shotlist.shots import CSV_COLUMNS, ShotList, load_shot_list, read_shot_list
from tower.spec.takes import full_prompt, resolve_takes

ROOT = REPO
SHOT_LISTS = ROOT / "shot_lists"
# tmp_path is shared by a test's examples; each example overwrites its own files.
FIXTURE = [HealthCheck.function_scoped_fixture]
COLUMNS = ("episode", "title", "include", "id", "prompt", "negative", "preset", "takes", "seed",
           "checkpoint", "width", "height", "notes", "tags", "characters", "layout",
           "layout_denoise", "control", "control_model", "control_strength", "control_start",
           "control_end")


def csv_rows(shot_list: ShotList) -> list[dict[str, Any]]:
    """The list as CSV rows: a CSV has no defaults, so they are baked into every row."""
    d = shot_list.defaults
    rows = []
    for shot in shot_list.shots:
        rows.append({
            "episode": shot_list.episode, "title": shot_list.title, "id": shot.id,
            "prompt": full_prompt(d.style_prefix, shot.prompt, d.style_suffix),
            "negative": shot.negative if shot.negative is not None else d.negative,
            "preset": shot.preset or d.preset, "takes": shot.takes or d.takes,
            "seed": shot.seed, "checkpoint": shot.checkpoint or d.checkpoint,
            "width": shot.width or d.width, "height": shot.height or d.height,
            "notes": shot.notes, "tags": ";".join(shot.tags),
        })
    return rows


def to_csv(shot_list: ShotList, newline: str = "\n", bom: bool = False) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, COLUMNS, lineterminator=newline)
    writer.writeheader()
    writer.writerows(csv_rows(shot_list))
    return ("\ufeff" if bom else "") + out.getvalue()


def to_yaml(shot_list: ShotList) -> str:
    return yaml.safe_dump(shot_list.model_dump(mode="json", exclude_none=True),
                          allow_unicode=True, sort_keys=False)


def to_json(shot_list: ShotList) -> str:
    return json.dumps(shot_list.model_dump(mode="json", exclude_none=True), indent=1)


def test_csv_columns_match_the_loader() -> None:
    assert set(COLUMNS) == CSV_COLUMNS


# ---- shipped lists ---------------------------------------------------------------------

def test_demo_csv_resolves_to_exactly_the_demo_yaml_takes() -> None:
    from_yaml = resolve_takes(load_shot_list(SHOT_LISTS / "ep01_demo.yaml"))
    loaded = read_shot_list(SHOT_LISTS / "ep01_demo.csv")
    assert loaded.warnings == []
    assert resolve_takes(loaded.shot_list) == from_yaml
    assert [t.key for t in resolve_takes(loaded.shot_list)] == [t.key for t in from_yaml]


def test_presets_example_loads_and_changes_what_it_says() -> None:
    presets = load_presets(SHOT_LISTS / "presets.example.yaml")
    assert set(presets) - set(BUILTIN_PRESETS), "the example adds a custom preset"
    changed = [n for n in BUILTIN_PRESETS if presets[n] != BUILTIN_PRESETS[n]]
    assert changed, "the example overrides a built-in preset"
    shot_list = load_shot_list(SHOT_LISTS / "ep01_demo.yaml", presets)
    for name in presets:
        assert resolve_takes(shot_list, presets, preset_override=name)


def _season_module() -> Any:
    spec = importlib.util.spec_from_file_location("generate_season",
                                                  SHOT_LISTS / "generate_season.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_season_is_deterministic_varied_and_shares_images(tmp_path: Path) -> None:
    season = _season_module()
    paths = season.generate(tmp_path / "a")
    again = season.generate(tmp_path / "b")
    assert [p.read_bytes() for p in paths] == [p.read_bytes() for p in again]
    assert len(paths) == 12
    takes = []
    for path in paths:
        shot_list = load_shot_list(path)
        assert len(shot_list.shots) == 250
        takes += resolve_takes(shot_list)
    assert {t.preset for t in takes} == set(BUILTIN_PRESETS)
    per_shot = {(t.episode, t.shot_id): t.take + 1 for t in takes}
    assert set(per_shot.values()) == {1, 2, 3, 4}
    keys = [t.key for t in takes]
    assert len(set(keys)) < len(keys)
    episodes_per_key: dict[str, set[str]] = {}
    for take in takes:
        episodes_per_key.setdefault(take.key, set()).add(take.episode)
    assert max(len(e) for e in episodes_per_key.values()) > 1, "plates recur across episodes"


def test_generated_folder_is_ignored_by_git() -> None:
    ignore = (ROOT / ".gitignore").read_text().splitlines()
    assert "shot_lists/generated/" in ignore


# ---- round trips -----------------------------------------------------------------------

ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,11}", fullmatch=True)
# Spreadsheets drop surrounding spaces, so pad often to check that nothing depends on them.
text = st.builds(lambda before, middle, after: before + middle + after,
                 st.sampled_from(["", " ", "  "]),
                 st.text(st.characters(exclude_categories=("Cs", "Cc"), exclude_characters=";"),
                         max_size=30),
                 st.sampled_from(["", " ", "\t"]))
prompts = text.filter(lambda s: s.strip())
sizes = st.integers(8, 512).map(lambda n: n * 8)
maybe = st.none

shots = st.fixed_dictionaries({"id": ids, "prompt": prompts}, optional={
    "negative": text, "preset": st.sampled_from(sorted(BUILTIN_PRESETS)),
    "takes": st.integers(1, 64), "seed": st.integers(0, 2**64 - 1),
    "checkpoint": prompts, "width": sizes, "height": sizes, "notes": text,
    "tags": st.lists(ids, max_size=3),
})
defaults = st.fixed_dictionaries({}, optional={
    "preset": st.sampled_from(sorted(BUILTIN_PRESETS)), "negative": text,
    "style_prefix": text, "style_suffix": text, "takes": st.integers(1, 4),
    "checkpoint": prompts, "width": sizes, "height": sizes,
})
shot_lists = st.builds(
    lambda episode, title, d, s: ShotList.model_validate(
        {"episode": episode, "title": title, "defaults": d, "shots": s}),
    ids, st.one_of(maybe(), prompts), defaults,
    st.lists(shots, min_size=1, max_size=6, unique_by=lambda s: s["id"]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=FIXTURE)
@given(shot_list=shot_lists, newline=st.sampled_from(["\n", "\r\n"]), bom=st.booleans())
def test_any_list_round_trips_through_yaml_json_and_csv(tmp_path: Path, shot_list: ShotList,
                                                        newline: str, bom: bool) -> None:
    expected = resolve_takes(shot_list)
    for name, content in (("l.yaml", to_yaml(shot_list)), ("l.json", to_json(shot_list)),
                          ("l.csv", to_csv(shot_list, newline, bom))):
        path = tmp_path / name
        path.write_bytes(content.encode("utf-8"))
        assert resolve_takes(load_shot_list(path)) == expected, name


def test_csv_with_bom_and_crlf_reads_like_plain_csv(tmp_path: Path) -> None:
    shot_list = load_shot_list(SHOT_LISTS / "ep01_demo.yaml")
    plain, excel = tmp_path / "plain.csv", tmp_path / "excel.csv"
    plain.write_text(to_csv(shot_list), encoding="utf-8", newline="")
    excel.write_text(to_csv(shot_list, "\r\n", bom=True), encoding="utf-8", newline="")
    assert excel.read_bytes().startswith(b"\xef\xbb\xbfepisode,")
    assert load_shot_list(excel) == load_shot_list(plain)


def test_empty_csv_cells_mean_use_the_default(tmp_path: Path) -> None:
    path = tmp_path / "ep.csv"
    path.write_text("episode,id,prompt,preset,takes,seed,width,tags\n"
                    "ep01,a,bridge,,,,,\nep01,b,market,high,3,7,640,x; y\n")
    a, b = load_shot_list(path).shots
    assert (a.preset, a.takes, a.seed, a.width, a.tags) == (None, None, None, None, ())
    assert (b.preset, b.takes, b.seed, b.width, b.tags) == ("high", 3, 7, 640, ("x", "y"))


def test_field_order_does_not_matter(tmp_path: Path) -> None:
    shot_list = load_shot_list(SHOT_LISTS / "ep01_demo.yaml")
    data = shot_list.model_dump(mode="json", exclude_none=True)
    data = dict(reversed(data.items()))
    data["shots"] = [dict(reversed(s.items())) for s in reversed(data["shots"])]
    path = tmp_path / "reordered.json"
    path.write_text(json.dumps(data))
    assert sorted(t.key for t in resolve_takes(load_shot_list(path))) == sorted(
        t.key for t in resolve_takes(shot_list))


# ---- arbitrary input -------------------------------------------------------------------

@settings(max_examples=150, deadline=None, suppress_health_check=FIXTURE)
@given(content=st.one_of(st.text(max_size=300), st.binary(max_size=300)),
       suffix=st.sampled_from([".yaml", ".json", ".csv"]))
def test_arbitrary_bytes_load_or_raise_input_error(tmp_path: Path, content: str | bytes,
                                                   suffix: str) -> None:
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(content.encode("utf-8", "surrogatepass") if isinstance(content, str)
                     else content)
    try:
        load_shot_list(path)
    except InputError as err:
        assert err.problems and all(p.message for p in err.problems)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.text(max_size=8) | st.integers() | st.none(), inner, max_size=4),
    max_leaves=20,
)
near_shots = st.lists(st.dictionaries(
    st.sampled_from(["id", "prompt", "takes", "seed", "preset", "width", "tags", "promt"]),
    json_values, max_size=5), max_size=4)


@settings(max_examples=150, deadline=None, suppress_health_check=FIXTURE)
@given(data=st.one_of(json_values, st.fixed_dictionaries(
    {"episode": json_values, "shots": near_shots}, optional={"defaults": json_values})))
def test_arbitrary_structures_load_or_raise_input_error(tmp_path: Path, data: Any) -> None:
    for name, content in (("s.json", json.dumps(data)),
                          ("s.yaml", yaml.safe_dump(data, sort_keys=False))):
        path = tmp_path / name
        path.write_text(content, encoding="utf-8")
        try:
            load_shot_list(path)
        except InputError as err:
            assert err.problems


@pytest.mark.parametrize("name", ["ep01_demo.yaml", "ep01_demo.csv"])
def test_shipped_lists_use_only_recorded_checkpoints(name: str) -> None:
    contract = CONTRACT / "models_checkpoints.json"
    recorded = set(json.loads(contract.read_text())["response"]["body"])
    takes = resolve_takes(load_shot_list(SHOT_LISTS / name))
    assert {t.checkpoint for t in takes} <= recorded
