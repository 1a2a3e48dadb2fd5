"""The output index: crash-safe concurrent appends, dedup, previews, compaction, stats."""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import signal
import threading
import time
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paths import DEMO_SHOT_LIST
from polars.testing import assert_frame_equal

from tower.shotlist.shots import load_shot_list
from tower.spec.takes import ResolvedTake, resolve_takes
from tower.store.index import IndexRow, OutputIndex, collapse_duplicates, look_key, plan_compaction
from tower.store.metrics import RunLog, RunRecord
from tower.store.parquet_io import StoreError
from tower.store.schemas import INDEX_SCHEMA

T0 = datetime(2026, 11, 27, 1, 0, tzinfo=UTC)


def make_take(shot: str = "sh010", take: int = 0, **changes: object) -> ResolvedTake:
    base = ResolvedTake(
        episode="ep01", shot_id=shot, take=take, prompt=f"prompt of {shot}", negative="lowres",
        seed=42, preset="standard", checkpoint="anime-final-sd15.safetensors",
        sampler="dpmpp_2m", scheduler="karras", steps=15, cfg=6.5, width=768, height=768,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def row_for(take: ResolvedTake, size: int = 10, when: datetime = T0, run: str = "run-1",
            path: str | None = None) -> IndexRow:
    return IndexRow.from_take(
        take, output_path=path or f"{take.episode}/{take.shot_id}/t{take.take}.png",
        sha256="ab" * 32, size_bytes=size, rendered_at=when, server="gpu-a",
        prompt_id="tower-0123456789abcdef", run_id=run)


def write_render(render_root: Path, row: IndexRow, size: int | None = None) -> None:
    path = render_root / row.output_path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * (row.size_bytes if size is None else size))


def rows_frame(rows: list[IndexRow]) -> pl.DataFrame:
    return pl.from_arrow(pa.Table.from_pylist([r.__dict__ for r in rows], schema=INDEX_SCHEMA))


def test_append_then_scan_returns_the_same_rows_with_the_schema(tmp_path: Path) -> None:
    index = OutputIndex(tmp_path / "index")
    rows = [row_for(make_take(take=k)) for k in range(3)]
    part = index.append(rows)
    assert part is not None and Path(part).name.startswith("part-")
    assert index.append([]) is None
    assert_frame_equal(index.scan().collect(), rows_frame(rows))
    assert pq.read_schema(part).names == INDEX_SCHEMA.names


def test_scan_of_a_missing_index_is_empty_with_the_schema(tmp_path: Path) -> None:
    frame = OutputIndex(tmp_path / "nowhere").scan().collect()
    assert frame.height == 0 and frame.columns == INDEX_SCHEMA.names


@pytest.mark.parametrize(("rows", "message"), [
    ([replace(row_for(make_take()), rendered_at=datetime(2026, 1, 1))], "rendered_at"),
    (pa.table({"render_key": ["k"]}), "episode"),
    ([replace(row_for(make_take()), take="first")], "rows do not match"),
])
def test_bad_rows_are_refused_by_name_and_nothing_is_written(
        tmp_path: Path, rows: object, message: str) -> None:
    index = OutputIndex(tmp_path / "index")
    with pytest.raises(StoreError, match=message):
        index.append(rows)  # type: ignore[arg-type]
    assert not (tmp_path / "index").exists() or not list((tmp_path / "index").iterdir())


def test_temporary_files_left_by_a_crash_are_ignored(tmp_path: Path) -> None:
    index = OutputIndex(tmp_path / "index")
    index.append([row_for(make_take())])
    fresh = tmp_path / "index" / ".tmp-part-20261127T000000000000Z-1-dead.parquet"
    fresh.write_bytes(b"PAR1")
    os.utime(fresh, (time.time(), time.time()))   # written now by this process's clock
    (tmp_path / "index" / "notes.txt").write_text("not data")
    assert index.scan().collect().height == 1
    old = tmp_path / "index" / ".tmp-part-20261126T000000000000Z-2-beef.parquet"
    old.write_bytes(b"PAR1")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    result = index.compact()
    assert (result.rows, result.stale_temporaries) == (1, 1)
    assert not old.exists()                       # a crash leftover from two hours ago
    assert len(list((tmp_path / "index").glob(".tmp-*"))) == 1   # maybe a write in progress


