"""Compaction of a folder of part files, shared by the output index and the daily stores.

Appends write one small part per call (see :mod:`tower.store.parquet_io`); compaction merges
them so readers open few files. The protocol keeps every reader exact at every instant:

* Small parts are merged into files named after their first part
  (``<first part>~compact-<uuid>.parquet``, so name order stays time order). Each merged
  file records, in its Parquet footer (``tower.replaces``), the names of the parts it
  replaces.
* The merged file is written (temp + rename) *before* those parts are deleted, and
  readers drop every part that some merged file replaces. Before the rename a reader
  sees the old parts; after it the merged file (the old parts, while they still exist,
  are skipped). So each row is seen exactly once.
* A crash between the rename and the deletes leaves superseded parts that readers skip
  and the next compaction deletes.
* A lock file (``_compact.lock``) in the folder stops two compactions merging the same
  parts; temporaries a crashed writer left more than an hour ago are cleared.
* Idempotent: a second run over an unchanged folder finds nothing to merge.

A lazy scan is a snapshot of the parts that existed when it was made; if a compaction
deletes one before it is collected, collecting fails. :func:`query_retrying` rescans
and runs the query again in that case.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import PurePosixPath
from typing import TypeVar

import polars as pl
import pyarrow as pa
import pyarrow.fs as pafs

from tower.store import parquet_io as pio

COMPACT_MARK = "~compact-"
REPLACES_KEY = pio.REPLACES_KEY
LOCK_NAME = "_compact.lock"
DEFAULT_TARGET_ROWS = 1_000_000
SCAN_RETRIES = 10
# A temporary this old is a crashed write's leftover, not a write in progress.
STALE_TEMPORARY = timedelta(hours=1)

S = TypeVar("S")
T = TypeVar("T")


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


NOTHING = CompactResult(0, 0, 0, (), 0)


def combine(results: Iterable[CompactResult]) -> CompactResult:
    """The sum of several folders' compactions (a daily store's partitions)."""
    total = NOTHING
    for r in results:
        total = CompactResult(
            total.parts_before + r.parts_before, total.parts_after + r.parts_after,
            total.rows + r.rows, total.merged + r.merged, total.removed + r.removed,
            total.stale_temporaries + r.stale_temporaries)
    return total


@dataclass(frozen=True)
class Listing:
    """A folder's finished parts: ``live`` ones a reader reads, ``superseded`` ones a
    merged file replaces, and ``unreadable`` ones readers skip (see
    :func:`tower.store.parquet_io.check_part`). ``checks`` holds each live part's footer
    facts by path."""

    live: list[pafs.FileInfo]
    superseded: list[pafs.FileInfo]
    unreadable: list[pio.UnreadablePart]
    checks: dict[str, pio.PartCheck]


def listing(filesystem: pafs.FileSystem, folder: str, schema: pa.Schema) -> Listing:
    """The folder's parts sorted into live, superseded and unreadable.

    Every part's footer is checked (cached per file, so a second listing reads none).
    A damaged merged file supersedes nothing: the parts it lists, if they still exist,
    stay live. A damaged part that a good merged file replaces is not reported: readers
    never read it and the next compaction deletes it. A part that vanishes while being
    checked (a compaction removed it) makes the listing start again.

    Raises:
        StoreError: the folder kept changing under every attempt.
    """
    for attempt in range(SCAN_RETRIES):
        found = pio.list_data_files(filesystem, folder)
        try:
            good, bad = pio.check_parts(filesystem, found, schema)
        except FileNotFoundError:
            time.sleep(min(0.2, 0.005 * 2 ** attempt))
            continue
        replaced: set[str] = set()
        for _, check in good:
            replaced |= check.replaces
        return Listing(
            live=[info for info, _ in good if info.base_name not in replaced],
            superseded=[f for f in found if f.base_name in replaced],
            unreadable=[u for u in bad if PurePosixPath(u.path).name not in replaced],
            checks={info.path: check for info, check in good})
    raise pio.StoreError(f"{folder}: parts kept vanishing while being listed")


def live_and_superseded(filesystem: pafs.FileSystem, folder: str, schema: pa.Schema,
                        ) -> tuple[list[pafs.FileInfo], list[pafs.FileInfo]]:
    """The folder's readable parts split into live ones and those a merged file replaces."""
    found = listing(filesystem, folder, schema)
    return found.live, found.superseded


def live_files(filesystem: pafs.FileSystem, folder: str, schema: pa.Schema) -> list[str]:
    """Paths of the parts a reader should read: every readable part not superseded."""
    return pio.paths(listing(filesystem, folder, schema).live)


def replaces(filesystem: pafs.FileSystem, path: str) -> set[str]:
    """The part names a merged file's footer says it replaces."""
    meta = pio.read_metadata(filesystem, path).metadata or {}
    raw = meta.get(REPLACES_KEY.encode())
    return set(json.loads(raw)) if raw else set()


def compact_folder(filesystem: pafs.FileSystem, folder: str, schema: pa.Schema,
                   target_rows: int = DEFAULT_TARGET_ROWS,
                   now: datetime | None = None) -> CompactResult:
    """Merge the small parts of ``folder`` into files of up to ``target_rows`` rows.

    Every row is kept; see the module docstring for why concurrent readers never see a
    row twice or miss one. A folder that does not exist is left alone.

    Raises:
        ValueError: ``target_rows`` below 1.
        StoreError: another compaction holds the folder's lock, or a file could not be
            read or written (naming it).
    """
    if target_rows < 1:
        raise ValueError("target_rows must be at least 1")
    if filesystem.get_file_info(folder).type == pafs.FileType.NotFound:
        return NOTHING
    with folder_lock(filesystem, folder):
        stale = pio.stale_temporaries(filesystem, folder, STALE_TEMPORARY,
                                      now or datetime.now(UTC))
        for path in stale:
            filesystem.delete_file(path)
        found = listing(filesystem, folder, schema)
        live = found.live
        removed = _delete(filesystem, pio.paths(found.superseded))
        counts = [(f.path, found.checks[f.path].num_rows) for f in live]
        groups = plan_compaction(counts, target_rows)
        merged = []
        for group in groups:
            merged.append(_merge(filesystem, folder, group, schema, found.checks))
            removed += _delete(filesystem, group)
    after = len(live) - sum(len(g) for g in groups) + len(groups)
    return CompactResult(len(live), after, sum(n for _, n in counts), tuple(merged), removed,
                         len(stale))


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


