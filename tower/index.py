"""The output index: one Parquet row per rendered take, and the dedup built on it.

The index is a folder of part files (see :mod:`tower.parquet_io`): appends never touch
existing files, so several flow runs and workers may append at once.

Compaction protocol. :meth:`OutputIndex.compact` merges small parts into
merged files named after their first part (``<first part>~compact-<uuid>.parquet``, so
name order stays time order). Each merged file records, in its Parquet footer
(``tower.replaces``), the names of the parts it replaces. The merged file is written
(temp + rename) *before* those parts are deleted, and readers drop every part that some
merged file replaces. So at every instant a reader sees each row exactly once: before
the rename it sees the old parts, after it the merged file (the old parts, while they
still exist, are skipped). A crash between the rename and the deletes leaves superseded
parts that readers skip and the next compaction deletes. Compactions take a lock file
(``_compact.lock``) so two never merge the same parts, and clear temporaries that a
crashed writer left more than an hour ago.

A lazy frame from :meth:`OutputIndex.scan` is a snapshot of the parts that existed when
it was made; if a compaction deletes one before it is collected, collecting fails and a
new scan is needed (the index's own queries do this retry themselves).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, TypeVar

import polars as pl
import pyarrow as pa
import pyarrow.fs as pafs

from tower import parquet_io as pio
from tower.keys import key_payload
from tower.schemas import INDEX_SCHEMA
from tower.takes import ResolvedTake

if TYPE_CHECKING:
    from tower.metrics import RunLog

COMPACT_MARK = "~compact-"
REPLACES_KEY = "tower.replaces"
LOCK_NAME = "_compact.lock"
SCAN_RETRIES = 10
# A temporary this old is a crashed write's leftover, not a write in progress.
STALE_TEMPORARY = timedelta(hours=1)
_LOOK_DROP = ("seed", "take", "vae")

T = TypeVar("T")


def look_key(take: ResolvedTake) -> str:
    """sha256 of a take's settings minus seed, take index and VAE decode.

    Two takes with the same look key differ only in their noise: a preview may show
    either one.
    """
    payload = {k: v for k, v in key_payload(take).items() if k not in _LOOK_DROP}
    encoded = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class IndexRow:
    """One rendered take, as stored (fields are INDEX_SCHEMA's, in order)."""

    render_key: str
    episode: str
    shot_id: str
    take: int
    preset: str
    checkpoint: str
    seed: int
    width: int
    height: int
    prompt: str
    output_path: str
    sha256: str
    size_bytes: int
    rendered_at: datetime
    server: str
    prompt_id: str
    run_id: str
    look_key: str | None = None

    @classmethod
    def from_take(cls, take: ResolvedTake, *, output_path: str, sha256: str, size_bytes: int,
                  rendered_at: datetime, server: str, prompt_id: str, run_id: str) -> IndexRow:
        """The row saying ``take`` was rendered to ``output_path`` (relative to the render root)."""
        return cls(
            render_key=take.key, episode=take.episode, shot_id=take.shot_id, take=take.take,
            preset=take.preset, checkpoint=take.checkpoint, seed=take.seed, width=take.width,
            height=take.height, prompt=take.prompt, output_path=output_path, sha256=sha256,
            size_bytes=size_bytes, rendered_at=rendered_at, server=server, prompt_id=prompt_id,
            run_id=run_id, look_key=look_key(take),
        )


@dataclass(frozen=True)
class DedupResult:
    """Takes split by whether the index already holds their image.

    ``missing_files`` were indexed but their file is gone or has another size; they are
    also in ``to_render``.
    """

    rendered: list[tuple[ResolvedTake, IndexRow]]
    to_render: list[ResolvedTake]
    missing_files: list[ResolvedTake]


@dataclass(frozen=True)
class CompactResult:
    """What a compaction did; ``merged`` lists the files written, ``removed`` the parts
    deleted, ``stale_temporaries`` the crash leftovers cleared."""

    parts_before: int
    parts_after: int
    rows: int
    merged: tuple[str, ...]
    removed: int
    stale_temporaries: int = 0


@dataclass(frozen=True)
class IndexStats:
    """Counts for reports and ``tower index stats``.

    ``rerendered`` counts rows whose key was already indexed (a take rendered again after
    its file went missing, or two runs racing); ``duplicates_avoided`` is the sum of
    takes served from the index, from the run log when one is given.
    """

    parts: int
    rows: int
    unique_keys: int
    total_bytes: int
    by_episode: dict[str, int]
    by_preset: dict[str, int]
    bytes_by_episode: dict[str, int]
    rerendered: int
    duplicates_avoided: int | None = None


class OutputIndex:
    """The append-only output index at ``path`` (``<data root>/index`` by default)."""

    def __init__(self, path: Path | str, filesystem: pafs.FileSystem | None = None):
        self.filesystem, self.root = pio.resolve_location(path, filesystem)

    def __repr__(self) -> str:
        return f"OutputIndex({self.root!r})"

    # --- writing -----------------------------------------------------------------

    def append(self, rows: Sequence[IndexRow] | pa.Table) -> str | None:
        """Write ``rows`` as one new part; returns its path, or None when there are no rows.

        Raises:
            StoreError: rows that do not fit the schema (naming the column), or a failed
                write (naming the file); nothing is written then.
        """
        table = pio.rows_to_table(rows, INDEX_SCHEMA, repr(self))
        if table.num_rows == 0:
            return None
        pio.check_not_null(table, INDEX_SCHEMA, repr(self))
        pio.check_utc(table, repr(self))
        dest = f"{self.root}/{pio.part_name()}"
        pio.write_table_atomic(self.filesystem, dest, table)
        return dest

    # --- reading -----------------------------------------------------------------

    def files(self) -> list[str]:
        """The live parts: every finished part not replaced by a compacted file."""
        live, _ = self._live_and_superseded()
        return pio.paths(live)

    def _live_and_superseded(self) -> tuple[list[pafs.FileInfo], list[pafs.FileInfo]]:
        found = pio.list_data_files(self.filesystem, self.root)
        replaced: set[str] = set()
        for info in found:
            if COMPACT_MARK in info.base_name:
                replaced |= self._replaces(info.path)
        live = [f for f in found if f.base_name not in replaced]
        superseded = [f for f in found if f.base_name in replaced]
        return live, superseded

    def _replaces(self, path: str) -> set[str]:
        meta = pio.read_metadata(self.filesystem, path).metadata or {}
        raw = meta.get(REPLACES_KEY.encode())
        return set(json.loads(raw)) if raw else set()

    def scan(self) -> pl.LazyFrame:
        """Every row, lazily, with INDEX_SCHEMA's columns (a snapshot of the live parts)."""
        return pio.scan_files(self.filesystem, self.files(), INDEX_SCHEMA)

    def _query(self, build: Callable[[pl.LazyFrame], T]) -> T:
        """Run ``build(scan)``, rescanning if a compaction removed a part meanwhile."""
        for attempt in range(SCAN_RETRIES):
            try:
                return build(self.scan())
            except (FileNotFoundError, pl.exceptions.ComputeError, pio.StoreError) as err:
                if attempt == SCAN_RETRIES - 1 or not _is_vanished(err):
                    raise
                time.sleep(min(0.2, 0.005 * 2 ** attempt))
        raise AssertionError("unreachable")

    # --- dedup -------------------------------------------------------------------

    def dedup(self, takes: Sequence[ResolvedTake], render_root: Path | str | None = None,
              check_files: bool = True) -> DedupResult:
        """Split ``takes`` into already rendered and still to render, by render key.

        A vectorised join of the takes' keys against the index (anti-join for the
        unknown keys). With ``check_files``, a hit only counts if its file still exists
        under ``render_root`` (default: ``renders`` next to the index folder) with the
        recorded size; otherwise the take is re-rendered and listed in ``missing_files``.
        When a key was indexed several times, the newest row wins.
        """
        if not takes:
            return DedupResult([], [], [])
        wanted = pl.LazyFrame({"_i": range(len(takes)), "render_key": [t.key for t in takes]},
                              schema={"_i": pl.Int64, "render_key": pl.String})

        def build(index: pl.LazyFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
            latest = (index.join(wanted.select("render_key"), on="render_key", how="semi")
                      .sort("rendered_at").unique("render_key", keep="last"))
            hits = wanted.join(latest, on="render_key", how="inner").sort("_i")
            unknown = wanted.join(index.select("render_key"), on="render_key", how="anti")
            found, new = pl.collect_all([hits, unknown])
            return found, new

        hits, unknown = self._query(build)
        ok = self._files_ok(hits, render_root) if check_files else [True] * hits.height
        rendered, gone = [], set()
        for row, good in zip(hits.iter_rows(named=True), ok, strict=True):
            position = row.pop("_i")
            if good:
                rendered.append((takes[position], IndexRow(**row)))
            else:
                gone.add(position)
        redo = gone | set(unknown["_i"].to_list())
        return DedupResult(rendered, [t for i, t in enumerate(takes) if i in redo],
                           [t for i, t in enumerate(takes) if i in gone])

    def default_render_root(self) -> str:
        """``renders`` beside the index folder, as laid out by :class:`tower.storage.DataRoot`."""
        return str(PurePosixPath(self.root).parent / "renders")

    def _files_ok(self, hits: pl.DataFrame, render_root: Path | str | None) -> list[bool]:
        """Whether each hit's file exists under the render root with the recorded size."""
        root = (Path(render_root).absolute().as_posix()
                if render_root is not None and pio.is_local(self.filesystem)
                else str(render_root or self.default_render_root()))
        rels = hits["output_path"].to_list()
        safe = [_is_safe_relative(rel) for rel in rels]
        infos = self.filesystem.get_file_info([f"{root}/{rel}" if ok else root
                                               for rel, ok in zip(rels, safe, strict=True)])
        sizes = hits["size_bytes"].to_list()
        return [ok and info.type == pafs.FileType.File and info.size == size
                for ok, info, size in zip(safe, infos, sizes, strict=True)]

    def similar(self, takes: Sequence[ResolvedTake]) -> dict[tuple[str, str], list[IndexRow]]:
        """Existing images that look like each shot's takes, whatever their seed or take.

        Matches on the look key (checkpoint, prompt, negative, steps, cfg, sampler,
        scheduler, size, denoise), so previews can show earlier renders instead of new
        ones. Keys are ``(episode, shot_id)`` of the given takes; shots with no match are
        absent. Rows come newest first, one per render key.
        """
        wanted: dict[str, set[tuple[str, str]]] = {}
        for take in takes:
            wanted.setdefault(look_key(take), set()).add((take.episode, take.shot_id))
        if not wanted:
            return {}
        looks = pl.LazyFrame({"look_key": list(wanted)}, schema={"look_key": pl.String})

        def build(index: pl.LazyFrame) -> pl.DataFrame:
            return (index.join(looks, on="look_key", how="semi")
                    .sort("rendered_at", descending=True)
                    .unique("render_key", keep="first", maintain_order=True).collect())

        found: dict[tuple[str, str], list[IndexRow]] = {}
        for row in self._query(build).iter_rows(named=True):
            record = IndexRow(**row)
            for shot in sorted(wanted[row["look_key"]]):
                found.setdefault(shot, []).append(record)
        return found

    # --- maintenance -------------------------------------------------------------

    def compact(self, target_rows: int = 1_000_000) -> CompactResult:
        """Merge small parts into files of up to ``target_rows`` rows, keeping every row.

        Idempotent: a second run finds nothing to merge. See the module docstring for
        why concurrent readers never see a row twice or miss one.
        """
        if target_rows < 1:
            raise ValueError("target_rows must be at least 1")
        if self.filesystem.get_file_info(self.root).type == pafs.FileType.NotFound:
            return CompactResult(0, 0, 0, (), 0)
        with self._lock():
            stale = pio.stale_temporaries(self.filesystem, self.root, STALE_TEMPORARY,
                                          datetime.now(UTC))
            for path in stale:
                self.filesystem.delete_file(path)
            live, superseded = self._live_and_superseded()
            removed = self._delete(superseded)
            counts = {f.path: pio.read_metadata(self.filesystem, f.path).num_rows for f in live}
            groups = plan_compaction([(f.path, counts[f.path]) for f in live], target_rows)
            merged = []
            for group in groups:
                merged.append(self._merge(group))
                removed += self._delete([self.filesystem.get_file_info(p) for p in group])
        rows = sum(counts.values())
        after = len(live) - sum(len(g) for g in groups) + len(groups)
        return CompactResult(len(live), after, rows, tuple(merged), removed, len(stale))

    def _merge(self, group: Sequence[str]) -> str:
        tables, replaces = [], set()
        for path in group:
            tables.append(pio.read_table(self.filesystem, path, INDEX_SCHEMA))
            replaces.add(PurePosixPath(path).name)
            if COMPACT_MARK in PurePosixPath(path).name:
                replaces |= self._replaces(path)
        merged = pa.concat_tables(tables)
        dest = f"{self.root}/{merged_name(PurePosixPath(group[0]).name)}"
        pio.write_table_atomic(self.filesystem, dest, merged,
                               metadata={REPLACES_KEY: json.dumps(sorted(replaces))})
        return dest

    def _delete(self, files: Sequence[pafs.FileInfo]) -> int:
        for info in files:
            with contextlib.suppress(FileNotFoundError):
                self.filesystem.delete_file(info.path)
        return len(files)

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """An exclusive compaction lock (atomic create on local disks)."""
        self.filesystem.create_dir(self.root, recursive=True)
        lock = f"{self.root}/{LOCK_NAME}"
        if pio.is_local(self.filesystem):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                raise pio.StoreError(
                    f"another compaction holds {lock}; if none is running, delete it") from None
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
        elif self.filesystem.get_file_info(lock).type != pafs.FileType.NotFound:
            raise pio.StoreError(f"another compaction holds {lock}; if none is running, delete it")
        else:
            with self.filesystem.open_output_stream(lock) as out:
                out.write(str(os.getpid()).encode())
        try:
            yield
        finally:
            self.filesystem.delete_file(lock)

    def stats(self, run_log: RunLog | None = None) -> IndexStats:
        """Counts per episode and preset, bytes, re-renders; dedup savings from ``run_log``."""
        def build(index: pl.LazyFrame) -> tuple[pl.DataFrame, ...]:
            per_episode = index.group_by("episode").agg(
                pl.len().alias("rows"), pl.col("size_bytes").sum().alias("bytes")).sort("episode")
            per_preset = index.group_by("preset").agg(pl.len().alias("rows")).sort("preset")
            totals = index.select(pl.len().alias("rows"), pl.col("size_bytes").sum(),
                                  pl.col("render_key").n_unique().alias("unique"))
            return tuple(pl.collect_all([per_episode, per_preset, totals]))

        per_episode, per_preset, totals = self._query(build)
        rows, total_bytes, unique = totals.row(0)
        avoided = None
        if run_log is not None:
            avoided = int(run_log.scan().select(pl.col("takes_deduped").sum()).collect().item())
        return IndexStats(
            parts=len(self.files()), rows=rows, unique_keys=unique, total_bytes=total_bytes or 0,
            by_episode=dict(zip(per_episode["episode"], per_episode["rows"], strict=True)),
            by_preset=dict(zip(per_preset["preset"], per_preset["rows"], strict=True)),
            bytes_by_episode=dict(zip(per_episode["episode"], per_episode["bytes"], strict=True)),
            rerendered=rows - unique, duplicates_avoided=avoided,
        )


def plan_compaction(parts: Sequence[tuple[str, int]], target_rows: int) -> list[list[str]]:
    """Groups of consecutive parts to merge, each of at most ``target_rows`` rows.

    Greedy in name order; groups of one are left alone. A merged file takes its first
    part's place in name order, so after a run every two neighbours together exceed
    the target and a second run finds no group: compaction is idempotent.
    """
    groups: list[list[str]] = []
    current: list[str] = []
    size = 0
    for path, rows in parts:
        if current and size + rows > target_rows:
            groups.append(current)
            current, size = [], 0
        current.append(path)
        size += rows
    if current:
        groups.append(current)
    return [g for g in groups if len(g) > 1]


def merged_name(first_part: str) -> str:
    """The name of a merged file: its first part's name (sort position) plus a marker."""
    stem = first_part.removesuffix(pio.PARQUET_SUFFIX).split("~", 1)[0]
    return f"{stem}{COMPACT_MARK}{uuid.uuid4().hex}{pio.PARQUET_SUFFIX}"


def _is_safe_relative(rel: str) -> bool:
    path = PurePosixPath(rel)
    return bool(rel) and not path.is_absolute() and ".." not in path.parts and "\\" not in rel


def _is_vanished(err: Exception) -> bool:
    """Whether ``err`` says a part disappeared (a concurrent compaction removed it)."""
    if isinstance(err, FileNotFoundError):
        return True
    text = str(err).lower()
    return "no such file" in text or "not found" in text or "does not exist" in text
