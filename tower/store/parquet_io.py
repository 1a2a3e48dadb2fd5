"""Crash-safe, append-only Parquet datasets: one new part file per write.

Both Parquet stores (the output index and the metrics/run logs) write through here, so
the crash-safety rules live in one place:

* A write is one new part file named ``part-<UTC timestamp>-<host>-<pid>-<uuid>.parquet``
  (parts written before the host was added lack it: ``part-<stamp>-<pid>-<uuid>``; both
  are read alike, since nothing parses a name beyond its prefix, suffix and the
  ``~compact-`` marker of merged files). It is written under a hidden temporary name
  (``.tmp-...``) in the same folder and then renamed; a crash leaves either the whole
  part or a hidden temporary that readers skip.
* Names never collide, so any number of processes, on any number of machines sharing
  the folder, may append at the same time without locks and without losing rows. The
  random uuid is what makes a name unique (pids repeat across machines and containers);
  the host and pid say which worker wrote a part, and the stamp first keeps name order
  time order.
* Readers list the folder and ignore hidden names (``.`` or ``_`` prefix) and anything
  that is not ``*.parquet``; :mod:`tower.store.compaction` merges small parts and tells
  readers which ones a merged file supersedes.
* A part that cannot be read (empty, truncated, not Parquet, another schema) must not
  stop every query of the store: :func:`check_parts` reads each listed part's footer and
  sets aside the bad ones as :class:`UnreadablePart` (path and reason), so readers read
  the rest and callers can name the bad files. Parts never change once renamed into
  place, so each verdict is cached by (path, size, mtime) and a footer is read once per
  process, not once per query.

Everything goes through a :class:`pyarrow.fs.FileSystem` (local by default), so a
dataset may live on any filesystem pyarrow supports.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import socket
import uuid
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, is_dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

PART_PREFIX = "part-"
PARQUET_SUFFIX = ".parquet"
TMP_PREFIX = ".tmp-"
COMPRESSION = "zstd"


class StoreError(RuntimeError):
    """A Parquet dataset could not be read or written; the message names the file."""


def resolve_location(
    path: Path | str, filesystem: pafs.FileSystem | None
) -> tuple[pafs.FileSystem, str]:
    """The filesystem and the path string to use on it (local paths made absolute)."""
    if filesystem is None:
        return pafs.LocalFileSystem(), Path(path).absolute().as_posix()
    return filesystem, str(path).rstrip("/")


def is_local(filesystem: pafs.FileSystem) -> bool:
    return isinstance(filesystem, pafs.LocalFileSystem)


# A host name as it may appear in a part name; longer names are cut (the uuid, not the
# host, makes a name unique).
HOST_MAX_CHARS = 40
_NOT_IN_HOST = re.compile(r"[^A-Za-z0-9.-]")


def safe_host(name: str) -> str:
    """``name`` fit for a file name: only ``[A-Za-z0-9.-]`` (anything else becomes ``-``),
    at most :data:`HOST_MAX_CHARS` characters, ``host`` when nothing is left."""
    return _NOT_IN_HOST.sub("-", name)[:HOST_MAX_CHARS] or "host"


@cache
def host_tag() -> str:
    """This machine's name as part names carry it; looked up once per process."""
    return safe_host(socket.gethostname())


def part_name(prefix: str = PART_PREFIX, now: datetime | None = None) -> str:
    """A part name unique across processes and machines: time, host, pid, random uuid."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{prefix}{stamp}-{host_tag()}-{os.getpid()}-{uuid.uuid4().hex}{PARQUET_SUFFIX}"


def is_data_file(name: str) -> bool:
    """True for a finished part; temporaries and hidden files are not data."""
    return name.endswith(PARQUET_SUFFIX) and not name.startswith((".", "_"))


def write_table_atomic(
    filesystem: pafs.FileSystem, dest: str, table: pa.Table,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write ``table`` to ``dest`` through a hidden temporary and one rename."""
    folder, name = dest.rsplit("/", 1)
    tmp = f"{folder}/{TMP_PREFIX}{name}"
    if metadata:
        merged = {**(table.schema.metadata or {}), **{k.encode(): v.encode()
                                                      for k, v in metadata.items()}}
        table = table.replace_schema_metadata(merged)
    try:
        filesystem.create_dir(folder, recursive=True)
        pq.write_table(table, tmp, filesystem=filesystem, compression=COMPRESSION)
        filesystem.move(tmp, dest)
    except (OSError, pa.ArrowException) as err:
        _delete_quietly(filesystem, tmp)
        raise StoreError(f"could not write {dest}: {err}") from err


