"""``tower inspect FILE``: where a stored image came from, and whether the index agrees.

Prints the provenance written into the PNG (:mod:`tower.runtime.provenance`) and the
names of the other text chunks (ComfyUI's ``prompt`` and ``workflow``), then looks the
render key up in the output index: the index agrees when the key's newest row has the
file's sha256 and, for a file under the render root, the file's path. A copy outside the
render root (on a review machine) only needs the sha256. Exit code 1 when the file has
no provenance, cannot be read, or the index disagrees, so a script can sort copies.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import polars as pl
import typer

from tower.runtime.provenance import FIELDS, PngError, read_chunks
from tower.settings import DATA_ROOT_ENV, data_root_path
from tower.store.files import DEFAULT_DATA_ROOT, DataRoot
from tower.store.index import OutputIndex
from tower.store.parquet_io import StoreError


@dataclass(frozen=True)
class IndexVerdict:
    """What the index says of a file: ``agrees``, why (``reason``), and the row compared."""

    agrees: bool
    reason: str
    row: dict[str, Any] | None = None


def _relative_to(path: Path, root: Path) -> str | None:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return None


def index_verdict(path: Path, render_key: str, sha256: str, root: DataRoot) -> IndexVerdict:
    """Compare ``path`` (sha256 ``sha256``) with the newest index row of ``render_key``.

    Raises:
        StoreError: the index cannot be read.
    """
    rows = OutputIndex(root.index).query(
        lambda scan: scan.filter(pl.col("render_key") == render_key)
        .sort("rendered_at").collect())
    if rows.is_empty():
        return IndexVerdict(False, f"the index under {root.root} has no row for render key "
                                   f"{render_key}")
    newest = rows.row(-1, named=True)
    shown = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in newest.items()}
    relative = _relative_to(path, root.renders)
    if newest["sha256"] != sha256:
        older = sha256 in set(rows["sha256"])
        why = ("an older image of this render key: the index's newest row" if older
               else "the index's row") + f" has sha256 {newest['sha256']}, the file {sha256}"
        return IndexVerdict(False, why, shown)
    if relative is not None and relative != newest["output_path"]:
        return IndexVerdict(False, f"the index puts this image at {newest['output_path']}, "
                                   f"the file is at {relative}", shown)
    where = "" if relative is not None else f" (a copy of {newest['output_path']})"
    return IndexVerdict(True, f"the index agrees: sha256 and path match{where}", shown)


def inspect_command(
    file: Annotated[Path, typer.Argument(help="a PNG the pipeline stored")],
    data_root: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        "--data-root", show_default=False,
        help=f"data root folder (default ${DATA_ROOT_ENV}, else {DEFAULT_DATA_ROOT})")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print as JSON")] = False,
) -> None:
    """Print an image's provenance and whether the output index agrees (exit 1 if not)."""
    try:
        found = read_chunks(file)
        sha256 = hashlib.sha256(file.read_bytes()).hexdigest()
    except (PngError, OSError) as err:
        typer.echo(f"tower inspect: {err}", err=True)
        raise typer.Exit(1) from err
    fields = found.provenance
    root = DataRoot(data_root_path(data_root))
    if "render_key" not in fields:
        verdict = IndexVerdict(False, f"{file} carries no tower provenance")
    else:
        try:
            verdict = index_verdict(file, fields["render_key"], sha256, root)
        except StoreError as err:
            verdict = IndexVerdict(False, f"the index cannot be read: {err}")
    if as_json:
        typer.echo(json.dumps({
            "file": str(file), "sha256": sha256, "provenance": fields,
            "other_text_chunks": list(found.other_text), "index": {
                "agrees": verdict.agrees, "reason": verdict.reason, "row": verdict.row}},
            indent=2))
    else:
        typer.echo(f"{file}")
        ordered = [k for k in FIELDS if k in fields] + [k for k in fields if k not in FIELDS]
        width = max((len(k) for k in ordered), default=0)
        for key in ordered:
            typer.echo(f"  {key.ljust(width)}  {fields[key]}")
        typer.echo(f"  sha256 {sha256}")
        others = ", ".join(found.other_text) or "none"
        typer.echo(f"  other text chunks: {others}")
        if verdict.row and verdict.row.get("status"):
            reason = verdict.row.get("suspect_reason")
            typer.echo(f"  output check: {verdict.row['status']}"
                       + (f" ({reason})" if reason else ""))
        typer.echo(verdict.reason)
    if not verdict.agrees:
        raise typer.Exit(1)
