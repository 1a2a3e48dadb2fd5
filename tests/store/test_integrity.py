"""Integrity of a data root: damaged parts are skipped and named, check finds every kind
of damage with its path, repair fixes what it can and a second check is clean."""

from __future__ import annotations

import hashlib
import logging
import multiprocessing as mp
import os
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tower.spec.outputs import take_output_path
from tower.spec.takes import ResolvedTake
from tower.store.files import DataRoot
from tower.store.index import IndexRow, OutputIndex
from tower.store.integrity import check, repair, sha256_of
from tower.store.metrics import BatchMetrics, MetricsStore, RunLog, RunRecord

NOW = datetime.now(UTC)
OLD = NOW - timedelta(hours=3)  # older than the grace period: judged


def make_take(shot: str = "sh010", take: int = 0) -> ResolvedTake:
    return ResolvedTake(
        episode="ep01", shot_id=shot, take=take, prompt=f"prompt of {shot}", negative="lowres",
        seed=42 + take, preset="standard", checkpoint="anime-final-sd15.safetensors",
        sampler="dpmpp_2m", scheduler="karras", steps=15, cfg=6.5, width=768, height=768)


def write_image(root: DataRoot, take: ResolvedTake, data: bytes, when: datetime = OLD) -> Path:
    path = root.renders / take_output_path(take)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (when.timestamp(), when.timestamp()))
    return path


def row_of(root: DataRoot, take: ResolvedTake, data: bytes, when: datetime = OLD,
           run: str = "run-1") -> IndexRow:
    return IndexRow.from_take(take, output_path=take_output_path(take),
                              sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data),
                              rendered_at=when, server="gpu-a", prompt_id="p-1", run_id=run)


def batch_row(n: int, when: datetime = OLD) -> BatchMetrics:
    return BatchMetrics(run_id="run-1", batch_id=f"b{n}", server="gpu-a", episode="ep01",
                        preset="standard", checkpoint="anime-final-sd15.safetensors", width=768,
                        height=768, takes=4, batch_size=4, vae_tiled=False, status="ok",
                        attempt=1, finished_at=when)


def run_row(when: datetime = OLD) -> RunRecord:
    return RunRecord(run_id="run-1", flow="render_episode", episode="ep01", servers=["gpu-a"],
                     started_at=when, finished_at=when, takes_requested=4, takes_deduped=0,
                     takes_rendered=4, takes_failed=0, batches=1, retries=0, oom_splits=0,
                     model_swaps=0, status="completed")


def truncate(path: str) -> None:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])


def damage_data_page(path: str) -> None:
    """Garble the first data page, leaving the footer intact."""
    data = bytearray(Path(path).read_bytes())
    data[4:64] = b"\xff" * 60
    Path(path).write_bytes(bytes(data))


TAKES = {name: make_take(take=n) for n, name in enumerate(
    ["good", "deleted", "wrong_bytes", "wrong_size", "duplicated", "orphan", "young_orphan",
     "in_truncated", "rerendered"])}


def damaged_root(tmp_path: Path) -> tuple[DataRoot, dict[str, str]]:
    """A data root with one of each kind of damage; returns it and the expected
    ``{path: kind}`` of every problem a check must report."""
    root = DataRoot(tmp_path / "data")
    index = OutputIndex(root.index)
    data = {name: f"png of {name}".encode() * 10 for name in TAKES}
    paths = {name: str((root.renders / take_output_path(t)).absolute())
             for name, t in TAKES.items()}
    for name in ("good", "wrong_bytes", "wrong_size", "duplicated", "orphan", "rerendered"):
        write_image(root, TAKES[name], data[name])
    write_image(root, TAKES["young_orphan"], data["young_orphan"], when=NOW)
    write_image(root, TAKES["wrong_bytes"], data["wrong_bytes"][::-1])
    write_image(root, TAKES["wrong_size"], data["wrong_size"][:-3])
    rows = [row_of(root, TAKES[n], data[n])
            for n in ("good", "deleted", "wrong_bytes", "wrong_size", "duplicated")]
    index.append(rows)
    index.append([rows[-1]])  # the same row again: a duplicate
    # a re-render: an older row with another digest, the newest one right: no problem
    rerendered = row_of(root, TAKES["rerendered"], data["rerendered"])
    index.append([replace(rerendered, sha256="0" * 64, rendered_at=OLD - timedelta(days=1)),
                  rerendered])
    truncated = index.append([row_of(root, TAKES["in_truncated"], b"x")]) or ""
    truncate(truncated)
    (root.index / "part-zero.parquet").write_bytes(b"")
    (root.index / ".tmp-part-being-written.parquet").write_bytes(b"half")
    sheets = root.renders / "ep01/contact-sheets"
    sheets.mkdir(parents=True)
    (sheets / "run-1.png").write_bytes(b"a contact sheet, not a take")
    MetricsStore(root.metrics).append([batch_row(1)])
    day = root.metrics / f"date={OLD.date().isoformat()}"
    pq.write_table(pa.table({"run_id": [1, 2]}), day / "part-wrong-schema.parquet")
    RunLog(root.runs).append([run_row()])
    [run_part] = RunLog(root.runs).files()
    truncate(run_part)
    expected = {
        paths["deleted"]: "missing_file", paths["wrong_bytes"]: "wrong_sha256",
        paths["wrong_size"]: "wrong_size", paths["duplicated"]: "duplicate_rows",
        paths["orphan"]: "orphan_file",
        str((root.index / "part-zero.parquet").absolute()): "unreadable_part",
        str((day / "part-wrong-schema.parquet").absolute()): "unreadable_part",
        run_part: "unreadable_part", truncated: "unreadable_part",
    }
    return root, expected