def _merge(filesystem: pafs.FileSystem, folder: str, group: Sequence[str],
           schema: pa.Schema, checks: dict[str, pio.PartCheck]) -> str:
    """Write the rows of ``group`` as one merged file listing every part it replaces."""
    dest = f"{folder}/{merged_name(PurePosixPath(group[0]).name)}"
    pio.write_table_atomic(filesystem, dest, pio.read_parts(filesystem, group, schema),
                           metadata={REPLACES_KEY: json.dumps(_replaced_by(group, checks))})
    return dest


def _replaced_by(group: Sequence[str], checks: dict[str, pio.PartCheck]) -> list[str]:
    """The names a file taking the place of ``group`` must list: the parts themselves and,
    for merged ones, what they replaced (those may still linger after a crash)."""
    replaced: set[str] = set()
    for path in group:
        replaced.add(PurePosixPath(path).name)
        replaced |= checks[path].replaces
    return sorted(replaced)


def rewrite_part(filesystem: pafs.FileSystem, folder: str, path: str, schema: pa.Schema,
                 table: pa.Table, checks: dict[str, pio.PartCheck]) -> str:
    """Replace the live part ``path`` with a file holding ``table`` (its rows, some removed).

    The compaction protocol with a group of one: the new file takes the part's place in
    name order and lists it (and what it replaced) in its footer, is renamed into place,
    and only then is the part deleted, so a reader sees either the old rows or the new
    ones, never both and never neither. Call it under :func:`folder_lock`.
    """
    dest = f"{folder}/{merged_name(PurePosixPath(path).name)}"
    pio.write_table_atomic(filesystem, dest, pio.rows_to_table(table, schema, dest),
                           metadata={REPLACES_KEY: json.dumps(_replaced_by([path], checks))})
    _delete(filesystem, [path])
    return dest


QUARANTINE = "_quarantine"


def quarantine(filesystem: pafs.FileSystem, store_root: str, path: str) -> str:
    """Move the part ``path`` (under ``store_root``) to ``<store_root>/_quarantine/``.

    The folder name starts with ``_``, so readers and compaction never look inside it;
    the part keeps its folder below the store root (``date=...`` for daily stores) and
    its name, so it can be inspected or put back by hand. Nothing is deleted.
    """
    relative = PurePosixPath(path).relative_to(store_root)
    dest = f"{store_root}/{QUARANTINE}/{relative}"
    filesystem.create_dir(str(PurePosixPath(dest).parent), recursive=True)
    filesystem.move(path, dest)
    return dest


def _delete(filesystem: pafs.FileSystem, files: Sequence[str]) -> int:
    for path in files:
        with contextlib.suppress(FileNotFoundError):
            filesystem.delete_file(path)
    return len(files)


@contextlib.contextmanager
def folder_lock(filesystem: pafs.FileSystem, folder: str) -> Iterator[None]:
    """An exclusive compaction lock on ``folder`` (atomic create on local disks).

    Raises:
        StoreError: the lock is held; the message names the lock file.
    """
    filesystem.create_dir(folder, recursive=True)
    lock = f"{folder}/{LOCK_NAME}"
    held = pio.StoreError(f"another compaction holds {lock}; if none is running, delete it")
    if pio.is_local(filesystem):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            raise held from None
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
    elif filesystem.get_file_info(lock).type != pafs.FileType.NotFound:
        raise held
    else:
        with filesystem.open_output_stream(lock) as out:
            out.write(str(os.getpid()).encode())
    try:
        yield
    finally:
        filesystem.delete_file(lock)


def query_retrying(scan: Callable[[], S], build: Callable[[S], T],
                   diagnose: Callable[[], list[pio.UnreadablePart]] | None = None) -> T:
    """``build(scan())``, scanning again if a compaction removed a part meanwhile.

    ``scan`` lists the live parts (reading merged files' footers) and opens them lazily:
    everything that touches the folder belongs inside it, since a part or a merged file
    listed a moment ago may be gone by the time it is read.

    A read that fails for another reason may be a part whose footer is fine but whose
    data is damaged: ``diagnose`` then reads the live parts whole and marks the damaged
    ones unreadable, and the query runs again without them (once). Any other error
    (a mistake in ``build``) is raised as it came.
    """
    diagnosed = diagnose is None
    for attempt in range(SCAN_RETRIES):
        try:
            return build(scan())
        except (OSError, pa.ArrowException, pl.exceptions.PolarsError, pio.StoreError) as err:
            if is_vanished(err) and attempt < SCAN_RETRIES - 1:
                time.sleep(min(0.2, 0.005 * 2 ** attempt))
                continue
            if not diagnosed and diagnose is not None and diagnose():
                diagnosed = True
                continue
            raise
    raise AssertionError("unreachable")


def is_vanished(err: BaseException) -> bool:
    """Whether ``err`` says a part disappeared (a concurrent compaction removed it)."""
    return pio.is_not_found(err)