def _append_forever(root: str, rows: int) -> None:
    index = OutputIndex(root)
    table = pa.Table.from_pylist([row_for(make_take(take=k % 60)).__dict__ for k in range(rows)],
                                 schema=INDEX_SCHEMA)
    while True:
        index.append(table)


def test_a_writer_killed_mid_write_leaves_only_whole_parts(tmp_path: Path) -> None:
    root = tmp_path / "index"
    rows = 200_000
    for _ in range(5):                  # until the kill lands while a part is being written
        child = mp.get_context("spawn").Process(target=_append_forever, args=(str(root), rows))
        child.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not list(root.glob(".tmp-*")):
            time.sleep(0.005)
        os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
        child.join()
        if list(root.glob(".tmp-*")):
            break
    assert list(root.glob(".tmp-*")), "the writer was never killed mid-write"
    total = OutputIndex(root).scan().select(pl.len()).collect().item()
    assert total % rows == 0
    assert OutputIndex(root).compact(target_rows=10 * rows).rows == total


def _append_batches(root: str, writer: int, batches: int, per_batch: int) -> None:
    index = OutputIndex(root)
    for b in range(batches):
        index.append([row_for(make_take(shot=f"w{writer}b{b}", take=k), run=f"w{writer}")
                      for k in range(per_batch)])


def test_concurrent_appends_from_several_processes_lose_no_row(tmp_path: Path) -> None:
    root = str(tmp_path / "index")
    ctx = mp.get_context("spawn")
    writers = [ctx.Process(target=_append_batches, args=(root, w, 25, 4)) for w in range(4)]
    for proc in writers:
        proc.start()
    for proc in writers:
        proc.join(timeout=120)
        assert proc.exitcode == 0
    frame = OutputIndex(root).scan().collect()
    assert frame.height == 4 * 25 * 4
    assert frame.select("shot_id", "take").n_unique() == 400
    assert len(OutputIndex(root).files()) == 100


def test_dedup_splits_rendered_missing_and_new_takes(tmp_path: Path) -> None:
    index = OutputIndex(tmp_path / "index")
    renders = tmp_path / "renders"
    takes = [make_take(take=k) for k in range(5)]
    rows = [row_for(t) for t in takes[:4]]
    index.append(rows[:2])
    index.append(rows[2:])
    write_render(renders, rows[0])
    write_render(renders, rows[1])
    write_render(renders, rows[2], size=3)        # truncated file
    # rows[3]: file gone; takes[4]: never rendered
    result = index.dedup(takes)
    assert [(t, r) for t, r in result.rendered] == [(takes[0], rows[0]), (takes[1], rows[1])]
    assert result.missing_files == [takes[2], takes[3]]
    assert result.to_render == [takes[2], takes[3], takes[4]]
    unchecked = index.dedup(takes, check_files=False)
    assert [t for t, _ in unchecked.rendered] == takes[:4]
    assert unchecked.to_render == [takes[4]] and unchecked.missing_files == []


def test_dedup_takes_the_newest_row_of_a_key_and_honours_render_root(tmp_path: Path) -> None:
    index = OutputIndex(tmp_path / "index")
    take = make_take()
    old = row_for(take, size=5, path="old.png")
    new = row_for(take, size=7, when=T0 + timedelta(hours=1), path="new.png")
    index.append([new])
    index.append([old])
    elsewhere = tmp_path / "elsewhere"
    write_render(elsewhere, new)
    assert index.dedup([take]).to_render == [take]          # default root: <data>/renders
    assert index.dedup([take], render_root=elsewhere).rendered == [(take, new)]


def test_dedup_never_trusts_paths_outside_the_render_root(tmp_path: Path) -> None:
    index = OutputIndex(tmp_path / "index")
    take = make_take()
    (tmp_path / "secret").write_bytes(b"x" * 10)
    index.append([row_for(take, path="../secret")])
    assert index.dedup([take], render_root=tmp_path / "renders").missing_files == [take]


def test_tiled_decode_changes_the_key_so_dedup_renders_it(tmp_path: Path) -> None:
    index = OutputIndex(tmp_path / "index")
    take = make_take()
    index.append([row_for(take)])
    tiled = take.with_tiled_decode(512)
    assert index.dedup([tiled], check_files=False).to_render == [tiled]
    assert look_key(tiled) == look_key(take)


