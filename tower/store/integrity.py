"""Integrity of a data root: what ``tower index check`` reports and ``tower index repair`` fixes.

The output index promises that a row's ``output_path`` under the render root holds an
image of ``size_bytes`` bytes and digest ``sha256``, and the stores promise readable part
files. :func:`check` compares those promises with the disk and returns an
:class:`IntegrityReport`, one :class:`Problem` per file:

* ``unreadable_part``: a part of the index, metrics or run log that readers skip (empty,
  truncated, another schema, damaged data).
* ``missing_file`` / ``wrong_size`` / ``wrong_sha256``: the *newest* row of a render key
  (the one dedup serves) points at a file that is gone or holds other bytes. Older rows
  of a key are history: a forced re-render appends a newer row and overwrites the image,
  so an older row's digest legitimately no longer matches, and is not a problem.
* ``duplicate_rows``: the same row stored more than once (every column equal). Several
  rows for one key with different ``rendered_at`` are re-renders, not duplicates.
* ``orphan_file``: a take image (``<episode>/<shot>/<shot>_tNN_<key12>.png``) that no row
  points at. Other files under the render root (contact sheets) are not takes.
* ``stale_temporary``: a hidden temporary older than ``grace``, left by a writer killed
  before its rename (a SIGKILLed flow); readers never look at it, repair deletes it.

:func:`repair` quarantines unreadable parts (moved under ``<store>/_quarantine/``, never
deleted), drops failing and duplicate rows by rewriting only the parts that hold them
(the compaction protocol, under the compaction lock), and adopts orphans whose full
render key is known from the shot lists given: a file name carries only 12 of the key's
64 hex digits, so a key is recovered only by a take of those lists whose output path is
exactly the file's (checked under every preset and both decode modes).

Safe while a flow runs: appends only add new parts, which a rewrite never touches;
hidden temporaries are only deleted once older than ``grace``; and a file modified less
than ``grace`` ago (default an hour) is not judged, since a batch writes its images
before its index rows and a forced re-render replaces an image before appending its new
row.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import polars as pl
import pyarrow as pa
import pyarrow.fs as pafs

from tower.shotlist.presets import Preset
from tower.shotlist.shots import ShotList
from tower.spec.outputs import take_output_path
from tower.spec.takes import ResolvedTake, resolve_takes
from tower.store import compaction
from tower.store import parquet_io as pio
from tower.store.files import DataRoot, UnsafePathError, inside
from tower.store.index import IndexRow, OutputIndex
from tower.store.metrics import MetricsStore, RunLog
from tower.store.schemas import INDEX_SCHEMA

DEFAULT_GRACE = timedelta(hours=1)
# Under the render root: images whose bytes no longer match their dropped row. Episode
# names start with a letter or digit, so this folder can never be an episode.
QUARANTINE = "_quarantine"
ADOPTED_RUN_ID = "index-repair"
ADOPTED_SERVER = "unknown"
TAKE_FILE = re.compile(r"^[^/]+/(?P<shot>[^/]+)/(?P=shot)_t\d{2,}_[0-9a-f]{12}\.png$")

Kind = Literal["unreadable_part", "missing_file", "wrong_size", "wrong_sha256",
               "duplicate_rows", "orphan_file", "stale_temporary"]
_FILE_KINDS = ("missing_file", "wrong_size", "wrong_sha256")


@dataclass(frozen=True)
class Problem:
    """One thing wrong, about one file (``path``, absolute)."""

    kind: Kind
    path: str
    detail: str
    render_key: str | None = None

    def line(self) -> str:
        return f"{self.kind}: {self.path}: {self.detail}"


@dataclass(frozen=True)
class IntegrityReport:
    """What :func:`check` found. ``young`` counts files left unjudged (modified within
    the grace period); the fields after ``problems`` are what :func:`repair` acts on."""

    data_root: str
    checked_at: datetime
    rows: int
    keys: int
    images: int
    hashed: bool
    young: int
    problems: tuple[Problem, ...]
    failing_rows: list[dict[str, Any]] = field(default_factory=list, repr=False)
    duplicated_rows: list[dict[str, Any]] = field(default_factory=list, repr=False)
    orphans: tuple[str, ...] = ()
    unreadable: tuple[tuple[str, pio.UnreadablePart], ...] = ()
    temporaries: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        """One line per problem, then a summary."""
        return [p.line() for p in self.problems] + [self.summary()]

    def summary(self) -> str:
        hashed = "sizes and sha256" if self.hashed else "sizes only"
        return (f"{len(self.problems)} problems: {self.rows} index rows, {self.keys} keys,"
                f" {self.images} take images checked ({hashed});"
                f" {self.young} files younger than the grace period not judged")

    def to_json(self) -> dict[str, Any]:
        return {"data_root": self.data_root, "checked_at": self.checked_at.isoformat(),
                "ok": self.ok, "rows": self.rows, "keys": self.keys, "images": self.images,
                "hashed": self.hashed, "young": self.young,
                "problems": [{"kind": p.kind, "path": p.path, "detail": p.detail,
                              "render_key": p.render_key} for p in self.problems]}


@dataclass(frozen=True)
class RepairResult:
    """What :func:`repair` did (``actions``) and what it could not do, with why."""

    actions: tuple[str, ...]
    unrepaired: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"actions": list(self.actions), "unrepaired": list(self.unrepaired)}


# --- checking -----------------------------------------------------------------------------


class _Files:
    """Stat and digest of render files, each read once per check."""

    def __init__(self, render_root: Path, hash_files: bool, cutoff: datetime):
        self.root = render_root
        self.hash_files = hash_files
        self.cutoff = cutoff.timestamp()
        self._stats: dict[str, os.stat_result | None] = {}
        self._digests: dict[str, str] = {}

    def path(self, relative: str) -> Path | None:
        try:
            return inside(self.root, relative)
        except UnsafePathError:
            return None

    def stat(self, relative: str) -> os.stat_result | None:
        if relative not in self._stats:
            path = self.path(relative)
            try:
                found = path.stat() if path is not None else None
            except OSError:
                found = None
            self._stats[relative] = found if found is None or _is_file(found) else None
        return self._stats[relative]

    def digest(self, relative: str) -> str:
        if relative not in self._digests:
            self._digests[relative] = sha256_of(self.root / relative)
        return self._digests[relative]

    def judge(self, row: Mapping[str, Any]) -> tuple[Kind, str] | Literal["ok", "young"]:
        """Whether ``row``'s file matches it; ``young`` when it changed too recently."""
        relative = row["output_path"]
        if self.path(relative) is None:
            return "missing_file", f"output_path {relative!r} leaves the render root"
        found = self.stat(relative)
        if found is None:
            return "missing_file", "no file"
        if found.st_mtime > self.cutoff:
            return "young"
        if found.st_size != row["size_bytes"]:
            return "wrong_size", f"{found.st_size} bytes, the row says {row['size_bytes']}"
        if self.hash_files:
            digest = self.digest(relative)
            if digest != row["sha256"]:
                return "wrong_sha256", f"sha256 {digest[:12]}…, the row says {row['sha256'][:12]}…"
        return "ok"