def test_check_lists_every_damage_with_its_path(tmp_path: Path) -> None:
    root, expected = damaged_root(tmp_path)
    report = check(root, now=NOW)
    assert {p.path: p.kind for p in report.problems} == expected
    assert not report.ok and report.young == 1
    by_path = {p.path: p for p in report.problems}
    zero = str((root.index / "part-zero.parquet").absolute())
    assert by_path[zero].detail == "empty file (0 bytes)"
    wrong_schema = next(p for p in report.problems if "wrong-schema" in p.path)
    assert "required columns 'batch_id', 'server'," in wrong_schema.detail
    assert "column 'run_id' is Int64, expected String" in wrong_schema.detail
    assert all(line.startswith(p.kind) and p.path in line
               for line, p in zip(report.lines(), report.problems, strict=False))
    assert report.to_json()["problems"][0].keys() == {"kind", "path", "detail", "render_key"}


def test_repair_fixes_what_it_can_and_a_second_check_is_clean(tmp_path: Path) -> None:
    root, expected = damaged_root(tmp_path)
    report = check(root, now=NOW)
    result = repair(root, report, takes=list(TAKES.values()), now=NOW)
    assert result.unrepaired == ()
    text = "\n".join(result.actions)
    for path, kind in expected.items():
        assert path in text, kind
    after = check(root, now=NOW)
    assert after.problems == (), after.lines()
    # damaged parts moved aside, never deleted
    quarantined = sorted(p.name for p in root.root.rglob("*.parquet")
                         if "_quarantine" in p.parts)
    assert len(quarantined) == 4 and "part-zero.parquet" in quarantined
    # the index now serves the good images and asks for the bad ones again
    result = OutputIndex(root.index).dedup(list(TAKES.values()), root.renders)
    served = {take.take for take, _ in result.rendered}
    assert served == {TAKES[n].take for n in ("good", "duplicated", "orphan", "rerendered")}
    assert {t.take for t in result.to_render} == {
        TAKES[n].take for n in ("deleted", "wrong_bytes", "wrong_size", "young_orphan",
                                "in_truncated")}
    index_rows = OutputIndex(root.index).scan().collect()
    assert index_rows.filter(pl.col("render_key") == TAKES["duplicated"].key).height == 1
    orphan = index_rows.filter(pl.col("render_key") == TAKES["orphan"].key).row(0, named=True)
    assert orphan["sha256"] == sha256_of(root.renders / take_output_path(TAKES["orphan"]))


def test_repair_without_shot_lists_says_why_orphans_stay(tmp_path: Path) -> None:
    root, _ = damaged_root(tmp_path)
    result = repair(root, check(root, now=NOW), now=NOW)
    [reason] = result.unrepaired
    assert take_output_path(TAKES["orphan"]) in reason and "--shot-list" in reason
    assert [p.kind for p in check(root, now=NOW).problems] == ["orphan_file"]


@pytest.mark.parametrize(("grace", "judged"), [(timedelta(hours=1), 1),
                                               (timedelta(hours=4), 0)])
def test_files_younger_than_the_grace_period_are_not_judged(
        tmp_path: Path, grace: timedelta, judged: int) -> None:
    root = DataRoot(tmp_path / "data")
    take = make_take()
    write_image(root, take, b"new bytes")  # three hours old
    OutputIndex(root.index).append([row_of(root, take, b"old bytes")])
    report = check(root, now=NOW, grace=grace)
    assert len(report.problems) == judged and report.young == 1 - judged


