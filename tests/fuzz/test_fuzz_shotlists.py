"""A broken shot list is reported with its file, line and field, in every format.

``tests/shotlist`` checks that arbitrary bytes and structures never crash the loader;
here each generated mistake must also be *findable*: the production team fixes lists
from the report alone, so a problem without a line (or naming the wrong field) is a
bug even when nothing crashed.
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from tower.cli import app
from tower.shotlist.errors import InputError, Problem
from tower.shotlist.shots import load_shot_list

# Reproducible in CI: the same examples every run, no example database.
FUZZ = settings(max_examples=60, deadline=2000, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
FORMATS = ("yaml", "json", "csv")
COLUMNS = ("episode", "id", "prompt", "takes", "seed", "width", "preset")


def write(folder: Path, fmt: str, shots: list[dict[str, Any]], episode: Any = "ep01") -> Path:
    """The list in ``fmt``; a CSV bakes the episode into every row, as spreadsheets do."""
    path = folder / f"list.{fmt}"
    data = {"episode": episode, "shots": shots}
    if fmt == "yaml":
        path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), "utf-8")
    elif fmt == "json":
        path.write_text(json.dumps(data, indent=1), "utf-8")
    else:
        out = io.StringIO()
        writer = csv.DictWriter(out, COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows({"episode": episode, **shot} for shot in shots)
        path.write_text(out.getvalue(), "utf-8")
    return path


def problems_of(path: Path) -> list[Problem]:
    started = time.perf_counter()
    with pytest.raises(InputError) as caught:
        load_shot_list(path)
    assert time.perf_counter() - started < 5, "a bad list must fail fast"
    return caught.value.problems


def line_of_shot(path: Path, shot_id: str) -> int:
    """The line a shot's id is written on (YAML, JSON) or its row starts on (CSV)."""
    lines = path.read_text("utf-8").splitlines()
    marks = (f"id: {shot_id}", f'"id": "{shot_id}"', f",{shot_id},")
    return next(n for n, text in enumerate(lines, 1) if any(m in text for m in marks))


# ---- one bad field among good shots -----------------------------------------------------

BAD_FIELDS: dict[str, list[Any]] = {
    "takes": [0, -1, 65, 10**6, "many", 2.5],
    "seed": [-1, 2**64, "lucky"],
    "width": [0, -8, 63, 100, 8192],
    "prompt": ["   ", "x\x07y", "tab\tok but bell\x07", "esc \x1b[31m red"],
    "preset": ["ultra", "drfat"],
}
good = st.builds(lambda n, takes: {"id": f"sh{n:03d}", "prompt": f"shot {n} prompt",
                                   "takes": takes},
                 st.integers(0, 999), st.integers(1, 4))


@FUZZ
@given(fmt=st.sampled_from(FORMATS), before=st.lists(good, max_size=3, unique_by=str),
       field=st.sampled_from(sorted(BAD_FIELDS)), data=st.data())
def test_one_bad_field_is_reported_at_its_shots_line(tmp_path: Path, fmt: str,
                                                     before: list[dict[str, Any]],
                                                     field: str, data: st.DataObject) -> None:
    value = data.draw(st.sampled_from(BAD_FIELDS[field]), label="value")
    shots = [dict(s, id=f"a{n}") for n, s in enumerate(before)]
    shots.append({"id": "bad", "prompt": "the rope bridge", field: value})
    path = write(tmp_path, fmt, shots)
    problems = problems_of(path)
    assert len(problems) == 1, problems
    problem = problems[0]
    assert problem.source == str(path) and problem.where == "shot bad"
    assert problem.field == field and problem.message
    if fmt == "csv":
        assert problem.line == len(shots) + 1  # header, then one row per shot
    else:
        assert line_of_shot(path, "bad") <= problem.line <= line_of_shot(path, "bad") + 3


# ---- ids that would become paths ---------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("shot_id", ["../../etc", "a/b", "a\\b", "..", ".hidden", "/abs",
                                     "sh..010", "C:x", "sh 010", "sh\n010", "x" * 65, ""])