def _is_file(found: os.stat_result) -> bool:
    return stat.S_ISREG(found.st_mode)


def sha256_of(path: Path) -> str:
    """The hex sha256 of a file's bytes, as the index records it."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _stores(root: DataRoot) -> list[OutputIndex | MetricsStore | RunLog]:
    return [OutputIndex(root.index), MetricsStore(root.metrics), RunLog(root.runs)]


def check(root: DataRoot, *, now: datetime | None = None, grace: timedelta = DEFAULT_GRACE,
          hash_files: bool = True) -> IntegrityReport:
    """Compare the index and the stores with the disk; see the module docstring.

    Reads every row of the index, metrics and run log (so a part whose data, not only
    footer, is damaged is found too) and, with ``hash_files``, every indexed image.
    """
    now = now or datetime.now(UTC)
    files = _Files(root.renders.absolute(), hash_files, now - grace)
    index = OutputIndex(root.index)
    rows = index.query(lambda frame: frame.collect())
    problems: list[Problem] = []
    unreadable: list[tuple[str, pio.UnreadablePart]] = []
    for store in _stores(root):
        if not isinstance(store, OutputIndex):
            # A whole read: finds parts whose data, not only footer, is damaged.
            store.query(lambda frame: frame.collect())
        for bad in store.unreadable():
            unreadable.append((store.root, bad))
            problems.append(Problem("unreadable_part", bad.path, bad.reason))
    duplicated = _duplicates(rows, files.root)
    problems += [problem for problem, _ in duplicated]
    file_problems, failing = _file_problems(rows, files)
    problems += file_problems
    orphans, young_orphans, images = _orphans(files, set(rows["output_path"].to_list()))
    problems += [Problem("orphan_file", str(files.root / rel),
                         "take image without an index row") for rel in orphans]
    young = young_orphans + sum(
        1 for rel in set(rows["output_path"].to_list())
        if (found := files.stat(rel)) is not None and found.st_mtime > files.cutoff)
    temporaries = stale_temporaries(root, files.cutoff)
    problems += [Problem("stale_temporary", path, "left by a write that never finished")
                 for path in temporaries]
    return IntegrityReport(
        data_root=str(root.root), checked_at=now, rows=rows.height,
        keys=rows["render_key"].n_unique(), images=images, hashed=hash_files, young=young,
        problems=tuple(problems), failing_rows=failing,
        duplicated_rows=[row for _, row in duplicated], orphans=tuple(orphans),
        unreadable=tuple(unreadable), temporaries=tuple(temporaries))


def stale_temporaries(root: DataRoot, cutoff: float) -> list[str]:
    """Hidden temporaries last written before ``cutoff`` (a unix time) under the render
    root and the stores: an image (``.<name>.<hex>.tmp``) or a part (``.tmp-...``) whose
    writer was killed before its rename. A finished write never leaves one, and readers
    never look at them; younger ones may be a write in progress."""
    found = []
    for folder in (root.renders, root.index, root.metrics, root.runs):
        if not folder.is_dir():
            continue
        for path in folder.rglob(".*"):
            if not (path.name.endswith(".tmp") or path.name.startswith(pio.TMP_PREFIX)):
                continue
            try:
                if path.is_file() and path.stat().st_mtime <= cutoff:
                    found.append(str(path.absolute()))
            except OSError:
                continue    # renamed or removed meanwhile: a write that finished
    return sorted(found)


def _duplicates(rows: pl.DataFrame, render_root: Path) -> list[tuple[Problem, dict[str, Any]]]:
    """Rows stored more than once, one problem per distinct row."""
    copies = (rows.group_by(rows.columns, maintain_order=True).agg(pl.len().alias("_copies"))
              .filter(pl.col("_copies") > 1))
    found = []
    for row in copies.iter_rows(named=True):
        count = row.pop("_copies")
        found.append((Problem(
            "duplicate_rows", str(render_root / row["output_path"]),
            f"{count} identical rows for render key {row['render_key'][:12]}…"
            f" rendered at {row['rendered_at'].isoformat()}", row["render_key"]), row))
    return found


def _file_problems(rows: pl.DataFrame, files: _Files,
                   ) -> tuple[list[Problem], list[dict[str, Any]]]:
    """Problems of each key's newest rows, and every row to drop for them.

    When a key's newest row fails, its older rows are judged too: those that fail go
    with it (otherwise the next newest would fail the same way after a repair), those
    that pass stay and dedup serves them.
    """
    distinct = rows.unique(maintain_order=True)
    latest = pl.col("rendered_at").max().over("render_key")
    newest = distinct.filter(pl.col("rendered_at") == latest)
    problems, failing, bad_keys = [], [], set()
    for row in newest.iter_rows(named=True):
        verdict = files.judge(row)
        if isinstance(verdict, tuple):
            kind, detail = verdict
            path = files.path(row["output_path"]) or Path(row["output_path"])
            problems.append(Problem(kind, str(path), f"newest row of render key"
                                    f" {row['render_key'][:12]}…: {detail}", row["render_key"]))
            failing.append(row)
            bad_keys.add(row["render_key"])
    older = distinct.filter(pl.col("render_key").is_in(list(bad_keys))).join(
        newest, on=distinct.columns, how="anti", nulls_equal=True)
    failing += [row for row in older.iter_rows(named=True)
                if isinstance(files.judge(row), tuple)]
    return problems, failing


def _orphans(files: _Files, referenced: set[str]) -> tuple[list[str], int, int]:
    """Take images no row points at (relative paths), those too young to judge, and the
    number of take images seen. Hidden names (temporaries) are never looked at."""
    orphans, young, images = [], 0, 0
    if not files.root.is_dir():
        return [], 0, 0
    for folder, subfolders, names in os.walk(files.root):
        subfolders[:] = sorted(d for d in subfolders
                               if not d.startswith((".", QUARANTINE)))
        for name in sorted(names):
            if name.startswith("."):
                continue
            rel = (Path(folder) / name).relative_to(files.root).as_posix()
            if not TAKE_FILE.match(rel):
                continue
            images += 1
            if rel in referenced:
                continue
            found = files.stat(rel)
            if found is None:
                continue
            if found.st_mtime > files.cutoff:
                young += 1
            else:
                orphans.append(rel)
    return orphans, young, images


# --- repairing ----------------------------------------------------------------------------


def candidate_takes(shot_lists: Iterable[ShotList], presets: Mapping[str, Preset],
                    ) -> list[ResolvedTake]:
    """Every take the lists could have rendered: each shot at its own preset and at every
    preset (a ``--preset`` run), each with full and with tiled decode (the planner tiles
    takes no server can decode whole). The render key differs in each, and so does the
    output path, which ends in the key's first 12 hex digits."""
    found: dict[str, ResolvedTake] = {}
    for shot_list in shot_lists:
        for override in (None, *sorted(presets)):
            for take in resolve_takes(shot_list, presets, override):
                preset = presets.get(take.preset)
                tiled = take.with_tiled_decode(preset.vae_tile_size if preset
                                               else take.vae_tile_size)
                for variant in (take, tiled):
                    found.setdefault(variant.key, variant)
    return list(found.values())