def test_readers_skip_bad_parts_and_name_them(tmp_path: Path) -> None:
    root, _ = damaged_root(tmp_path)
    index = OutputIndex(root.index)
    names = sorted(Path(bad.path).name for bad in index.unreadable())
    assert "part-zero.parquet" in names and len(names) == 2
    assert index.scan().collect().height == 8
    assert index.stats().rows == 8
    metrics = MetricsStore(root.metrics)
    assert metrics.scan().collect()["batch_id"].to_list() == ["b1"]
    assert "wrong-schema" in metrics.unreadable()[0].path
    assert RunLog(root.runs).scan().collect().height == 0
    assert len(RunLog(root.runs).unreadable()) == 1
    # compaction leaves the bad parts alone and merges the rest
    assert index.compact().rows == 8 and len(index.unreadable()) == 2


def test_a_part_with_damaged_data_is_found_by_a_query_and_read_around(tmp_path: Path) -> None:
    index = OutputIndex(tmp_path / "index")
    data = b"bytes"
    root = DataRoot(tmp_path)
    index.append([row_of(root, make_take(take=0), data)])
    bad = index.append([row_of(root, make_take(take=n), data) for n in range(1, 50)])
    damage_data_page(bad or "")
    assert index.unreadable() == []  # the footer is fine
    assert index.query(lambda frame: frame.collect()).height == 1
    [found] = index.unreadable()
    assert found.path == bad and "data cannot be read" in found.reason


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_planning_logs_a_warning_naming_each_skipped_part(tmp_path: Path) -> None:
    from tasks.planning import log_unreadable_parts

    root, expected = damaged_root(tmp_path)
    logger = logging.getLogger("test-planning")
    collect = Collect()
    logger.addHandler(collect)
    try:
        log_unreadable_parts(logger, root, since=OLD.date() - timedelta(days=1))
    finally:
        logger.removeHandler(collect)
    named = {path for path, kind in expected.items() if kind == "unreadable_part"
             and "/runs/" not in path}
    assert len(collect.messages) == len(named) == 3
    assert all(any(path in m for m in collect.messages) for path in named)


def _append_loop(index_root: str, image: str, count: int) -> None:
    """A flow's appends: one part per row, every row pointing at a good image."""
    index = OutputIndex(index_root)
    data = Path(image).read_bytes()
    for n in range(count):
        take = make_take(shot=f"sh{n:04d}")
        index.append([IndexRow.from_take(
            take, output_path=take_output_path(TAKES["good"]),
            sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data), rendered_at=OLD,
            server="gpu-b", prompt_id="p-2", run_id="child")])


def test_repair_while_a_flow_appends_loses_no_appended_row(tmp_path: Path) -> None:
    root = DataRoot(tmp_path / "data")
    index = OutputIndex(root.index)
    image = write_image(root, TAKES["good"], b"good image")
    index.append([row_of(root, TAKES["good"], b"good image")])
    count = 150
    child = mp.get_context("spawn").Process(
        target=_append_loop, args=(str(root.index), str(image), count))
    child.start()
    repairs = 0
    try:
        while child.is_alive() or repairs < 3:
            # a row whose image is gone, then a repair that rewrites the part holding it
            index.append([row_of(root, make_take(shot="gone", take=repairs), b"lost")])
            report = check(root, now=NOW)
            repair(root, report, now=NOW)
            repairs += 1
            if repairs % 4 == 0:
                index.compact()
    finally:
        child.join(60)
    assert child.exitcode == 0
    rows = index.scan().collect()
    appended = rows.filter(pl.col("run_id") == "child")
    assert appended.height == count and appended["shot_id"].n_unique() == count
    assert rows.filter(pl.col("shot_id") == "gone").height == 0
    assert check(root, now=NOW).ok and repairs >= 3


def test_stale_temporaries_are_reported_and_removed_young_ones_left_alone(
        tmp_path: Path) -> None:
    """What a SIGKILLed writer leaves: an image's and a part's hidden temporary."""
    root = DataRoot(tmp_path / "data")
    take = make_take()
    good = write_image(root, take, b"png bytes")
    OutputIndex(root.index).append([row_of(root, take, b"png bytes")])
    image_tmp = good.with_name(f".{good.name}.0a1b2c.tmp")
    part_tmp = root.index / ".tmp-part-20261201T000000Z-1-ab.parquet"
    young_tmp = good.with_name(f".{good.name}.ffffff.tmp")
    for path, when in ((image_tmp, OLD), (part_tmp, OLD), (young_tmp, NOW)):
        path.write_bytes(b"half")
        os.utime(path, (when.timestamp(), when.timestamp()))
    report = check(root, now=NOW)
    assert {p.path: p.kind for p in report.problems} == {
        str(image_tmp.absolute()): "stale_temporary", str(part_tmp.absolute()): "stale_temporary"}
    result = repair(root, report, now=NOW)
    assert sum("never finished" in action for action in result.actions) == 2
    assert not image_tmp.exists() and not part_tmp.exists() and young_tmp.exists()
    assert good.read_bytes() == b"png bytes" and check(root, now=NOW).ok
