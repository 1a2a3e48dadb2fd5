"""The output index: one Parquet row per rendered take, and the dedup built on it.

The index is a folder of part files (see :mod:`tower.store.parquet_io`): appends never touch
existing files, so several flow runs and workers may append at once.

Compaction (:meth:`OutputIndex.compact`) follows the protocol of
:mod:`tower.store.compaction`: merged files list the parts they replace, readers skip
superseded parts, so a reader sees each row exactly once even while it runs. The
index's own queries rescan when a compaction removed a part they were about to read.

A damaged part (empty, truncated, another schema) is skipped by every query and listed
by :meth:`OutputIndex.unreadable`, so one bad file costs its own rows (dedup renders
them again), not the night; ``tower index check`` and ``tower index repair`` name and
quarantine it (:mod:`tower.store.integrity`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, TypeVar

import polars as pl
import pyarrow as pa
import pyarrow.fs as pafs

from tower.spec.keys import key_payload
from tower.spec.takes import ResolvedTake
from tower.store import compaction
from tower.store import parquet_io as pio
from tower.store.compaction import CompactResult, merged_name, plan_compaction
from tower.store.schemas import INDEX_SCHEMA

if TYPE_CHECKING:
    from tower.store.metrics import RunLog

__all__ = ["CompactResult", "DedupResult", "IndexRow", "IndexStats", "OutputIndex",
           "look_key", "merged_name", "plan_compaction"]

# ``models``: the look of a shot is its settings by name, so previews keep finding the
# look-alikes indexed before model identity.
_LOOK_DROP = ("seed", "take", "vae", "models")

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
    status: str | None = None  # the output check's "ok" | "suspect"; None: not checked
    suspect_reason: str | None = None
    name_key: str | None = None
    model_identity: str | None = None

    @classmethod
    def from_take(cls, take: ResolvedTake, *, output_path: str, sha256: str, size_bytes: int,
                  rendered_at: datetime, server: str, prompt_id: str, run_id: str,
                  status: str | None = None, suspect_reason: str | None = None) -> IndexRow:
        """The row saying ``take`` was rendered to ``output_path`` (relative to the render root),
        with the output check's verdict."""
        return cls(
            render_key=take.key, episode=take.episode, shot_id=take.shot_id, take=take.take,
            preset=take.preset, checkpoint=take.checkpoint, seed=take.seed, width=take.width,
            height=take.height, prompt=take.prompt, output_path=output_path, sha256=sha256,
            size_bytes=size_bytes, rendered_at=rendered_at, server=server, prompt_id=prompt_id,
            run_id=run_id, look_key=look_key(take), status=status,
            suspect_reason=suspect_reason, name_key=take.name_key,
            model_identity=identity_text(take),
        )

    def adopted_by(self, take: ResolvedTake) -> IndexRow:
        """This pre-identity row under ``take``'s identity key: the record that the image
        was accepted for the models ``take`` names (see :meth:`OutputIndex.dedup`)."""
        return replace(self, render_key=take.key, name_key=take.name_key,
                       model_identity=identity_text(take))


def identity_text(take: ResolvedTake) -> str | None:
    """``take.model_identity`` as the index stores it (JSON pairs), None when unknown."""
    if not take.model_identity:
        return None
    return json.dumps([list(pair) for pair in take.model_identity], ensure_ascii=False,
                      separators=(",", ":"))


