"""Builders for crafted metrics and runs rows, written as real day-partitioned Parquet.

Other report tests import these; the tests here check that what they write reads back
through the report's own scanners with the project schemas.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from tower.metrics import MetricsStore, RunLog
from tower.report_data import scan_metrics, scan_runs
from tower.schemas import METRICS_SCHEMA
from tower.storage import DataRoot

T0 = datetime(2026, 11, 26, 1, 0, tzinfo=UTC)
NOW = datetime(2026, 11, 27, 0, 0, tzinfo=UTC)


def metric_row(i: int = 0, *, at: datetime = T0, **fields: Any) -> dict[str, Any]:
    """A successful draft batch on server ``gpu-a``; ``fields`` override any column.

    ``at`` is when the batch started; it ends ``execution_s`` later plus the download.
    """
    row: dict[str, Any] = {
        "run_id": "run-1", "flow_run_id": None, "batch_id": f"b{i}", "server": "gpu-a",
        "episode": "ep01", "preset": "draft", "checkpoint": "anime-draft-sd15.safetensors",
        "width": 512, "height": 512, "takes": 4, "batch_size": 4, "vae_tiled": False,
        "status": "ok", "attempt": 1, "queue_wait_s": 1.0, "execution_s": 10.0,
        "model_load_s": 0.0, "sampling_s": 8.0, "vae_decode_s": 2.0, "download_s": 0.5,
        "model_cache_hit": True, "cached_nodes": 0, "vram_estimated_mb": 5000.0,
        "vram_budget_mb": 10000.0, "vram_peak_mb": 5000.0, "gpu_util_mean": 90.0,
        "bytes_downloaded": 1000, "images": 4, "error_type": None, "error_message": None,
    }
    row.update(fields)
    start = row.pop("started_at", at)
    row["started_at"] = start
    if "queued_at" not in row and start is not None:
        row["queued_at"] = start - timedelta(seconds=row["queue_wait_s"] or 0)
    if "finished_at" not in row:
        row["finished_at"] = start + timedelta(seconds=(row["execution_s"] or 0)
                                               + (row["download_s"] or 0))
    row["date"] = row["finished_at"].date().isoformat()
    return row


def sequential(count: int, *, start: datetime = T0, gap_s: float = 0.0,
               **fields: Any) -> list[dict[str, Any]]:
    """``count`` batches one after another on one server, ``gap_s`` idle between them."""
    rows, at = [], start
    for i in range(count):
        row = metric_row(i, at=at, **{**fields, "batch_id": f"{fields.get('batch_id', 'b')}{i}"})
        rows.append(row)
        at = row["finished_at"] + timedelta(seconds=gap_s)
    return rows


def run_row(run_id: str = "run-1", *, start: datetime = T0, wall_s: float = 600.0,
            **fields: Any) -> dict[str, Any]:
    """One completed render_episode run; ``fields`` override any column."""
    row: dict[str, Any] = {
        "run_id": run_id, "flow_run_id": None, "flow": "render_episode", "episode": "ep01",
        "preset": None, "servers": ["gpu-a"], "started_at": start,
        "finished_at": start + timedelta(seconds=wall_s), "takes_requested": 40,
        "takes_deduped": 10, "takes_rendered": 30, "takes_failed": 0, "batches": 8,
        "retries": 0, "oom_splits": 0, "model_swaps": 0, "status": "completed",
    }
    row.update(fields)
    row["date"] = row["started_at"].date().isoformat()
    return row


def write_metrics(root: Path, rows: list[dict[str, Any]]) -> None:
    """Append metrics rows under ``root/metrics`` through the metrics store."""
    MetricsStore(DataRoot(root).metrics).append(rows)


def write_runs(root: Path, rows: list[dict[str, Any]]) -> None:
    """Append runs rows under ``root/runs`` through the run log."""
    RunLog(DataRoot(root).runs).append(rows)


def test_written_rows_read_back_with_the_schema_and_window(tmp_path: Path) -> None:
    rows = [*sequential(3), metric_row(9, at=T0 - timedelta(days=2))]
    write_metrics(tmp_path, rows)
    write_runs(tmp_path, [run_row(), run_row("old", start=T0 - timedelta(days=2))])
    got = scan_metrics(DataRoot(tmp_path), NOW - timedelta(days=1), NOW).collect()
    assert sorted(got["batch_id"]) == ["b0", "b1", "b2"]
    assert got.schema == pl.from_arrow(METRICS_SCHEMA.empty_table()).schema
    runs = scan_runs(DataRoot(tmp_path), NOW - timedelta(days=1), NOW).collect()
    assert runs["run_id"].to_list() == ["run-1"]


def test_scanners_ignore_temp_files_and_foreign_folders(tmp_path: Path) -> None:
    write_metrics(tmp_path, sequential(2))
    part = tmp_path / "metrics" / f"date={T0.date()}"
    (part / ".part-9.parquet.tmp").write_bytes(b"half a file")
    (tmp_path / "metrics" / "README").mkdir()
    got = scan_metrics(DataRoot(tmp_path), NOW - timedelta(days=1), NOW).collect()
    assert got.height == 2
