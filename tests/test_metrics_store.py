"""The metrics store and run log: daily partitions, pruning, crash-safe concurrent appends."""

from __future__ import annotations

import multiprocessing as mp
from dataclasses import asdict, replace
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
from polars.testing import assert_frame_equal

from tower.metrics import BatchMetrics, MetricsStore, RunLog, RunRecord
from tower.parquet_io import StoreError
from tower.schemas import METRICS_SCHEMA, RUNS_SCHEMA

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
    with pytest.raises(pl.exceptions.ComputeError):
        store.scan().collect()


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
