"""Files that cannot be shot lists end in a clear InputError, quickly, never a crash."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tower.shotlist.documents import MAX_BYTES, MAX_NODES
from tower.shotlist.errors import InputError
from tower.shotlist.presets import load_presets
from tower.shotlist.shots import episode_of, load_shot_list

BILLION_LAUGHS = """\
episode: ep01
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
shots: [{id: a, prompt: *i}]
"""


def _message(path: Path) -> str:
    started = time.perf_counter()
    with pytest.raises(InputError) as caught:
        load_shot_list(path)
    assert time.perf_counter() - started < 5, "a bad file must fail fast"
    problems = caught.value.problems
    assert len(problems) == 1 and problems[0].source == str(path)
    return problems[0].message


@pytest.mark.parametrize(("name", "content", "expected"), [
    ("empty.yaml", b"", "file is empty"),
    ("blank.yaml", b" \n\t\n", "file is empty"),
    ("empty.csv", b"\xef\xbb\xbf", "file is empty"),
    ("image.yaml", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary file"),
    ("latin1.yaml", "episode: épisode\n".encode("latin-1"), "not UTF-8 text"),
    ("bomb.yaml", BILLION_LAUGHS.encode(), f"limit {MAX_NODES:,}"),
    ("loop.yaml", b"episode: ep01\nshots: &s [{id: a, prompt: *s}]\n", "recursive YAML alias"),
    ("self.yaml", b"&a [*a]\n", "recursive YAML alias"),
    ("deep.yaml", b"a: " + b"[" * 5000 + b"]" * 5000, "not valid YAML"),
    ("deep.json", b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nesting too deep"),
    ("many.yaml", b"---\nepisode: a\n---\nepisode: b\n", "not valid YAML"),
    ("python.yaml", b"episode: !!python/object/apply:os.system [echo hi]\n", "not valid YAML"),
    ("tab.yaml", b"episode: ep01\nshots:\n\t- id: a\n", "not valid YAML"),
    ("quote.csv", b'episode,id,prompt\nep01,a,"unclosed\n', "not valid CSV"),
    ("notes.txt", b"episode: ep01\n", "unknown file type '.txt'"),
    ("noext", b"episode: ep01\n", "unknown file type '(none)'"),
])
def test_bad_files(tmp_path: Path, name: str, content: bytes, expected: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    assert expected in _message(path)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    assert _message(tmp_path / "nope.yaml") == "file not found"
    (tmp_path / "dir.yaml").mkdir()
    assert _message(tmp_path / "dir.yaml") == "is a directory, not a file"


def test_anchors_and_merge_keys_within_the_limit_still_load(tmp_path: Path) -> None:
    path = tmp_path / "anchors.yaml"
    path.write_text("episode: ep01\nshots:\n  - &first {id: a, prompt: night market, takes: 2}\n"
                    "  - {<<: *first, id: b}\n")
    assert [(s.id, s.prompt, s.takes) for s in load_shot_list(path).shots] == [
        ("a", "night market", 2), ("b", "night market", 2)]


def test_nesting_just_inside_the_parser_limit_fails_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("episode: ep01\nshots:\n  - id: a\n    prompt: " + "[" * 900 + "]" * 900)
    assert _message(path) == "nesting too deep"


def test_a_100_mb_sparse_file_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    with path.open("wb") as handle:
        handle.truncate(100 * 1024 * 1024)
    assert _message(path).startswith(f"file is larger than {MAX_BYTES // 2**20} MiB")


def test_a_100_mb_text_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "huge.csv"
    block = b"ep01,sh,a prompt that goes on and on\n" * (10 * 1024 * 1024 // 37)
    with path.open("wb") as handle:
        handle.write(b"episode,id,prompt\n")
        while handle.tell() < 100 * 1024 * 1024:
            handle.write(block)
    try:
        assert "larger than" in _message(path)
    finally:
        path.unlink()


def test_a_file_just_under_the_limit_is_read(tmp_path: Path) -> None:
    path = tmp_path / "padded.yaml"
    body = b"episode: ep01\nshots: [{id: a, prompt: p}]\n"
    path.write_bytes(body + b"#" * (MAX_BYTES - len(body) - 1) + b"\n")
    assert load_shot_list(path).shots[0].id == "a"


@pytest.mark.parametrize(("content", "expected"), [
    (b"", "file is empty"),
    (b"\x00\x01", "binary file"),
    (BILLION_LAUGHS.replace("episode: ep01\n", "").replace("shots: [{id: a, prompt: *i}]\n",
                                                          "").encode(), "limit"),
    (b"- draft\n", "must map preset names to their fields"),
    (b"draft: {steps: 0}\n", "preset draft: steps: must be at least 1 \\(got 0\\)"),
])
def test_presets_files_get_the_same_guards(tmp_path: Path, content: bytes,
                                           expected: str) -> None:
    path = tmp_path / "presets.yaml"
    path.write_bytes(content)
    with pytest.raises(InputError, match=expected):
        load_presets(path)
    with pytest.raises(InputError, match="file not found"):
        load_presets(tmp_path / "nope.yaml")


def test_episode_of_reads_the_episode_without_validating(tmp_path):
    """Run names need the episode before the presets a full validation would take."""
    listed = tmp_path / "ep07.yaml"
    listed.write_text("episode: ep07\nshots:\n  - {id: sh010, prompt: x, preset: custom}\n")
    sheet = tmp_path / "ep08.csv"
    sheet.write_text("episode,id,prompt,preset\nep08,sh010,x,custom\n")
    nameless = tmp_path / "nameless.yaml"
    nameless.write_text("shots: []\n")
    assert [episode_of(p) for p in (listed, sheet, nameless)] == ["ep07", "ep08", None]