def _delete_quietly(filesystem: pafs.FileSystem, path: str) -> None:
    with contextlib.suppress(OSError, pa.ArrowException):
        filesystem.delete_file(path)


def _entries(filesystem: pafs.FileSystem, folder: str) -> list[pafs.FileInfo]:
    """Everything directly in ``folder``; nothing if it is not a directory."""
    if filesystem.get_file_info(folder).type != pafs.FileType.Directory:
        return []
    return filesystem.get_file_info(pafs.FileSelector(folder, recursive=False))


def list_data_files(filesystem: pafs.FileSystem, folder: str) -> list[pafs.FileInfo]:
    """Finished parts directly in ``folder``, sorted by name; none if it does not exist."""
    found = _entries(filesystem, folder)
    return sorted((f for f in found if f.type == pafs.FileType.File and is_data_file(f.base_name)),
                  key=lambda f: f.base_name)


def stale_temporaries(filesystem: pafs.FileSystem, folder: str, older_than: timedelta,
                      now: datetime) -> list[str]:
    """Temporaries in ``folder`` last written before ``now - older_than``: crash leftovers.

    Younger ones may belong to a write in progress and are left alone.
    """
    found = _entries(filesystem, folder)
    cutoff = now - older_than
    return sorted(f.path for f in found
                  if f.type == pafs.FileType.File and f.base_name.startswith(TMP_PREFIX)
                  and f.mtime is not None and _aware(f.mtime) < cutoff)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def list_subfolders(filesystem: pafs.FileSystem, folder: str) -> list[str]:
    """Names of the visible sub-folders of ``folder`` (partitions), sorted."""
    found = _entries(filesystem, folder)
    return sorted(f.base_name for f in found
                  if f.type == pafs.FileType.Directory and not f.base_name.startswith((".", "_")))