@dataclass(frozen=True)
class DedupResult:
    """Takes split by whether their image exists or is still to render.

    Every take given lands in exactly one of ``rendered``, ``to_render`` and ``same_as``.
    ``to_render`` holds one take per render key, the first in input order; ``same_as``
    pairs each later take of such a key with that first take, whose image it shares (it
    is not rendered again). ``missing_files`` were indexed but their file is gone or has
    another size; they are also in ``to_render``. ``adopted`` are the rows, among
    ``rendered``'s, that serve a take with model identity from a row written before
    identity: appending them (:meth:`OutputIndex.append`) records the identity, so that
    old row is accepted once and a later model change re-renders the take.
    """

    rendered: list[tuple[ResolvedTake, IndexRow]]
    to_render: list[ResolvedTake]
    missing_files: list[ResolvedTake]
    same_as: list[tuple[ResolvedTake, ResolvedTake]] = field(default_factory=list)
    adopted: list[IndexRow] = field(default_factory=list)

    def served_paths(self) -> dict[str, str]:
        """Render key -> output path (relative to the render root) of every image reused.

        Keys served from the index point at their indexed file; keys shared inside the
        run point at the file the first take of the key is rendered to.
        """
        from tower.spec.outputs import take_output_path

        paths = {take.key: row.output_path for take, row in self.rendered}
        for _, first in self.same_as:
            paths.setdefault(first.key, take_output_path(first))
        return paths

    @property
    def deduplicated(self) -> int:
        """Takes that need no render of their own: served from the index or shared."""
        return len(self.rendered) + len(self.same_as)


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

    def listing(self) -> compaction.Listing:
        """The parts sorted into live, superseded and unreadable (footers cached)."""
        return compaction.listing(self.filesystem, self.root, INDEX_SCHEMA)

    def files(self) -> list[str]:
        """The live parts: every readable finished part not replaced by a compacted file."""
        return pio.paths(self.listing().live)

    def unreadable(self) -> list[pio.UnreadablePart]:
        """Parts every query skips because they cannot be read, each with the reason."""
        return self.listing().unreadable

    def scan(self) -> pl.LazyFrame:
        """Every row, lazily, with INDEX_SCHEMA's columns (a snapshot of the live parts)."""
        return pio.scan_files(self.filesystem, self.files(), INDEX_SCHEMA)

    def query(self, build: Callable[[pl.LazyFrame], T]) -> T:
        """Run ``build(scan)``, rescanning if a compaction removed a part meanwhile and
        reading around a part found damaged on the way (see
        :func:`tower.store.compaction.query_retrying`)."""
        return compaction.query_retrying(self.scan, build, self._diagnose)

    _query = query

    def _diagnose(self) -> list[pio.UnreadablePart]:
        """Read the live parts whole and mark the damaged ones (after a failed read)."""
        return pio.verify_fully(self.filesystem, self.listing().live, INDEX_SCHEMA)

    # --- dedup -------------------------------------------------------------------

    def dedup(self, takes: Sequence[ResolvedTake], render_root: Path | str | None = None,
              check_files: bool = True) -> DedupResult:
        """Split ``takes`` into already rendered, to render, and same image as another.

        A vectorised join of the takes' keys against the index. With ``check_files``, a
        hit only counts if its file still exists under ``render_root`` (default:
        ``renders`` next to the index folder) with the recorded size; otherwise the take
        is re-rendered and listed in ``missing_files``. When a key was indexed several
        times, the newest row wins. Takes sharing a key that is not rendered yet are
        rendered once: see :class:`DedupResult`.

        Model identity (see :mod:`tower.spec.keys`) adds two matches beside the key:

        * a take *with* identity whose key is not indexed takes a row written before
          identity (``render_key`` = the take's name key, no ``model_identity``), unless
          some row of that name key already records an identity: then the models
          changed since, and the take renders again. Such a hit is in ``adopted``.
        * a take *without* identity (``tower plan``, servers not asked) matches by name:
          its key, or any row whose ``name_key`` it is, whatever the identity recorded.
        """
        if not takes:
            return DedupResult([], [], [])
        wanted = pl.DataFrame(
            {"_i": range(len(takes)), "render_key": [t.key for t in takes]},
            schema={"_i": pl.Int64, "render_key": pl.String},
        ).with_columns(_first=pl.col("_i").min().over("render_key"))
        by_name = {t.name_key: t.key for t in takes if t.model_identity}
        plain = sorted({t.key for t in takes if not t.model_identity})
        exact = sorted(set(wanted["render_key"]))
        names = sorted(set(by_name) | set(plain))

        def build(index: pl.LazyFrame) -> pl.DataFrame:
            return index.filter(pl.col("render_key").is_in(exact + sorted(by_name))
                                | pl.col("name_key").is_in(names)).collect()

        latest = _matches(self._query(build), exact, plain, by_name)
        ok = self._files_ok(latest, render_root) if check_files else [True] * latest.height
        good = latest.filter(pl.Series(ok, dtype=pl.Boolean))
        gone = latest.filter(~pl.Series(ok, dtype=pl.Boolean)).select("render_key")
        return _split(takes, wanted, good, gone)

    def default_render_root(self) -> str:
        """``renders`` beside the index folder, as :class:`tower.store.files.DataRoot` lays out."""
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

    def compact(self, target_rows: int = compaction.DEFAULT_TARGET_ROWS) -> CompactResult:
        """Merge small parts into files of up to ``target_rows`` rows, keeping every row.

        Idempotent: a second run finds nothing to merge. See :mod:`tower.store.compaction`
        for why concurrent readers never see a row twice or miss one.
        """
        return compaction.compact_folder(self.filesystem, self.root, INDEX_SCHEMA, target_rows)

    def stats(self, run_log: RunLog | None = None) -> IndexStats:
        """Counts per episode and preset, bytes, re-renders; dedup savings from ``run_log``."""
        def build(index: pl.LazyFrame) -> tuple[pl.DataFrame, ...]:
            per_episode = index.group_by("episode").agg(
                pl.len().alias("rows"), pl.col("size_bytes").sum().alias("bytes")).sort("episode")
            per_preset = index.group_by("preset").agg(pl.len().alias("rows")).sort("preset")
            totals = index.select(pl.len().alias("rows"), pl.col("size_bytes").sum(),
                                  pl.col("render_key").n_unique().alias("unique"))
            return tuple(pl.collect_all([per_episode, per_preset, totals]))

        def snapshot() -> tuple[int, pl.LazyFrame]:
            files = self.files()
            return len(files), pio.scan_files(self.filesystem, files, INDEX_SCHEMA)

        parts, (per_episode, per_preset, totals) = compaction.query_retrying(
            snapshot, lambda snap: (snap[0], build(snap[1])), self._diagnose)
        rows, total_bytes, unique = totals.row(0)
        avoided = None
        if run_log is not None:
            avoided = int(run_log.query(lambda runs: runs.select(
                pl.col("takes_deduped").sum()).collect().item()))
        return IndexStats(
            parts=parts, rows=rows, unique_keys=unique, total_bytes=total_bytes or 0,
            by_episode=dict(zip(per_episode["episode"], per_episode["rows"], strict=True)),
            by_preset=dict(zip(per_preset["preset"], per_preset["rows"], strict=True)),
            bytes_by_episode=dict(zip(per_episode["episode"], per_episode["bytes"], strict=True)),
            rerendered=rows - unique, duplicates_avoided=avoided,
        )


