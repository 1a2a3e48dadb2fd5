"""Reading the metrics, runs and index datasets for a report window, lazily.

The datasets are hive-partitioned by day (``<dataset>/date=YYYY-MM-DD/*.parquet``).
The report only ever needs a few weeks out of a year of data, so the partitions are
pruned by their folder names before polars opens a single file: a year of metrics
costs the same as a fortnight.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path

import polars as pl
import pyarrow as pa

from tower.schemas import INDEX_SCHEMA, METRICS_SCHEMA, RUNS_SCHEMA

PARTITION_PREFIX = "date="


class ReportDataError(RuntimeError):
    """A dataset file could not be read; the message names the folder."""


def empty_frame(schema: pa.Schema) -> pl.LazyFrame:
    """An empty LazyFrame with ``schema``'s columns and types."""
    return pl.from_arrow(schema.empty_table()).lazy()  # type: ignore[union-attr]


def polars_schema(schema: pa.Schema) -> pl.Schema:
    """The polars equivalent of a pyarrow schema."""
    return pl.from_arrow(schema.empty_table()).schema  # type: ignore[union-attr]


def partition_files(folder: Path, first: date | None = None,
                    last: date | None = None) -> list[Path]:
    """Parquet files of the day partitions of ``folder`` from ``first`` to ``last`` inclusive."""
    if not folder.is_dir():
        return []
    files: list[Path] = []
    for part in sorted(folder.glob(f"{PARTITION_PREFIX}*")):
        try:
            day = date.fromisoformat(part.name.removeprefix(PARTITION_PREFIX))
        except ValueError:
            continue
        if (first is None or day >= first) and (last is None or day <= last):
            files.extend(p for p in sorted(part.glob("*.parquet")) if not p.name.startswith("."))
    return files


def scan_partitions(folder: Path, schema: pa.Schema,
                    first: date | None = None, last: date | None = None) -> pl.LazyFrame:
    """Lazily scan the day partitions of ``folder`` between two dates, typed by ``schema``."""
    files = partition_files(folder, first, last)
    if not files:
        return empty_frame(schema)
    return pl.scan_parquet(files, hive_partitioning=False, schema=polars_schema(schema),
                           missing_columns="insert", extra_columns="ignore")


def scan_metrics(folder: Path, since: datetime, until: datetime) -> pl.LazyFrame:
    """Metrics rows whose ``finished_at`` lies in ``[since, until)``."""
    lf = scan_partitions(folder, METRICS_SCHEMA, since.date(), until.date())
    return lf.filter(pl.col("finished_at").is_between(since, until, closed="left"))


def scan_runs(folder: Path, since: datetime, until: datetime) -> pl.LazyFrame:
    """Flow runs that started in ``[since, until)``."""
    lf = scan_partitions(folder, RUNS_SCHEMA, since.date(), until.date())
    return lf.filter(pl.col("started_at").is_between(since, until, closed="left"))


def scan_index(folder: Path) -> pl.LazyFrame:
    """Every row of the output index, wherever its Parquet files sit under ``folder``."""
    files = sorted(p for p in folder.rglob("*.parquet") if not p.name.startswith(".")) \
        if folder.is_dir() else []
    if not files:
        return empty_frame(INDEX_SCHEMA)
    return pl.scan_parquet(files, hive_partitioning=False, schema=polars_schema(INDEX_SCHEMA),
                           missing_columns="insert", extra_columns="ignore")


def collect(lf: pl.LazyFrame, what: str) -> pl.DataFrame:
    """Collect ``lf``, turning a file error into :class:`ReportDataError` naming ``what``."""
    try:
        return lf.collect()
    except (pl.exceptions.PolarsError, OSError) as err:
        raise ReportDataError(f"cannot read {what}: {err}") from err


def day_range(first: date, last: date) -> list[date]:
    """Every day from ``first`` to ``last`` inclusive."""
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]
