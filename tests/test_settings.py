"""tower.settings: server entries, comma lists and the TOWER_* defaults, from plain dicts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from paths import REPO

from tower.settings import (
    DATA_ROOT_ENV,
    ENV_VARS,
    SERVERS_ENV,
    ServerEntry,
    data_root_path,
    env_servers,
    parse_server_entry,
    server_entries,
    split_list,
)
from tower.store.files import DEFAULT_DATA_ROOT


@pytest.mark.parametrize(("text", "entry", "server_name"), [
    ("http://10.0.0.5:8188", ServerEntry(url="http://10.0.0.5:8188"), "10.0.0.5-8188"),
    ("gpu-b=http://10.0.0.6:8188", ServerEntry(url="http://10.0.0.6:8188", name="gpu-b"),
     "gpu-b"),
    ("gpu-a", ServerEntry(block="gpu-a"), None),                             # saved block
    ("http://h:1/?a=b", ServerEntry(url="http://h:1/?a=b"), "h-1"),         # '=' in query
    ("gpu=http://h:1/?a=b&c=d", ServerEntry(url="http://h:1/?a=b&c=d", name="gpu"), "gpu"),
    ("  gpu-c =  https://u:pw@h  ", ServerEntry(url="https://u:pw@h", name="gpu-c"),
     "gpu-c"),                                                              # whitespace
    ("\thttp://[::1]:8188\n", ServerEntry(url="http://[::1]:8188"), "0--1-8188"),
    ("  blk-sim ", ServerEntry(block="blk-sim"), None),
    ("ftp://x", ServerEntry(url="ftp://x"), "x"),  # the form only; the client refuses it
])
def test_parse_server_entry(text: str, entry: ServerEntry, server_name: str | None) -> None:
    parsed = parse_server_entry(text)
    assert parsed == entry
    assert parsed.server_name == server_name


@pytest.mark.parametrize(("text", "why"), [
    ("", "empty"),
    ("   ", "empty"),
    ("gpu-a=", "expected name=http"),                # name= with no URL
    ("gpu-a=  ", "expected name=http"),
    ("gpu-a=10.0.0.5:8188", "expected name=http"),   # no scheme: not taken for a block
    ("=http://h:1", "server name ''"),
    ("gpu a=http://h:1", "server name 'gpu a'"),
    ("../x=http://h:1", "server name '../x'"),
])
def test_parse_server_entry_refuses(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=re.escape(why)):
        parse_server_entry(text)


def test_refusals_leave_the_password_out() -> None:
    with pytest.raises(ValueError) as caught:
        parse_server_entry("bad name=http://user:s3cret@h:1")
    assert "s3cret" not in str(caught.value)


def test_entries_are_frozen() -> None:
    entry = parse_server_entry("http://h:1")
    with pytest.raises(AttributeError):
        entry.url = "http://other:1"  # type: ignore[misc]


@pytest.mark.parametrize(("value", "items"), [
    (None, []),
    ("", []),
    (" , ,", []),
    ("http://a:1", ["http://a:1"]),
    (" gpu-a=http://a:1 ,http://b:2,, blk ", ["gpu-a=http://a:1", "http://b:2", "blk"]),
])
def test_split_list(value: str | None, items: list[str]) -> None:
    assert split_list(value) == items


@pytest.mark.parametrize(("given", "env", "entries"), [
    (None, {}, []),
    (None, {SERVERS_ENV: "  "}, []),
    (None, {SERVERS_ENV: "a=http://a:1, blk"}, ["a=http://a:1", "blk"]),
    ([], {SERVERS_ENV: "blk"}, ["blk"]),
    (["http://x:1"], {SERVERS_ENV: "blk"}, ["http://x:1"]),    # given beats the environment
    (("a", "b"), {}, ["a", "b"]),
])
def test_server_entries(given, env: dict[str, str], entries: list[str]) -> None:
    assert server_entries(given, env) == entries
    if given is None:
        assert env_servers(env) == entries


@pytest.mark.parametrize(("given", "env", "root"), [
    (None, {}, DEFAULT_DATA_ROOT),
    (None, {DATA_ROOT_ENV: ""}, DEFAULT_DATA_ROOT),
    (None, {DATA_ROOT_ENV: " /srv/farm "}, Path("/srv/farm")),
    ("x", {DATA_ROOT_ENV: "/srv/farm"}, Path("x")),          # given beats the environment
    (Path("/tmp/y"), {}, Path("/tmp/y")),
    ("", {DATA_ROOT_ENV: "/srv/farm"}, Path("/srv/farm")),    # empty counts as not given
])
def test_data_root_path(given, env: dict[str, str], root: Path) -> None:
    assert data_root_path(given, env) == root


def test_the_real_environment_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SERVERS_ENV, "http://a:1,http://b:2")
    monkeypatch.setenv(DATA_ROOT_ENV, "farm")
    assert server_entries(None) == ["http://a:1", "http://b:2"]
    assert data_root_path() == Path("farm")


def test_nothing_else_reads_tower_variables() -> None:
    # settings is the one reader: the names appear in code only as its constants
    readers = re.compile(r"""(environ|getenv|envvar)\W+["']TOWER_""")
    offenders = [str(path.relative_to(REPO))
                 for folder in ("tower", "tasks", "flows", "blocks")
                 for path in (REPO / folder).rglob("*.py")
                 if readers.search(path.read_text(encoding="utf-8"))]
    assert offenders == []
    assert set(ENV_VARS) == {"TOWER_SERVERS", "TOWER_DATA_ROOT"}