def collapse_duplicates(takes: Sequence[ResolvedTake]) -> DedupResult:
    """Every take to render again (a forced re-render), yet each image only once.

    Takes sharing a render key within the run go to ``same_as``, exactly as
    :meth:`OutputIndex.dedup` places them; nothing is served from the index.
    """
    first: dict[str, ResolvedTake] = {}
    same_as = []
    for take in takes:
        if take.key in first:
            same_as.append((take, first[take.key]))
        else:
            first[take.key] = take
    return DedupResult(rendered=[], to_render=list(first.values()), missing_files=[],
                       same_as=same_as)


def _split(takes: Sequence[ResolvedTake], wanted: pl.DataFrame, good: pl.DataFrame,
           gone: pl.DataFrame) -> DedupResult:
    """Place each take (``wanted``: position, key, first position of the key).

    ``good`` holds the index row of every key whose image is on disk, ``gone`` the keys
    indexed but whose file is missing.
    """
    hits = wanted.join(good, on="render_key", how="inner").sort("_i")
    rendered, adopted, seen = [], [], set()
    for row in hits.drop("_first").iter_rows(named=True):
        take, was_old = takes[row.pop("_i")], row.pop("_adopted")
        indexed = IndexRow(**row)
        if was_old:
            indexed = indexed.adopted_by(take)
            if take.key not in seen:
                adopted.append(indexed)
                seen.add(take.key)
        rendered.append((take, indexed))
    good = good.drop("_adopted")
    rest = wanted.join(good.select("render_key"), on="render_key", how="anti").sort("_i")
    first = rest.filter(pl.col("_i") == pl.col("_first"))
    later = rest.filter(pl.col("_i") != pl.col("_first"))
    missing = first.join(gone, on="render_key", how="semi").sort("_i")
    return DedupResult(
        rendered=rendered,
        to_render=[takes[i] for i in first["_i"]],
        missing_files=[takes[i] for i in missing["_i"]],
        same_as=[(takes[i], takes[f])
                 for i, f in zip(later["_i"], later["_first"], strict=True)],
        adopted=adopted,
    )


def _matches(rows: pl.DataFrame, exact: list[str], plain: list[str],
             by_name: dict[str, str]) -> pl.DataFrame:
    """The newest row serving each wanted key, ``render_key`` set to the key it serves
    and ``_adopted`` true for a pre-identity row taken by a take with identity.

    ``exact``: every wanted key; ``plain``: the keys of takes without identity (name
    keys, matched against ``name_key`` too); ``by_name``: name key -> identity key of
    the takes with identity.
    """
    hits = rows.filter(pl.col("render_key").is_in(exact)).with_columns(_adopted=pl.lit(False))
    named = (rows.filter(pl.col("name_key").is_in(plain))
             .with_columns(render_key=pl.col("name_key"), _adopted=pl.lit(False)))
    recorded = set(rows.filter(pl.col("model_identity").is_not_null()
                               & pl.col("name_key").is_in(list(by_name)))["name_key"])
    fresh = {name: key for name, key in by_name.items() if name not in recorded}
    old = (rows.filter(pl.col("render_key").is_in(list(fresh))
                       & pl.col("model_identity").is_null())
           .with_columns(render_key=pl.col("render_key").replace_strict(fresh),
                         _adopted=pl.lit(True)))
    return (pl.concat([hits, named, old]).sort("rendered_at")
            .unique("render_key", keep="last", maintain_order=True))


def _is_safe_relative(rel: str) -> bool:
    path = PurePosixPath(rel)
    return bool(rel) and not path.is_absolute() and ".." not in path.parts and "\\" not in rel