def test_similar_finds_any_seed_or_take_of_the_same_look(tmp_path: Path) -> None:
    index = OutputIndex(tmp_path / "index")
    done = [make_take(take=k, seed=7) for k in range(2)]
    rows = [row_for(t, when=T0 + timedelta(minutes=k)) for k, t in enumerate(done)]
    index.append(rows)
    index.append([row_for(make_take(shot="sh020", prompt="other"))])
    asked = [make_take(take=5, seed=99), make_take(shot="sh099", prompt="prompt of sh010"),
             make_take(shot="sh030", steps=30)]
    found = index.similar(asked)
    assert set(found) == {("ep01", "sh010"), ("ep01", "sh099")}
    assert found[("ep01", "sh010")] == [rows[1], rows[0]]   # newest first
    assert index.similar([]) == {}


def test_compaction_keeps_every_row_and_is_idempotent(tmp_path: Path) -> None:
    index = OutputIndex(tmp_path / "index")
    rows = [row_for(make_take(shot=f"s{p}", take=k)) for p in range(12) for k in range(3)]
    for p in range(12):
        index.append(rows[3 * p: 3 * p + 3])
    before = index.scan().collect()
    first = index.compact(target_rows=10)
    assert first.parts_before == 12 and first.rows == 36
    assert first.parts_after == len(index.files()) == 4
    assert_frame_equal(index.scan().collect(), before)
    names = sorted(p.name for p in (tmp_path / "index").iterdir())
    second = index.compact(target_rows=10)
    assert second.merged == () and second.removed == 0
    assert sorted(p.name for p in (tmp_path / "index").iterdir()) == names
    index.append([row_for(make_take(shot="late"))])
    index.compact(target_rows=1000)
    assert len(index.files()) == 1
    assert_frame_equal(index.scan().collect().sort("shot_id", "take"),
                       pl.concat([before, rows_frame([row_for(make_take(shot="late"))])])
                       .sort("shot_id", "take"))


def test_parts_left_by_a_compaction_that_crashed_are_skipped_then_removed(tmp_path: Path) -> None:
    root = tmp_path / "index"
    index = OutputIndex(root)
    for k in range(3):
        index.append([row_for(make_take(take=k))])
    saved = tmp_path / "saved"
    shutil.copytree(root, saved)
    index.compact()
    for part in saved.iterdir():                 # as if the deletes never happened
        shutil.copy(part, root / part.name)
    assert index.scan().collect().height == 3
    result = index.compact()
    assert result.removed == 3 and result.merged == ()
    assert len(list(root.iterdir())) == 1