def rows_to_table(rows: Sequence[Any] | pa.Table, schema: pa.Schema, what: str) -> pa.Table:
    """Dataclass rows (or a table) as a table of exactly ``schema``.

    Raises:
        StoreError: naming the column that is missing or has the wrong type.
    """
    if isinstance(rows, pa.Table):
        table = _fill_missing_nullable(rows, schema, what)
        try:
            return table.select(schema.names).cast(schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as err:
            raise StoreError(f"{what}: table does not match the schema: {err}") from err
    records = [_as_record(row) for row in rows]
    _check_aware(records, schema, what)
    try:
        return pa.Table.from_pylist(records, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as err:
        raise StoreError(f"{what}: rows do not match the schema: {err}") from err


def _check_aware(records: Sequence[Mapping[str, Any]], schema: pa.Schema, what: str) -> None:
    """Refuse naive datetimes: pyarrow would silently read them as UTC."""
    stamps = [f.name for f in schema if pa.types.is_timestamp(f.type)]
    for number, record in enumerate(records):
        for name in stamps:
            value = record.get(name)
            if isinstance(value, datetime) and value.tzinfo is None:
                raise StoreError(f"{what}: row {number}: {name} must be timezone-aware (UTC),"
                                 f" got {value.isoformat()}")


def _as_record(row: Any) -> dict[str, Any]:
    if is_dataclass(row) and not isinstance(row, type):
        return asdict(row)
    if isinstance(row, Mapping):
        return dict(row)
    raise StoreError(f"expected a row dataclass or mapping, got {type(row).__name__}")


def _fill_missing_nullable(table: pa.Table, schema: pa.Schema, what: str) -> pa.Table:
    for field in schema:
        if field.name in table.column_names:
            continue
        if not field.nullable:
            raise StoreError(f"{what}: column {field.name!r} is missing")
        table = table.append_column(field.name, pa.nulls(table.num_rows, field.type))
    return table


def check_not_null(table: pa.Table, schema: pa.Schema, what: str) -> None:
    """Refuse nulls in non-nullable columns (pyarrow does not check on construction)."""
    for field in schema:
        if not field.nullable and table.column(field.name).null_count:
            raise StoreError(f"{what}: column {field.name!r} must not be null")


def check_utc(table: pa.Table, what: str) -> None:
    """Refuse naive datetimes: every timestamp column must be UTC."""
    for field in table.schema:
        if pa.types.is_timestamp(field.type) and field.type.tz not in ("UTC", "+00:00"):
            raise StoreError(f"{what}: column {field.name!r} must be a UTC timestamp")


def empty_frame(schema: pa.Schema) -> pl.LazyFrame:
    """A lazy frame with no rows and the polars form of ``schema``."""
    return pl.from_arrow(schema.empty_table()).lazy()  # type: ignore[union-attr]


def scan_files(filesystem: pafs.FileSystem, files: Sequence[str],
               schema: pa.Schema) -> pl.LazyFrame:
    """A lazy scan of ``files``, columns in ``schema`` order.

    Local files go through polars' own reader (projection and predicate pushdown);
    other filesystems through a pyarrow dataset, which polars scans lazily as well.
    """
    if not files:
        return empty_frame(schema)
    if is_local(filesystem):
        frame = pl.scan_parquet(list(files), hive_partitioning=False,
                                schema=polars_schema(schema), missing_columns="insert",
                                extra_columns="ignore")
    else:
        dataset = ds.dataset(list(files), schema=schema, format="parquet",
                             filesystem=filesystem)
        frame = pl.scan_pyarrow_dataset(dataset)
    return frame.select(schema.names)


def polars_schema(schema: pa.Schema) -> pl.Schema:
    """The polars form of a pyarrow schema."""
    return pl.from_arrow(schema.empty_table()).schema  # type: ignore[union-attr]


def read_metadata(filesystem: pafs.FileSystem, path: str) -> pq.FileMetaData:
    """The footer of one part (row count, key-value metadata)."""
    try:
        with filesystem.open_input_file(path) as handle:
            return pq.read_metadata(handle)
    except (OSError, pa.ArrowException) as err:
        raise StoreError(f"could not read {path}: {err}") from err


def read_parts(filesystem: pafs.FileSystem, files: Sequence[str], schema: pa.Schema) -> pa.Table:
    """Several parts as one table of exactly ``schema``, read in one multi-threaded pass.

    Much cheaper per file than :func:`read_table` in a loop when the parts are small
    (one render batch each), which is what compaction reads.

    Raises:
        StoreError: a part could not be read (the message names the parts).
    """
    try:
        frame = scan_files(filesystem, files, schema).collect()
    except (OSError, pa.ArrowException, pl.exceptions.PolarsError) as err:
        raise StoreError(f"could not read the {len(files)} parts from {files[0]} to"
                         f" {files[-1]}: {err}") from err
    return rows_to_table(frame.to_arrow(), schema, f"parts from {files[0]}")


def paths(files: Iterable[pafs.FileInfo]) -> list[str]:
    return [f.path for f in files]


# --- unreadable parts ------------------------------------------------------------------

# Footer metadata key of a merged file listing the parts it replaces (see compaction).
REPLACES_KEY = "tower.replaces"
# Verdicts kept per process; past this many the cache starts again (a bound, not a tuning).
CHECK_CACHE_LIMIT = 200_000
CHECK_THREADS = 8


@dataclass(frozen=True)
class UnreadablePart:
    """A part file readers skip, and why (``path: reason`` as text)."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass(frozen=True)
class PartCheck:
    """What the footer of one part says: a reason it cannot be read (None when it can),
    its row count and the part names it replaces (merged files only)."""

    reason: str | None
    num_rows: int = 0
    replaces: frozenset[str] = frozenset()


_checked: dict[tuple[str, int | None, int | None, int], PartCheck] = {}
# Schemas seen, by id: holding them keeps an id from being reused by another schema, and
# an id is cheaper to hash than a schema.
_schemas: dict[int, pa.Schema] = {}


def _cache_key(info: pafs.FileInfo, schema: pa.Schema) -> tuple[str, int | None, int | None, int]:
    _schemas.setdefault(id(schema), schema)
    return info.path, info.size, info.mtime_ns, id(schema)


def check_part(filesystem: pafs.FileSystem, info: pafs.FileInfo, schema: pa.Schema) -> PartCheck:
    """The verdict on one listed part: readable under ``schema`` or not, and why.

    Reads only the footer (cached by path, size and mtime). A part missing a nullable
    column is readable (it predates the column); a missing required column or a column
    of another type is not, since the scan would fail on it.

    Raises:
        FileNotFoundError: the part vanished since it was listed (a compaction removed
            it): the caller should list again, not call the part unreadable.
    """
    key = _cache_key(info, schema)
    found = _checked.get(key)
    if found is not None:
        return found
    verdict = _check_footer(filesystem, info, schema)
    if len(_checked) >= CHECK_CACHE_LIMIT:
        _checked.clear()
    _checked[key] = verdict
    return verdict


def _check_footer(filesystem: pafs.FileSystem, info: pafs.FileInfo,
                  schema: pa.Schema) -> PartCheck:
    if info.size == 0:
        return PartCheck("empty file (0 bytes)")
    try:
        with filesystem.open_input_file(info.path) as handle:
            meta = pq.read_metadata(handle)
            found = meta.schema.to_arrow_schema()
    except (OSError, pa.ArrowException) as err:
        if filesystem.get_file_info(info.path).type == pafs.FileType.NotFound:
            raise FileNotFoundError(info.path) from err
        return PartCheck(f"not a readable Parquet file (truncated or damaged): {err}")
    reason = schema_mismatch(found, schema)
    if reason is not None:
        return PartCheck(reason, meta.num_rows)
    raw = (meta.metadata or {}).get(REPLACES_KEY.encode())
    try:
        replaced = frozenset(json.loads(raw)) if raw else frozenset()
    except (ValueError, TypeError) as err:
        return PartCheck(f"footer metadata {REPLACES_KEY} is not a JSON list: {err}",
                         meta.num_rows)
    return PartCheck(None, meta.num_rows, replaced)


def is_not_found(err: BaseException) -> bool:
    """Whether ``err`` says a file does not exist (pyarrow and polars word it in the
    message; "magic bytes not found" is a damaged file, not a missing one).

    A stale NFS file handle counts too: on a data root shared over NFS, a part that a
    compaction on another machine deletes while this one has it open reads as ``ESTALE``
    (a local disk keeps an open file readable), and the cure is the same: list again.
    """
    if isinstance(err, FileNotFoundError):
        return True
    if isinstance(err, OSError) and err.errno == errno.ESTALE:
        return True
    text = str(err).lower()
    if "magic bytes" in text:
        return False
    return ("no such file" in text or "not found" in text or "does not exist" in text
            or "stale file handle" in text)


_polars_types: dict[pa.Schema, pl.Schema] = {}


def schema_mismatch(found: pa.Schema, expected: pa.Schema) -> str | None:
    """Why a part of schema ``found`` cannot be scanned as ``expected`` (None if it can).

    Compares polars types, which is what the scan insists on; extra columns are ignored
    and missing nullable ones read as null, as :func:`scan_files` does.
    """
    if found.equals(expected):
        return None  # the usual case, and much cheaper than converting to polars types
    want = _polars_types.get(expected)
    if want is None:
        want = _polars_types.setdefault(expected, polars_schema(expected))
    try:
        have = polars_schema(found)
    except (pl.exceptions.PolarsError, pa.ArrowException, ValueError, TypeError) as err:
        return f"schema polars cannot read: {err}"
    problems, missing = [], []
    for field in expected:
        if field.name not in have:
            if not field.nullable:
                missing.append(field.name)
        elif have[field.name] != want[field.name]:
            problems.append(f"column {field.name!r} is {have[field.name]},"
                            f" expected {want[field.name]}")
    if missing:
        problems.append("required column" + ("s " if len(missing) > 1 else " ")
                        + ", ".join(repr(name) for name in missing) + " missing")
    return "wrong schema: " + "; ".join(problems) if problems else None


def check_parts(filesystem: pafs.FileSystem, infos: Sequence[pafs.FileInfo], schema: pa.Schema,
                ) -> tuple[list[tuple[pafs.FileInfo, PartCheck]], list[UnreadablePart]]:
    """``infos`` split into readable parts (with their footer facts) and unreadable ones.

    Raises:
        FileNotFoundError: a part vanished since it was listed (list again).
    """
    todo = [info for info in infos if _cache_key(info, schema) not in _checked]
    if len(todo) > 1:
        # Footers not seen yet (a fresh process): read them side by side; pyarrow
        # releases the GIL while reading, so this costs about one footer per thread.
        with ThreadPoolExecutor(min(CHECK_THREADS, len(todo))) as pool:
            list(pool.map(lambda info: check_part(filesystem, info, schema), todo))
    good, bad = [], []
    for info in infos:
        verdict = check_part(filesystem, info, schema)
        if verdict.reason is None:
            good.append((info, verdict))
        else:
            bad.append(UnreadablePart(info.path, verdict.reason))
    return good, bad


def verify_fully(filesystem: pafs.FileSystem, infos: Sequence[pafs.FileInfo],
                 schema: pa.Schema) -> list[UnreadablePart]:
    """Read each part whole; mark the ones whose data (not footer) is damaged.

    The footer check cannot see a damaged data page; this is what a store runs when a
    scan failed for another reason than a vanished part, to find the culprit and read
    around it from then on. Costs a full read, so it runs only after such a failure.
    """
    bad = []
    for info in infos:
        try:
            scan_files(filesystem, [info.path], schema).collect()
        except (OSError, pa.ArrowException, pl.exceptions.PolarsError) as err:
            if is_not_found(err):
                continue
            reason = f"data cannot be read: {err}"
            _checked[_cache_key(info, schema)] = PartCheck(reason)
            bad.append(UnreadablePart(info.path, reason))
    return bad


def forget_checks() -> None:
    """Drop every cached verdict (tests; a long-lived process after a manual fix)."""
    _checked.clear()
