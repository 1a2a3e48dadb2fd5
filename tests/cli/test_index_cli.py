"""``tower index check`` and ``tower index repair`` on a damaged data root."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from paths import DEMO_SHOT_LIST
from typer.testing import CliRunner

from tower.cli import app
from tower.shotlist.presets import BUILTIN_PRESETS
from tower.shotlist.shots import load_shot_list
from tower.spec.outputs import take_output_path
from tower.spec.takes import ResolvedTake, resolve_takes
from tower.store.files import DataRoot
from tower.store.index import IndexRow, OutputIndex

runner = CliRunner()
OLD = datetime.now(UTC) - timedelta(hours=3)


def image(root: DataRoot, relative: str, data: bytes) -> str:
    path = root.renders / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (OLD.timestamp(), OLD.timestamp()))
    return str(path.absolute())


def row(take: ResolvedTake, data: bytes) -> IndexRow:
    return IndexRow.from_take(take, output_path=take_output_path(take),
                              sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data),
                              rendered_at=OLD, server="gpu-a", prompt_id="p", run_id="run-1")


def damaged(tmp_path: Path) -> tuple[DataRoot, dict[str, str]]:
    """Demo takes: one good, one whose image is gone, two orphans the demo list explains
    (its own preset; a ``--preset draft`` run with tiled decode), one it does not, and a
    zero-byte index part. Returns the root and ``{name: path}``."""
    root = DataRoot(tmp_path / "data")
    shot_list = load_shot_list(DEMO_SHOT_LIST)
    takes = resolve_takes(shot_list)
    draft_tiled = resolve_takes(shot_list, BUILTIN_PRESETS, "draft")[3].with_tiled_decode(512)
    paths = {
        "good": image(root, take_output_path(takes[0]), b"good"),
        "gone": str((root.renders / take_output_path(takes[1])).absolute()),
        "orphan": image(root, take_output_path(takes[2]), b"orphan"),
        "orphan_draft": image(root, take_output_path(draft_tiled), b"draft"),
        "stranger": image(root, "ep01/sh999/sh999_t00_0123456789ab.png", b"?"),
        "zero": str((root.index / "part-zero.parquet").absolute()),
    }
    OutputIndex(root.index).append([row(takes[0], b"good"), row(takes[1], b"gone")])
    Path(paths["zero"]).write_bytes(b"")
    return root, paths


def test_check_prints_one_line_per_problem_and_exits_1(tmp_path: Path) -> None:
    root, paths = damaged(tmp_path)
    result = runner.invoke(app, ["index", "check", "--data-root", str(root.root)])
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    expected = {"gone": "missing_file", "orphan": "orphan_file", "orphan_draft": "orphan_file",
                "stranger": "orphan_file", "zero": "unreadable_part"}
    for name, kind in expected.items():
        assert any(line.startswith(f"{kind}: {paths[name]}: ") for line in lines), name
    assert lines[-1].startswith("5 problems: 2 index rows")


def test_check_json_lists_the_same_problems(tmp_path: Path) -> None:
    root, paths = damaged(tmp_path)
    result = runner.invoke(app, ["index", "check", "--data-root", str(root.root), "--json",
                                 "--quick"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is False and report["hashed"] is False
    assert sorted(p["path"] for p in report["problems"]) == sorted(
        paths[n] for n in ("gone", "orphan", "orphan_draft", "stranger", "zero"))


def test_repair_adopts_what_the_shot_list_explains_and_says_what_it_could_not(
        tmp_path: Path) -> None:
    root, paths = damaged(tmp_path)
    result = runner.invoke(app, ["index", "repair", "--data-root", str(root.root),
                                 "--shot-list", str(DEMO_SHOT_LIST)])
    assert result.exit_code == 1, result.output  # the stranger stays an orphan
    out = result.stdout
    assert f"quarantined {paths['zero']} -> " in out
    assert f"dropped the row of {paths['gone']}" in out
    assert f"adopted {paths['orphan']} as render key" in out
    assert f"adopted {paths['orphan_draft']} as render key" in out
    assert f"not repaired: {paths['stranger']}: not adopted: no take of the shot lists" in out
    assert f"after repair: orphan_file: {paths['stranger']}: " in out
    Path(paths["stranger"]).unlink()
    again = runner.invoke(app, ["index", "check", "--data-root", str(root.root)])
    assert again.exit_code == 0, again.output
    assert again.stdout.startswith("0 problems: 3 index rows")


def test_repair_without_shot_lists_explains_why_orphans_stay(tmp_path: Path) -> None:
    root, _ = damaged(tmp_path)
    result = runner.invoke(app, ["index", "repair", "--data-root", str(root.root), "--json"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert len(report["unrepaired"]) == 3
    assert all("--shot-list" in line for line in report["unrepaired"])
    assert {p["kind"] for p in report["after"]["problems"]} == {"orphan_file"}