def repair(root: DataRoot, report: IntegrityReport, *, takes: Sequence[ResolvedTake] = (),
           now: datetime | None = None, grace: timedelta = DEFAULT_GRACE) -> RepairResult:
    """Fix what ``report`` found that can be fixed; see the module docstring.

    ``takes`` are the candidates orphans are matched against (:func:`candidate_takes`).
    Each step re-checks its file just before acting, so a file a running flow fixed or
    wrote since the check is left alone.

    Raises:
        StoreError: a compaction holds a folder's lock (the message names it), or a part
            could not be written.
    """
    now = now or datetime.now(UTC)
    actions: list[str] = []
    unrepaired: list[str] = []
    _quarantine(report, actions, unrepaired)
    files = _Files(Path(root.renders).absolute(), report.hashed, now - grace)
    dropped = _drop_rows(OutputIndex(root.index), report, files, actions)
    _set_aside(OutputIndex(root.index), dropped, files, actions)
    _adopt(OutputIndex(root.index), report, files, takes, actions, unrepaired)
    _remove_temporaries(report, files.cutoff, actions)
    return RepairResult(tuple(actions), tuple(unrepaired))


def _remove_temporaries(report: IntegrityReport, cutoff: float, actions: list[str]) -> None:
    """Delete stale temporaries: never data (a finished write renames its temporary),
    only what a killed writer left. Re-checked first, so a live write is never touched."""
    for path in report.temporaries:
        target = Path(path)
        try:
            if target.stat().st_mtime > cutoff:
                continue
            target.unlink()
        except OSError:
            continue
        actions.append(f"removed {path} (a write that never finished)")