def test_readers_during_compaction_never_see_rows_twice_or_missing(tmp_path: Path) -> None:
    index = OutputIndex(tmp_path / "index")
    seen: list[tuple[int, int]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        try:
            while not stop.is_set():
                stats = OutputIndex(tmp_path / "index").stats()
                seen.append((stats.rows, stats.unique_keys))
        except BaseException as err:  # reported by the assertion below
            errors.append(err)

    def add(round_: int) -> None:
        for p in range(10):
            index.append([row_for(make_take(shot=f"r{round_}s{p}", take=k)) for k in range(5)])

    add(0)
    reader = threading.Thread(target=read)
    reader.start()
    try:
        for round_, target in enumerate((20, 60, 150, 1000, 30, 5000), start=1):
            index.compact(target_rows=target)
            add(round_)
            reads = len(seen)
            deadline = time.monotonic() + 30
            while len(seen) == reads and time.monotonic() < deadline and not errors:
                time.sleep(0.005)
    finally:
        stop.set()
        reader.join()
    assert errors == []
    assert len(seen) >= 6
    rows = [r for r, _ in seen]
    assert all(r == unique for r, unique in seen)          # never a row twice
    assert rows == sorted(rows)                            # never a row gone
    assert index.stats().rows == 7 * 50


def test_a_held_compaction_lock_is_reported(tmp_path: Path) -> None:
    index = OutputIndex(tmp_path / "index")
    index.append([row_for(make_take())])
    (tmp_path / "index" / "_compact.lock").write_text("123")
    with pytest.raises(StoreError, match="another compaction"):
        index.compact()


@pytest.mark.parametrize(("sizes", "target", "groups"), [
    ([3, 3, 3, 3], 6, [["p0", "p1"], ["p2", "p3"]]),
    ([5, 1, 1, 5], 6, [["p0", "p1"], ["p2", "p3"]]),
    ([7, 1, 1], 6, [["p1", "p2"]]),
    ([4, 4, 4], 6, []),
    ([1], 6, []),
])
def test_plan_compaction_groups(sizes: list[int], target: int, groups: list[list[str]]) -> None:
    assert plan_compaction([(f"p{i}", n) for i, n in enumerate(sizes)], target) == groups


def test_stats_counts_per_episode_preset_and_rerenders(tmp_path: Path) -> None:
    index = OutputIndex(tmp_path / "index")
    index.append([row_for(make_take(take=k), size=100) for k in range(3)])
    index.append([row_for(make_take(take=0), size=100),
                  row_for(make_take(episode="ep02", preset="draft", steps=8), size=50)])
    log = RunLog(tmp_path / "runs")
    log.append([RunRecord(run_id="r", flow="render_episode", episode="ep01", servers=["a"],
                          started_at=T0, finished_at=T0, takes_requested=9, takes_deduped=4,
                          takes_rendered=5, takes_failed=0, batches=2, retries=0, oom_splits=0,
                          model_swaps=1, status="completed")])
    stats = index.stats(run_log=log)
    assert (stats.parts, stats.rows, stats.unique_keys, stats.rerendered) == (2, 5, 4, 1)
    assert stats.total_bytes == 450
    assert stats.by_episode == {"ep01": 4, "ep02": 1}
    assert stats.by_preset == {"draft": 1, "standard": 4}
    assert stats.bytes_by_episode == {"ep01": 400, "ep02": 50}
    assert stats.duplicates_avoided == 4
    assert OutputIndex(tmp_path / "none").stats().rows == 0


def test_index_commands_report_and_compact(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from tower.cli import app

    index = OutputIndex(tmp_path / "index")
    for k in range(4):
        index.append([row_for(make_take(take=k), size=1_000_000)])
    runner = CliRunner()
    stats = runner.invoke(app, ["index", "stats", "--data-root", str(tmp_path)])
    assert stats.exit_code == 0, stats.output
    assert "4 rows in 4 parts" in stats.output and "episode ep01: 4 takes, 4.0 MB" in stats.output
    compact = runner.invoke(app, ["index", "compact", "--data-root", str(tmp_path)])
    assert compact.exit_code == 0 and "4 rows: 4 parts -> 1" in compact.output
    assert len(index.files()) == 1
    empty = runner.invoke(app, ["index", "compact", "--data-root", str(tmp_path / "none")])
    assert empty.exit_code == 0 and not (tmp_path / "none").exists()


def test_the_index_works_on_any_pyarrow_filesystem() -> None:
    import fsspec
    import pyarrow.fs as pafs

    memory = fsspec.filesystem("memory")
    if memory.exists("/studio"):
        memory.rm("/studio", recursive=True)
    fs = pafs.PyFileSystem(pafs.FSSpecHandler(memory))
    index = OutputIndex("/studio/index", filesystem=fs)
    takes = [make_take(take=k) for k in range(3)]
    rows = [row_for(t) for t in takes]
    index.append(rows[:2])
    index.append(rows[2:])
    with fs.open_output_stream(f"/studio/renders/{rows[0].output_path}") as out:
        out.write(b"x" * rows[0].size_bytes)
    result = index.dedup(takes)
    assert result.rendered == [(takes[0], rows[0])]
    assert result.missing_files == takes[1:]
    index.compact()
    assert len(index.files()) == 1
    assert_frame_equal(index.scan().collect(), rows_frame(rows))


def test_two_shots_sharing_an_image_are_both_served_by_one_row(tmp_path: Path) -> None:
    index = OutputIndex(tmp_path / "index")
    plate = make_take(shot="sh010", prompt="recurring plate")
    twin = replace(plate, shot_id="sh200", episode="ep02")
    assert twin.key == plate.key
    row = row_for(plate)
    index.append([row])
    result = index.dedup([plate, make_take(shot="sh020"), twin], check_files=False)
    assert result.rendered == [(plate, row), (twin, row)]
    assert [t.shot_id for t in result.to_render] == ["sh020"]


DEMO = DEMO_SHOT_LIST


def test_takes_sharing_a_key_in_one_run_are_rendered_once(tmp_path: Path) -> None:
    index = OutputIndex(tmp_path / "index")
    takes = resolve_takes(load_shot_list(DEMO))
    by_shot = {(t.shot_id, t.take): t for t in takes}
    result = index.dedup(takes)
    assert result.rendered == [] and result.missing_files == []
    assert len(result.to_render) == len({t.key for t in takes}) == len(takes) - 2
    assert result.same_as == [(by_shot["sh080", 0], by_shot["sh020", 0]),
                              (by_shot["sh220", 0], by_shot["sh050", 0])]
    assert by_shot["sh020", 0] in result.to_render and by_shot["sh080", 0] not in result.to_render


def test_a_duplicate_follows_its_first_take_when_the_file_is_missing(tmp_path: Path) -> None:
    index = OutputIndex(tmp_path / "index")
    plate = make_take(shot="sh010", prompt="recurring plate")
    twin = replace(plate, shot_id="sh200")
    other = make_take(shot="sh020")
    index.append([row_for(plate)])                 # indexed, but no file on disk
    result = index.dedup([twin, other, plate])
    assert result.to_render == [twin, other]        # the first of the key in input order
    assert result.missing_files == [twin]
    assert result.same_as == [(plate, twin)]
    write_render(tmp_path / "renders", row_for(plate))
    served = index.dedup([twin, other, plate])
    assert [t for t, _ in served.rendered] == [twin, plate]
    assert served.to_render == [other] and served.same_as == []


SHOTS = st.sampled_from(["sh010", "sh020", "sh030"])
PROMPTS = st.sampled_from(["a", "b"])
TAKES = st.builds(lambda shot, take, prompt, seed: make_take(
    shot=shot, take=take, prompt=prompt, seed=seed),
    SHOTS, st.integers(0, 1), PROMPTS, st.sampled_from([1, 2]))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(takes=st.lists(TAKES, max_size=12), indexed=st.lists(TAKES, max_size=6),
       on_disk=st.lists(st.booleans(), min_size=6, max_size=6))
def test_every_take_lands_in_exactly_one_place(
        tmp_path_factory: pytest.TempPathFactory, takes: list[ResolvedTake],
        indexed: list[ResolvedTake], on_disk: list[bool]) -> None:
    root = tmp_path_factory.mktemp("dedup")
    index = OutputIndex(root / "index")
    rows = [row_for(t, path=f"r{n}.png") for n, t in enumerate(indexed)]
    index.append(rows)
    for row, present in zip(rows, on_disk, strict=False):
        if present:
            write_render(root / "renders", row)
    result = index.dedup(takes)

    placed = ([t for t, _ in result.rendered] + result.to_render
              + [t for t, _ in result.same_as])
    assert Counter(placed) == Counter(takes)          # each input take exactly once
    first_of = {}
    for take in takes:
        first_of.setdefault(take.key, take)
    keys = [t.key for t in result.to_render]
    assert len(keys) == len(set(keys))
    assert all(first_of[t.key] is t for t in result.to_render)
    assert all(first is first_of[dup.key] for dup, first in result.same_as)
    assert {first.key for _, first in result.same_as} <= set(keys)
    served = {t.key for t, _ in result.rendered}
    assert served.isdisjoint(keys)
    assert all(row.render_key == t.key for t, row in result.rendered)
    present = {r.render_key for r, ok in zip(rows, on_disk, strict=False) if ok}
    absent = {r.render_key for r, ok in zip(rows, on_disk, strict=False) if not ok}
    assert served <= present and (present - absent) & set(first_of) <= served
    assert [t.key for t in result.missing_files] == [k for k in keys if k in absent | present]


def test_a_forced_rerender_still_renders_each_image_once() -> None:
    takes = resolve_takes(load_shot_list(DEMO))
    forced = collapse_duplicates(takes)
    assert forced.rendered == [] and forced.missing_files == []
    assert len(forced.to_render) == len({t.key for t in takes})
    assert len({t.key for t in forced.to_render}) == len(forced.to_render)
    assert forced.deduplicated == len(forced.same_as) == len(takes) - len(forced.to_render)