def test_ids_that_would_leave_the_render_folder_are_refused(tmp_path: Path, fmt: str,
                                                            shot_id: str) -> None:
    path = write(tmp_path, fmt, [{"id": "ok", "prompt": "p"}, {"id": shot_id, "prompt": "p"}])
    problems = problems_of(path)
    assert [(p.field, p.source) for p in problems] == [("id", str(path))]
    assert problems[0].line is not None and problems[0].line > 1


@pytest.mark.parametrize("fmt", ["yaml", "json"])
@pytest.mark.parametrize("episode", ["../ep01", "ep/01", "..", "ep01\x00"])
def test_episode_names_that_would_be_paths_are_refused(tmp_path: Path, fmt: str,
                                                       episode: str) -> None:
    path = write(tmp_path, fmt, [{"id": "a", "prompt": "p"}], episode=episode)
    problems = problems_of(path)
    assert [(p.field, p.line) for p in problems] == [("episode", 1 if fmt == "yaml" else 2)]


# ---- prompts: long ones load, invisible characters do not --------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_a_10000_character_prompt_loads_exactly(tmp_path: Path, fmt: str) -> None:
    prompt = ("Aoi crosses the rope bridge, lanterns, 「夜」, rain; " * 200)[:9_999] + "."
    path = write(tmp_path, fmt, [{"id": "long", "prompt": prompt}])
    assert load_shot_list(path).shots[0].prompt == prompt


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("char", ["\x00", "\x07", "\x1b", "\x7f", "\x85"])
def test_control_characters_in_a_prompt_are_refused_in_every_format(tmp_path: Path, fmt: str,
                                                                    char: str) -> None:
    path = tmp_path / f"list.{fmt}"
    prompt = f"night market{char} rain"
    if fmt == "json":
        path.write_text(json.dumps({"episode": "ep01", "shots": [
            {"id": "a", "prompt": "fine"}, {"id": "b", "prompt": prompt}]}, indent=1))
    elif fmt == "yaml":  # raw in the file: YAML itself forbids most of them
        path.write_bytes(f"episode: ep01\nshots:\n  - id: a\n    prompt: fine\n"
                         f"  - id: b\n    prompt: {prompt}\n".encode())
    else:
        path.write_bytes(f"episode,id,prompt\nep01,a,fine\nep01,b,{prompt}\n".encode())
    problems = problems_of(path)
    assert len(problems) == 1 and problems[0].source == str(path)
    # NEL (\x85) is a line break to YAML, which then finds the next line broken.
    assert problems[0].line in {"json": {10}, "yaml": {6, 7}, "csv": {3}}[fmt]
    words = ("not valid YAML",) if (fmt, char) == ("yaml", "\x85") else ("control", "binary")
    assert any(word in problems[0].message for word in words), problems[0]


def test_escaped_control_characters_in_yaml_are_refused_by_the_model(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text('episode: ep01\nshots:\n  - id: a\n    prompt: "bell \\a here"\n')
    (problem,) = problems_of(path)
    assert (problem.line, problem.field) == (4, "prompt")
    assert "'\\x07' at character 6" in problem.message


# ---- encodings and the command line ----------------------------------------------------------

@pytest.mark.parametrize(("content", "line"), [
    (b"episode: ep01\nshots:\n  - id: a\n    prompt: caf\xe9\n", 4),
    (b"\xff\xfeepisode: ep01\n", 1),
    (b"episode,id,prompt\nep01,a,ok\nep01,b,\xc3\x28\n", 3),
])
def test_invalid_utf8_names_its_line(tmp_path: Path, content: bytes, line: int) -> None:
    path = tmp_path / ("list.csv" if content.startswith(b"episode,") else "list.yaml")
    path.write_bytes(content)
    (problem,) = problems_of(path)
    assert problem.line == line and "not UTF-8" in problem.message


@FUZZ
@given(content=st.binary(max_size=200) | st.text(max_size=200).map(str.encode),
       fmt=st.sampled_from(FORMATS))
def test_validate_command_never_shows_a_traceback(tmp_path: Path, content: bytes,
                                                  fmt: str) -> None:
    path = tmp_path / f"fuzz.{fmt}"
    path.write_bytes(b"episode: ep01\nshots:\n  - id: a\n    prompt: " + content
                     if fmt == "yaml" else content)
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        result.exception
    assert "Traceback" not in result.output
    if result.exit_code != 0:
        assert str(path) in result.stderr