def _quarantine(report: IntegrityReport, actions: list[str], unrepaired: list[str]) -> None:
    """Move each unreadable part out of readers' sight (under its folder's lock)."""
    fs = pafs.LocalFileSystem()
    for store_root, bad in report.unreadable:
        folder = str(PurePosixPath(bad.path).parent)
        with compaction.folder_lock(fs, folder):
            if fs.get_file_info(bad.path).type != pafs.FileType.File:
                unrepaired.append(f"{bad.path}: gone since the check, nothing to quarantine")
                continue
            dest = compaction.quarantine(fs, store_root, bad.path)
        actions.append(f"quarantined {bad.path} -> {dest} ({bad.reason})")


def _identity(row: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(row[name] for name in INDEX_SCHEMA.names)


def _drop_rows(index: OutputIndex, report: IntegrityReport, files: _Files,
               actions: list[str]) -> list[dict[str, Any]]:
    """Rewrite the parts holding failing rows (all copies) or duplicates (all but one);
    returns the failing rows dropped."""
    failing = {_identity(row) for row in report.failing_rows}
    duplicated = {_identity(row) for row in report.duplicated_rows}
    removed: list[dict[str, Any]] = []
    if not failing and not duplicated:
        return removed
    keys = sorted({ident[0] for ident in failing | duplicated})
    with compaction.folder_lock(index.filesystem, index.root):
        found = index.listing()
        seen: set[tuple[Any, ...]] = set()
        for info in found.live:
            if not pl.scan_parquet(info.path).filter(pl.col("render_key").is_in(keys)).select(
                    pl.len()).collect().item():
                continue
            table = pio.read_parts(index.filesystem, [info.path], INDEX_SCHEMA)
            kept, dropped = [], []
            for row in table.to_pylist():
                ident = _identity(row)
                gone = ident in failing and isinstance(files.judge(row), tuple)
                if gone or (ident in duplicated and ident in seen):
                    dropped.append(row)
                    if gone:
                        removed.append(row)
                else:
                    seen.add(ident)
                    kept.append(row)
            if not dropped:
                continue
            dest = compaction.rewrite_part(
                index.filesystem, index.root, info.path, INDEX_SCHEMA,
                pa.Table.from_pylist(kept, schema=INDEX_SCHEMA), found.checks)
            for row in dropped:
                actions.append(f"dropped the row of {files.root / row['output_path']} (render key"
                               f" {row['render_key'][:12]}…, rendered at"
                               f" {row['rendered_at'].isoformat()}) from {info.path};"
                               f" {len(kept)} rows kept in {dest}")
    return removed


def _set_aside(index: OutputIndex, dropped: Sequence[Mapping[str, Any]], files: _Files,
               actions: list[str]) -> None:
    """Move the images of dropped rows that are there but hold other bytes to
    ``<render root>/_quarantine/`` (kept, out of the way): no row vouches for them any
    more, and the re-render writes the take's path afresh. An image another row still
    points at, or one rewritten since the check, stays."""
    if not dropped:
        return
    referenced = set(index.query(lambda frame: frame.select("output_path").collect())
                     ["output_path"].to_list())
    for rel in sorted({row["output_path"] for row in dropped}):
        found = files.stat(rel) if files.path(rel) is not None else None
        if found is None or rel in referenced or found.st_mtime > files.cutoff:
            continue
        source = files.root / rel
        dest = files.root / QUARANTINE / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, dest)
        actions.append(f"moved {source} -> {dest} (its bytes match no index row)")


