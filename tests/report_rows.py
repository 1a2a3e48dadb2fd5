"""Builders for crafted metrics and runs rows, written as real day-partitioned Parquet.

Report, status and CLI tests import these; ``tests/report/test_report_rows.py`` checks
that what they write reads back through the report's own scanners.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tower.store.files import DataRoot
from tower.store.metrics import MetricsStore, RunLog

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
