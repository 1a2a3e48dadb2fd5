"""The metrics store (one row per render-batch attempt) and the run log (one per flow run).

Both are append-only Parquet datasets partitioned by day, hive style
(``date=YYYY-MM-DD/part-....parquet``), so a daily report reads one folder. Each file
also carries its ``date`` column, so a part read on its own (or by a reader that ignores
hive folders) is complete and typed by the schema alone. Writes go through
:mod:`tower.store.parquet_io` (one new part per partition per append, temporary name then
rename), so concurrent writers never lose rows and a crash never leaves half a file
where readers look.

One part per render batch keeps a crash from losing anything but leaves many small
files per day; :meth:`DailyStore.compact` merges a day's parts with the protocol of
:mod:`tower.store.compaction` (one lock per day folder), and readers skip the parts a merged
file replaces, so each row is read exactly once even while a compaction runs.

A damaged part (empty, truncated, another schema) is skipped by reads and listed by
:meth:`DailyStore.unreadable`, so a report or the planner reads every other row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from tower.store import compaction
from tower.store import parquet_io as pio
from tower.store.compaction import CompactResult
from tower.store.schemas import BATCH_STATUSES, METRICS_SCHEMA, RUN_STATUSES, RUNS_SCHEMA

PARTITION = "date"

T = TypeVar("T")


@dataclass(kw_only=True)
class BatchMetrics:
    """One render-batch attempt; fields are METRICS_SCHEMA's, unmeasured ones None."""

    run_id: str
    flow_run_id: str | None = None
    batch_id: str
    server: str
    episode: str
    preset: str
    checkpoint: str
    width: int
    height: int
    takes: int
    batch_size: int
    vae_tiled: bool
    parts: str | None = None
    status: str
    attempt: int
    queued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime
    queue_wait_s: float | None = None
    execution_s: float | None = None
    model_load_s: float | None = None
    sampling_s: float | None = None
    vae_decode_s: float | None = None
    download_s: float | None = None
    model_cache_hit: bool | None = None
    cached_nodes: int | None = None
    vram_estimated_mb: float | None = None
    vram_budget_mb: float | None = None
    vram_peak_mb: float | None = None
    gpu_util_mean: float | None = None
    bytes_downloaded: int | None = None
    images: int | None = None
    suspect_images: int | None = None
    error_type: str | None = None
    error_message: str | None = None
    date: str | None = None

    def __post_init__(self) -> None:
        if self.date is None:
            self.date = _day(self.finished_at, "finished_at")


@dataclass(kw_only=True)
class RunRecord:
    """One flow run, written when it ends; fields are RUNS_SCHEMA's."""

    run_id: str
    flow_run_id: str | None = None
    flow: str
    episode: str
    preset: str | None = None
    servers: list[str]
    started_at: datetime
    finished_at: datetime
    takes_requested: int
    takes_deduped: int
    takes_rendered: int
    takes_failed: int
    batches: int
    retries: int
    oom_splits: int
    model_swaps: int
    status: str
    date: str | None = None

    def __post_init__(self) -> None:
        if self.date is None:
            self.date = _day(self.started_at, "started_at")


def _day(moment: datetime, field: str) -> str:
    """The UTC calendar day of ``moment`` (the partition it belongs to)."""
    if moment.tzinfo is None:
        raise ValueError(f"{field} must be timezone-aware (UTC), got {moment!r}")
    return moment.astimezone(UTC).date().isoformat()