def _adopt(index: OutputIndex, report: IntegrityReport, files: _Files,
           takes: Sequence[ResolvedTake], actions: list[str], unrepaired: list[str]) -> None:
    """Index each orphan whose path is exactly one candidate take's output path."""
    if not report.orphans:
        return
    by_path: dict[str, list[ResolvedTake]] = {}
    for take in takes:
        by_path.setdefault(take_output_path(take), []).append(take)
    referenced = set(index.query(lambda frame: frame.select("output_path").collect())
                     ["output_path"].to_list())
    rows = []
    for rel in report.orphans:
        path = files.root / rel
        matches = by_path.get(rel, [])
        found = files.stat(rel)
        if found is None or rel in referenced or found.st_mtime > files.cutoff:
            unrepaired.append(f"{path}: changed since the check (gone, indexed or rewritten);"
                              " left alone")
        elif not takes:
            unrepaired.append(f"{path}: not adopted: its name holds only 12 of the render"
                              " key's 64 digits; give the shot lists with --shot-list")
        elif not matches:
            unrepaired.append(f"{path}: not adopted: no take of the shot lists given has"
                              " this output path")
        elif len(matches) > 1:
            unrepaired.append(f"{path}: not adopted: {len(matches)} takes share this path"
                              f" ({', '.join(t.key[:16] for t in matches)})")
        else:
            rows.append(IndexRow.from_take(
                matches[0], output_path=rel, sha256=sha256_of(path), size_bytes=found.st_size,
                rendered_at=datetime.fromtimestamp(found.st_mtime, UTC),
                server=ADOPTED_SERVER, prompt_id="", run_id=ADOPTED_RUN_ID))
    part = index.append(rows)
    for row in rows:
        actions.append(f"adopted {files.root / row.output_path} as render key"
                       f" {row.render_key[:12]}… ({row.episode}/{row.shot_id} take"
                       f" {row.take}, {row.preset}) in {part}")
