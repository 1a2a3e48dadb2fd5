"""Crafted rows (``report_rows``) read back through the report's scanners with the schemas."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import polars as pl
from report_rows import NOW, T0, metric_row, run_row, sequential, write_metrics, write_runs

from tower.report.data import scan_metrics, scan_runs
from tower.store.files import DataRoot
from tower.store.schemas import METRICS_SCHEMA


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
