"""Reading the metrics and runs datasets for a report window, lazily.

The stores keep one folder per day, and :meth:`DailyStore.scan` opens only the days
asked for, so a report over a year of data reads the same few weeks of files as one
over a fortnight. Errors reading a file become :class:`ReportDataError` naming it.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

import polars as pl

from tower.store.files import DataRoot
from tower.store.metrics import MetricsStore, RunLog
from tower.store.parquet_io import StoreError


class ReportDataError(RuntimeError):
    """A dataset could not be read; the message names the dataset and the cause."""


def scan_metrics(data: DataRoot, since: datetime, until: datetime) -> pl.LazyFrame:
    """Metrics rows whose ``finished_at`` lies in ``[since, until)``."""
    lf = MetricsStore(data.metrics).scan(since.date(), until.date())
    return lf.filter(pl.col("finished_at").is_between(since, until, closed="left"))


def scan_runs(data: DataRoot, since: datetime, until: datetime) -> pl.LazyFrame:
    """Flow runs that started in ``[since, until)``."""
    lf = RunLog(data.runs).scan(since.date(), until.date())
    return lf.filter(pl.col("started_at").is_between(since, until, closed="left"))


def unreadable_parts(data: DataRoot, since: datetime, until: datetime) -> tuple[str, ...]:
    """``path: reason`` of each metrics or run-log part of ``[since, until)``'s days that
    reads skipped, paths relative to the data root (reports travel to other machines)."""
    days = (since.date(), until.date())
    found = MetricsStore(data.metrics).unreadable(*days) + RunLog(data.runs).unreadable(*days)
    prefix = f"{data.root.absolute().as_posix()}/"
    return tuple(str(bad).replace(prefix, "") for bad in found)


def read_error(err: Exception, data: DataRoot) -> ReportDataError:
    """The error to raise when reading the datasets under ``data`` failed with ``err``."""
    return ReportDataError(f"cannot read the metrics or runs under {data.root}: {err}")


READ_ERRORS = (pl.exceptions.PolarsError, OSError, StoreError)


def day_range(first: date, last: date) -> list[date]:
    """Every day from ``first`` to ``last`` inclusive."""
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]
