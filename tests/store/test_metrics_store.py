"""The metrics store and run log: daily partitions, pruning, crash-safe concurrent appends."""

from __future__ import annotations

import json
import multiprocessing as mp
import threading
import time
from dataclasses import asdict, replace
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
from polars.testing import assert_frame_equal

from tower.store.metrics import BatchMetrics, MetricsStore, RunLog, RunRecord, compact_closed_days
from tower.store.parquet_io import StoreError
from tower.store.schemas import METRICS_SCHEMA, RUNS_SCHEMA

T0 = datetime(2026, 11, 26, 21, 30, tzinfo=UTC)


def batch(n: int = 0, when: datetime = T0, **changes: object) -> BatchMetrics:
    row = BatchMetrics(
        run_id="run-1", batch_id=f"batch{n:04d}", server="gpu-a", episode="ep01",
        preset="standard", checkpoint="anime-final-sd15.safetensors", width=768, height=768,
        takes=4, batch_size=4, vae_tiled=False, status="ok", attempt=1, finished_at=when,
        execution_s=12.5, vram_peak_mb=8123.0, model_cache_hit=True)
    return replace(row, **changes)  # type: ignore[arg-type]


def frame_of(rows: list[BatchMetrics], schema: pa.Schema = METRICS_SCHEMA) -> pl.DataFrame:
    return pl.from_arrow(pa.Table.from_pylist([asdict(r) for r in rows], schema=schema))


def test_date_comes_from_finished_at_in_utc() -> None:
    assert batch().date == "2026-11-26"
    tokyo = timezone(timedelta(hours=9))
    assert batch(when=datetime(2026, 11, 27, 6, 0, tzinfo=tokyo)).date == "2026-11-26"
    assert batch(date="2026-01-01").date == "2026-01-01"
    with pytest.raises(ValueError, match="finished_at"):
        batch(when=datetime(2026, 11, 26, 12, 0))


def test_append_writes_one_part_per_day_and_scan_reads_them_back(tmp_path: Path) -> None:
    store = MetricsStore(tmp_path / "metrics")
    rows = [batch(n, T0 + timedelta(hours=2 * n)) for n in range(4)]   # 26th, 26th, 27th, 27th
    written = store.append(rows)
    assert [Path(p).parent.name for p in written] == ["date=2026-11-26", "date=2026-11-27"]
    assert store.days() == ["2026-11-26", "2026-11-27"]
    assert_frame_equal(store.scan().collect().sort("batch_id"), frame_of(rows))


def test_scan_reads_only_the_partitions_asked_for(tmp_path: Path) -> None:
    store = MetricsStore(tmp_path / "metrics")
    rows = [batch(n, T0 + timedelta(days=n)) for n in range(5)]
    store.append(rows)
    # a broken file in a day outside the window must never be opened
    (tmp_path / "metrics" / "date=2026-11-26" / "part-broken.parquet").write_bytes(b"garbage")
    window = store.scan(since=date(2026, 11, 27), until=date(2026, 11, 28)).collect()
    assert_frame_equal(window.sort("batch_id"), frame_of(rows[1:3]))
    assert store.scan(since=date(2026, 12, 24)).collect().height == 0
    assert store.unreadable(since=date(2026, 11, 27)) == []
    # read over every day, the broken part is skipped and named, the rest still read
    assert_frame_equal(store.scan().collect().sort("batch_id"), frame_of(rows))
    [bad] = store.unreadable()
    assert bad.path.endswith("date=2026-11-26/part-broken.parquet")
    assert "not a readable Parquet file" in bad.reason


def test_crash_leftovers_and_stray_files_are_ignored(tmp_path: Path) -> None:
    store = MetricsStore(tmp_path / "metrics")
    store.append([batch()])
    day = tmp_path / "metrics" / "date=2026-11-26"
    (day / ".tmp-part-x.parquet").write_bytes(b"half a file")
    (tmp_path / "metrics" / "_scratch").mkdir()
    (tmp_path / "metrics" / "not-a-day").mkdir()
    assert store.days() == ["2026-11-26"]
    assert store.scan().collect().height == 1


@pytest.mark.parametrize(("rows", "message"), [
    ([batch(status="exploded")], "status must be one of"),
    ([batch(queued_at=datetime(2026, 11, 26, 1, 0))], "queued_at"),
    ([batch(date="26/11/2026")], "YYYY-MM-DD"),
    ([batch(server=None)], "server"),
    (pa.table({"run_id": ["r"]}), "batch_id"),
])
def test_bad_rows_are_refused_and_nothing_is_written(
        tmp_path: Path, rows: object, message: str) -> None:
    store = MetricsStore(tmp_path / "metrics")
    with pytest.raises(StoreError, match=message):
        store.append(rows)  # type: ignore[arg-type]
    assert store.days() == []


