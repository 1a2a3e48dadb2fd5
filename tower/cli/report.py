"""``tower report`` and ``tower status``: the daily report and the farm's state in a terminal.

The command bodies live here; :mod:`tower.cli` only registers them. The clock is read
here, at the edge, and passed into the report and status functions. ``tower report``
spells its window and presets options like the daily-report flow's parameters (from
:mod:`tower.cli.options`), so it reads the same as ``tower daily-report``, which runs
that flow. Nothing here imports Prefect.
"""

from __future__ import annotations

from contextlib import ExitStack
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
from tower.settings import (
    DATA_ROOT_ENV,
    SERVERS_ENV,
    data_root_path,
    parse_server_entry,
    server_entries,
)
from tower.shotlist.errors import InputError
from tower.shotlist.presets import load_presets
from tower.store.files import DEFAULT_DATA_ROOT, DataRoot

STATUS_TIMEOUT_S = 5.0
STATUS_CONNECT_TIMEOUT_S = 2.0

DataRootOption = Annotated[Optional[Path], typer.Option(  # noqa: UP045
    "--data-root", show_default=False,
    help=f"the pipeline's data root (default ${DATA_ROOT_ENV}, else {DEFAULT_DATA_ROOT})")]


def report_command(
    day: Day = None,
    since: Since = None,
    data_root: DataRootOption = None,
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
        data = DataRoot(data_root_path(data_root))
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
    """A client for ``URL`` or ``name=URL``, named as the flows name that server.

    Raises:
        ValueError: a malformed entry, a bad URL, or a saved block's name (loading a
            block needs Prefect, which ``tower status`` does without).
    """
    parsed = parse_server_entry(entry)
    if parsed.url is None:
        raise ValueError(f"{parsed.block!r}: expected a URL or name=URL (saved blocks are "
                         "not read here)")
    return ComfyUIClient(parsed.url, name=parsed.name, timeout=STATUS_TIMEOUT_S,
                         connect_timeout=STATUS_CONNECT_TIMEOUT_S)


def status_command(
    server: Annotated[Optional[list[str]], typer.Option(  # noqa: UP045
        "--server", help="ComfyUI URL or name=URL (repeat for several; default: "
                         f"${SERVERS_ENV}, comma-separated)")] = None,
    data_root: DataRootOption = None,
) -> None:
    """Servers reachable, queues, VRAM, loaded model, the last run, index size, dedup rate."""
    where = "--server" if server else f"${SERVERS_ENV}"
    with ExitStack() as clients_open:  # closes the clients made before a bad entry too
        try:
            clients = [clients_open.enter_context(status_client(entry))
                       for entry in server_entries(server)]
        except ValueError as err:
            typer.echo(f"error: {where}: {err}", err=True)
            raise typer.Exit(1) from None
        status = gather_status(clients, DataRoot(data_root_path(data_root)), datetime.now(UTC))
    typer.echo(render_status(status))
