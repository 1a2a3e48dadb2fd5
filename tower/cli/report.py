"""``tower report`` and ``tower status``: the daily report and the farm's state in a terminal.

The command bodies live here; :mod:`tower.cli` only registers them. The clock is read
here, at the edge, and passed into the report and status functions. ``tower report``
spells its window and presets options like the daily-report flow's parameters (from
:mod:`tower.cli.options`), so it reads the same as ``tower daily-report``, which runs
that flow. Nothing here imports Prefect.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Optional

import typer

from tower.cli.options import Day, PresetsFile, Since
from tower.comfyui import ComfyUIClient
from tower.report.build import build_report, write_report
from tower.report.data import ReportDataError
from tower.report.model import report_window
from tower.report.render import render_terminal
from tower.report.status import gather_status, render_status
from tower.shotlist.errors import InputError
from tower.shotlist.presets import load_presets
from tower.store.files import DEFAULT_DATA_ROOT, DataRoot

SERVERS_ENV = "TOWER_SERVERS"
STATUS_TIMEOUT_S = 5.0
STATUS_CONNECT_TIMEOUT_S = 2.0

DataRootOption = Annotated[Path, typer.Option("--data-root", envvar="TOWER_DATA_ROOT",
                                              help="the pipeline's data root")]


def report_command(
    day: Day = None,
    since: Since = None,
    data_root: DataRootOption = DEFAULT_DATA_ROOT,
    write: Annotated[bool, typer.Option("--write/--no-write",
                                        help="also write reports/<day>.md, .json and charts")]
    = False,
    presets_file: PresetsFile = None,
) -> None:
    """Print the performance report for the last 24 hours, one day, or since a day.

    The quick look: reads the data root, needs no Prefect, writes only with
    --write. `tower daily-report` runs the scheduled flow instead.
    """
    try:
        window = report_window(datetime.now(UTC), day, since)
        known = load_presets(Path(presets_file) if presets_file else None)
        data = DataRoot(data_root)
        report = build_report(data, window, known)
    except (ValueError, ReportDataError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    except InputError as err:
        for problem in err.problems:
            typer.echo(str(problem), err=True)
        raise typer.Exit(1) from None
    typer.echo(render_terminal(report))
    if write:
        files = write_report(report, data)
        typer.echo(f"Written: {files.markdown}, {files.json}")


def status_client(entry: str) -> ComfyUIClient:
    """A client for ``URL`` or ``name=URL`` (the name the flows record for that server)."""
    name, sep, url = entry.partition("=")
    if sep and "://" in url and "://" not in name:
        return ComfyUIClient(url.strip(), name=name.strip(), timeout=STATUS_TIMEOUT_S,
                             connect_timeout=STATUS_CONNECT_TIMEOUT_S)
    return ComfyUIClient(entry.strip(), timeout=STATUS_TIMEOUT_S,
                         connect_timeout=STATUS_CONNECT_TIMEOUT_S)


def status_command(
    server: Annotated[Optional[list[str]], typer.Option(  # noqa: UP045
        "--server", help="ComfyUI URL or name=URL (repeat for several; default: "
                         "$TOWER_SERVERS, comma-separated)")] = None,
    data_root: DataRootOption = DEFAULT_DATA_ROOT,
) -> None:
    """Servers reachable, queues, VRAM, loaded model, the last run, index size, dedup rate."""
    entries = server or [e.strip() for e in os.environ.get(SERVERS_ENV, "").split(",") if e.strip()]
    try:
        clients = [status_client(entry) for entry in entries]
    except ValueError as err:
        typer.echo(f"error: --server: {err}", err=True)
        raise typer.Exit(1) from None
    try:
        status = gather_status(clients, DataRoot(data_root), datetime.now(UTC))
    finally:
        for client in clients:
            client.close()
    typer.echo(render_status(status))