def test_a_table_with_columns_in_another_order_is_accepted(tmp_path: Path) -> None:
    store = MetricsStore(tmp_path / "metrics")
    table = frame_of([batch()]).to_arrow()
    shuffled = table.select(list(reversed(table.column_names)))
    store.append(shuffled)
    assert_frame_equal(store.scan().collect(), frame_of([batch()]))


def _write_metrics(root: str, writer: int, count: int) -> None:
    store = MetricsStore(root)
    for n in range(count):
        store.append([batch(1000 * writer + n, T0 + timedelta(hours=n % 6))])


def test_concurrent_writers_lose_no_row(tmp_path: Path) -> None:
    root = str(tmp_path / "metrics")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_write_metrics, args=(root, w, 30)) for w in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
        assert proc.exitcode == 0
    frame = MetricsStore(root).scan().collect()
    assert frame.height == 120 and frame["batch_id"].n_unique() == 120
    assert set(frame["date"]) == {"2026-11-26", "2026-11-27"}


def test_run_log_round_trip(tmp_path: Path) -> None:
    log = RunLog(tmp_path / "runs")
    record = RunRecord(
        run_id="run-1", flow="render_episode", episode="ep01", servers=["gpu-a", "gpu-b"],
        started_at=T0, finished_at=T0 + timedelta(hours=3), takes_requested=45,
        takes_deduped=12, takes_rendered=33, takes_failed=0, batches=20, retries=1,
        oom_splits=1, model_swaps=2, status="completed")
    assert record.date == "2026-11-26"
    log.append([record])
    expected = pl.from_arrow(pa.Table.from_pylist([asdict(record)], schema=RUNS_SCHEMA))
    assert_frame_equal(log.scan(since=date(2026, 11, 26)).collect(), expected)
    with pytest.raises(StoreError, match="status must be one of"):
        log.append([replace(record, status="ok")])


def test_the_store_works_on_any_pyarrow_filesystem() -> None:
    import fsspec
    import pyarrow.fs as pafs

    memory = fsspec.filesystem("memory")
    if memory.exists("/metrics-test"):
        memory.rm("/metrics-test", recursive=True)
    store = MetricsStore("/metrics-test", filesystem=pafs.PyFileSystem(pafs.FSSpecHandler(memory)))
    rows = [batch(n, T0 + timedelta(days=n)) for n in range(3)]
    store.append(rows)
    assert store.days() == ["2026-11-26", "2026-11-27", "2026-11-28"]
    assert_frame_equal(store.scan(since=date(2026, 11, 27)).collect().sort("batch_id"),
                       frame_of(rows[1:]))


# --- compaction ----------------------------------------------------------------------

DAY1, DAY2, DAY3 = date(2026, 11, 26), date(2026, 11, 27), date(2026, 11, 28)


def one_part_per_batch(store: MetricsStore, count: int, first: int = 0,
                       days: int = 2) -> list[BatchMetrics]:
    """``count`` batches spread over ``days`` days, each appended as its own part."""
    rows = [batch(first + n, T0 + timedelta(days=n % days, minutes=n)) for n in range(count)]
    for row in rows:
        store.append([row])
    return rows


def part_names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_compaction_keeps_every_row_and_is_idempotent(tmp_path: Path) -> None:
    store = MetricsStore(tmp_path / "metrics")
    rows = one_part_per_batch(store, 12)
    assert len(store.files()) == 12
    result = store.compact(target_rows=4)
    assert (result.parts_before, result.parts_after, result.rows) == (12, 4, 12)
    assert result.removed == 12 and len(result.merged) == 4
    assert len(store.files(since=DAY1, until=DAY1)) == 2
    assert_frame_equal(store.scan().collect().sort("batch_id"), frame_of(rows))
    layout = {d: part_names(tmp_path / "metrics" / f"date={d}") for d in store.days()}
    again = store.compact(target_rows=4)
    assert again.merged == () and again.removed == 0 and again.parts_after == 4
    assert {d: part_names(tmp_path / "metrics" / f"date={d}") for d in store.days()} == layout
    late = one_part_per_batch(store, 2, first=100)
    store.compact()
    assert len(store.files()) == 2                      # one file per day
    assert_frame_equal(store.scan().collect().sort("batch_id"), frame_of(rows + late))