class DailyStore:
    """An append-only Parquet dataset partitioned by the ``date`` column."""

    schema: ClassVar[pa.Schema]
    statuses: ClassVar[tuple[str, ...]]

    def __init__(self, path: Path | str, filesystem: pafs.FileSystem | None = None):
        self.filesystem, self.root = pio.resolve_location(path, filesystem)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.root!r})"

    def partition_dir(self, day: str) -> str:
        """The folder of one day's parts."""
        date.fromisoformat(day)  # refuse anything that is not YYYY-MM-DD
        return f"{self.root}/{PARTITION}={day}"

    def append(self, rows: Sequence[Any] | pa.Table) -> list[str]:
        """Write ``rows`` as one new part per day they span; returns the parts' paths.

        Raises:
            StoreError: rows that do not match the schema (naming the column), or a
                write failure (naming the file). Nothing is written for bad rows.
        """
        table = pio.rows_to_table(rows, self.schema, repr(self))
        self._validate(table)
        written = []
        for day in sorted(set(table.column(PARTITION).to_pylist())):
            part = table.filter(pc.equal(table.column(PARTITION), day))
            dest = f"{self.partition_dir(day)}/{pio.part_name()}"
            pio.write_table_atomic(self.filesystem, dest, part)
            written.append(dest)
        return written

    def _validate(self, table: pa.Table) -> None:
        what = repr(self)
        pio.check_not_null(table, self.schema, what)
        pio.check_utc(table, what)
        bad = set(table.column("status").to_pylist()) - set(self.statuses)
        if bad:
            raise pio.StoreError(f"{what}: status must be one of {', '.join(self.statuses)};"
                                 f" got {', '.join(sorted(bad))}")
        for day in set(table.column(PARTITION).to_pylist()):
            try:
                date.fromisoformat(day)
            except ValueError:
                raise pio.StoreError(f"{what}: date must be YYYY-MM-DD, got {day!r}") from None

    def days(self) -> list[str]:
        """The days that have a partition, oldest first."""
        prefix = f"{PARTITION}="
        return [name[len(prefix):] for name in pio.list_subfolders(self.filesystem, self.root)
                if name.startswith(prefix)]

    def chosen_days(self, since: date | None = None, until: date | None = None,
                    before: date | None = None) -> list[str]:
        """Days with a partition in ``since..until`` (inclusive) and before ``before``."""
        return [d for d in self.days()
                if (since is None or d >= since.isoformat())
                and (until is None or d <= until.isoformat())
                and (before is None or d < before.isoformat())]

    def listings(self, since: date | None = None, until: date | None = None,
                 ) -> list[compaction.Listing]:
        """Each chosen day's parts sorted into live, superseded and unreadable."""
        return [compaction.listing(self.filesystem, self.partition_dir(day), self.schema)
                for day in self.chosen_days(since, until)]

    def files(self, since: date | None = None, until: date | None = None) -> list[str]:
        """Live parts of the days in ``since..until`` (inclusive); other folders unread.

        Parts that a compacted file replaces are left out, so no row is read twice, and
        so are unreadable ones (:meth:`unreadable`).
        """
        return [info.path for found in self.listings(since, until) for info in found.live]

    def unreadable(self, since: date | None = None, until: date | None = None,
                   ) -> list[pio.UnreadablePart]:
        """Parts of the chosen days that reads skip because they cannot be read."""
        return [bad for found in self.listings(since, until) for bad in found.unreadable]

    def scan(self, since: date | None = None, until: date | None = None) -> pl.LazyFrame:
        """Rows of the days in ``since..until`` (inclusive), columns in schema order.

        A snapshot of the parts that exist now: if a compaction removes one before the
        frame is collected, collecting fails; :meth:`query` retries that for you.
        """
        return pio.scan_files(self.filesystem, self.files(since, until), self.schema)

    def query(self, build: Callable[[pl.LazyFrame], T], since: date | None = None,
              until: date | None = None) -> T:
        """``build(scan(since, until))``, rescanning if a compaction removed a part meanwhile
        and reading around a part found damaged on the way."""
        def diagnose() -> list[pio.UnreadablePart]:
            live = [info for found in self.listings(since, until) for info in found.live]
            return pio.verify_fully(self.filesystem, live, self.schema)

        return compaction.query_retrying(lambda: self.scan(since, until), build, diagnose)

    def compact(self, day: date | None = None, *, since: date | None = None,
                before: date | None = None,
                target_rows: int = compaction.DEFAULT_TARGET_ROWS) -> CompactResult:
        """Merge the small parts of one ``day``, or of every day in ``since``..``before``.

        ``before`` is exclusive: pass today to leave the day still being written alone
        (compacting it is safe too, only less useful). Each day folder is compacted on
        its own, under its own lock; the result sums them.

        Raises:
            StoreError: a day's compaction lock is held, or a file could not be read or
                written (naming it). Days finished before the error stay compacted.
        """
        days = ([day.isoformat()] if day is not None
                else self.chosen_days(since=since, before=before))
        return compaction.combine(
            compaction.compact_folder(self.filesystem, self.partition_dir(d), self.schema,
                                      target_rows)
            for d in days)


class MetricsStore(DailyStore):
    """Per-batch render metrics (METRICS_SCHEMA) at ``<data root>/metrics``.

    Parts written before a nullable column was added (``parts``, for one) read back with
    that column null, locally and on other filesystems, and compaction keeps them so.
    """

    schema = METRICS_SCHEMA
    statuses = BATCH_STATUSES


class RunLog(DailyStore):
    """One row per flow run (RUNS_SCHEMA) at ``<data root>/runs``."""

    schema = RUNS_SCHEMA
    statuses = RUN_STATUSES


def compact_closed_days(metrics: MetricsStore, runs: RunLog, since: date | None,
                        today: date) -> CompactResult:
    """Compact the metrics and run-log days from ``since`` up to (not including) ``today``.

    What a report over those days calls first: closed days no longer grow, so merging
    their per-batch parts once makes every later read of them cheap.
    """
    return compaction.combine([metrics.compact(since=since, before=today),
                               runs.compact(since=since, before=today)])