def test_days_are_compacted_independently(tmp_path: Path) -> None:
    store = MetricsStore(tmp_path / "metrics")
    rows = one_part_per_batch(store, 9, days=3)
    folders = {d: tmp_path / "metrics" / f"date={d}" for d in store.days()}
    untouched = {d: part_names(f) for d, f in folders.items()}
    assert store.compact(DAY2).parts_before == 3
    assert len(store.files(since=DAY2, until=DAY2)) == 1
    assert part_names(folders["2026-11-26"]) == untouched["2026-11-26"]
    # a day whose lock is held stops only its own compaction
    (folders["2026-11-26"] / "_compact.lock").write_text("123")
    assert store.compact(before=DAY1).parts_before == 0
    assert store.compact(since=DAY3, before=date(2026, 12, 1)).parts_before == 3
    with pytest.raises(StoreError, match=r"date=2026-11-26/_compact.lock"):
        store.compact(before=DAY3)
    assert part_names(folders["2026-11-26"])[1:] == untouched["2026-11-26"]
    assert_frame_equal(store.scan().collect().sort("batch_id"), frame_of(rows))
    assert store.compact(date(2026, 12, 24)).parts_before == 0
    assert not (tmp_path / "metrics" / "date=2026-12-24").exists()


def test_parts_a_crashed_compaction_left_are_read_once_then_removed(tmp_path: Path) -> None:
    store = MetricsStore(tmp_path / "metrics")
    rows = one_part_per_batch(store, 3, days=1)
    folder = tmp_path / "metrics" / "date=2026-11-26"
    saved = {p.name: p.read_bytes() for p in folder.iterdir()}
    store.compact()
    for name, data in saved.items():               # as if the deletes never happened
        (folder / name).write_bytes(data)
    assert_frame_equal(store.scan().collect().sort("batch_id"), frame_of(rows))
    result = store.compact()
    assert result.removed == 3 and result.merged == ()
    assert len(part_names(folder)) == 1


def test_readers_during_compaction_see_each_row_once(tmp_path: Path) -> None:
    store = MetricsStore(tmp_path / "metrics")
    seen: list[tuple[int, int]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def count(frame: pl.LazyFrame) -> tuple[int, int]:
        return frame.select(pl.len(), pl.col("batch_id").n_unique()).collect().row(0)

    def read() -> None:
        try:
            while not stop.is_set():
                seen.append(MetricsStore(tmp_path / "metrics").query(count))
        except BaseException as err:  # reported by the assertion below
            errors.append(err)

    one_part_per_batch(store, 10)
    reader = threading.Thread(target=read)
    reader.start()
    try:
        for round_, target in enumerate((3, 8, 20, 1000, 5), start=1):
            store.compact(target_rows=target)
            one_part_per_batch(store, 10, first=100 * round_)
            reads = len(seen)
            deadline = time.monotonic() + 30
            while len(seen) == reads and time.monotonic() < deadline and not errors:
                time.sleep(0.005)
    finally:
        stop.set()
        reader.join()
    assert errors == []
    assert len(seen) >= 5
    assert all(rows == unique for rows, unique in seen)     # never a row twice
    totals = [rows for rows, _ in seen]
    assert totals == sorted(totals)                         # never a row gone
    assert count(store.scan()) == (60, 60)


def run_record(n: int, when: datetime) -> RunRecord:
    return RunRecord(
        run_id=f"run-{n}", flow="render_episode", episode="ep01", servers=["gpu-a"],
        started_at=when, finished_at=when + timedelta(hours=1), takes_requested=4,
        takes_deduped=1, takes_rendered=3, takes_failed=0, batches=1, retries=0,
        oom_splits=0, model_swaps=0, status="completed")


def test_compact_closed_days_leaves_today_alone(tmp_path: Path) -> None:
    metrics, runs = MetricsStore(tmp_path / "metrics"), RunLog(tmp_path / "runs")
    one_part_per_batch(metrics, 9, days=3)
    for n in range(6):
        runs.append([run_record(n, T0 + timedelta(days=n % 3))])
    before = runs.scan().collect().sort("run_id")
    result = compact_closed_days(metrics, runs, since=DAY2, today=DAY3)
    assert (result.parts_before, result.parts_after, result.rows) == (5, 2, 5)
    assert [len(metrics.files(since=d, until=d)) for d in (DAY1, DAY2, DAY3)] == [3, 1, 3]
    assert [len(runs.files(since=d, until=d)) for d in (DAY1, DAY2, DAY3)] == [2, 1, 2]
    assert_frame_equal(runs.scan().collect().sort("run_id"), before)


def test_metrics_compact_command(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from tower.cli import app

    store = MetricsStore(tmp_path / "metrics")
    one_part_per_batch(store, 6, days=3)
    RunLog(tmp_path / "runs").append([run_record(0, T0)])
    runner = CliRunner()
    result = runner.invoke(app, ["metrics", "compact", "--data-root", str(tmp_path),
                                 "--before", "2026-11-28"])
    assert result.exit_code == 0, result.output
    assert "metrics: 4 rows: 4 parts -> 2" in result.output
    assert "runs: 1 rows: 1 parts -> 1" in result.output
    assert len(store.files()) == 4                        # 2026-11-28 kept its 2 parts
    bad = runner.invoke(app, ["metrics", "compact", "--data-root", str(tmp_path),
                              "--before", "28/11/2026"])
    assert bad.exit_code != 0 and "YYYY-MM-DD" in bad.output
    (tmp_path / "metrics" / "date=2026-11-28" / "_compact.lock").write_text("1")
    held = runner.invoke(app, ["metrics", "compact", "--data-root", str(tmp_path)])
    assert held.exit_code == 1 and "another compaction holds" in held.output
    empty = runner.invoke(app, ["metrics", "compact", "--data-root", str(tmp_path / "none")])
    assert empty.exit_code == 0 and not (tmp_path / "none").exists()


@pytest.mark.usefixtures("prefect_backend")
def test_the_daily_report_compacts_the_closed_days_it_reads(tmp_path: Path) -> None:
    from flows.daily_report import daily_report

    store = MetricsStore(tmp_path / "metrics")
    now = datetime(2026, 11, 28, 6, 0, tzinfo=UTC)
    rows = one_part_per_batch(store, 9, days=3)             # 26th, 27th and today (28th)
    old = [batch(500 + n, T0 - timedelta(days=40)) for n in range(2)]
    for row in old:
        store.append([row])
    paths = daily_report(data_root=str(tmp_path), now=now)
    report = json.loads(Path(paths["json"]).read_text())
    assert report["figures"]["volume"]["attempts"] == 3      # the 27th, read once
    assert [len(store.files(since=d, until=d)) for d in (DAY1, DAY2, DAY3)] == [1, 1, 3]
    assert len(store.files(until=date(2026, 10, 31))) == 2   # outside what the report reads
    assert_frame_equal(store.scan().collect().sort("batch_id"), frame_of(rows + old)
                       .sort("batch_id"))


# --- schema evolution ----------------------------------------------------------------

OLD_METRICS_SCHEMA = pa.schema([f for f in METRICS_SCHEMA if f.name != "parts"])


def write_old_part(folder: Path, rows: list[BatchMetrics]) -> None:
    """A part as written before METRICS_SCHEMA had its ``parts`` column."""
    import pyarrow.parquet as pq

    records = [{k: v for k, v in asdict(r).items() if k != "parts"} for r in rows]
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(records, schema=OLD_METRICS_SCHEMA),
                   folder / "part-20261126T000000000000Z-1-old.parquet")


def test_parts_written_before_the_parts_column_read_back_with_it_null(tmp_path: Path) -> None:
    store = MetricsStore(tmp_path / "metrics")
    old = [batch(n) for n in range(2)]
    write_old_part(tmp_path / "metrics" / "date=2026-11-26", old)
    new = [batch(10, parts=""), batch(11, parts="lora+control")]
    store.append(new)
    got = store.scan().collect().sort("batch_id")
    assert got.columns == METRICS_SCHEMA.names
    assert got["parts"].to_list() == [None, None, "", "lora+control"]
    assert_frame_equal(got, frame_of(old + new))
    store.compact()                                  # the merged file has the column
    assert len(store.files()) == 1
    assert_frame_equal(store.scan().collect().sort("batch_id"), frame_of(old + new))


def test_old_parts_read_back_on_other_filesystems_too(tmp_path: Path) -> None:
    import pyarrow.fs as pafs

    write_old_part(tmp_path / "metrics" / "date=2026-11-26", [batch(0)])
    remote = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())
    store = MetricsStore("metrics", filesystem=remote)    # not local: the pyarrow reader
    store.append([batch(1, parts="hires")])
    got = store.scan().collect().sort("batch_id")
    assert got["parts"].to_list() == [None, "hires"]
    assert_frame_equal(got, frame_of([batch(0), batch(1, parts="hires")]))
