"""``tower server start|stop|status`` and ``tower demo``: the local servers a new user needs.

State (PID files, logs, the Prefect database, the simulator's images) lives in
``.tower/`` under the current folder; renders, index and metrics in the data root.
Failures print one clear sentence and exit 1, never a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tower.cli.demo import DEMO_SHOT_LIST, DemoError, describe, run_demo
from tower.cli.local_server import (
    PREFECT_PORT,
    SIMULATOR_PORT,
    LocalServerError,
    ensure_prefect_server,
    ensure_simulator,
    server_status,
    stop_started_servers,
)

STATE_DIR = Path(".tower")

server_app = typer.Typer(help="The local Prefect server and ComfyUI simulator.",
                         no_args_is_help=True, add_completion=False)

StateOption = Annotated[Path, typer.Option("--state-dir", help="PID files, logs, databases")]
PrefectPort = Annotated[int, typer.Option("--prefect-port", help="Prefect server port")]
SimPort = Annotated[int, typer.Option("--sim-port", help="ComfyUI simulator port")]


def _exit_with(err: Exception) -> None:
    typer.echo(f"error: {err}", err=True)
    raise typer.Exit(1)


@server_app.command("start")
def start(state_dir: StateOption = STATE_DIR, prefect_port: PrefectPort = PREFECT_PORT,
          sim_port: SimPort = SIMULATOR_PORT) -> None:
    """Start the ComfyUI simulator and a Prefect server (reused when already running)."""
    try:
        sim_url = ensure_simulator(state_dir, port=sim_port)
        info = ensure_prefect_server(state_dir, port=prefect_port)
    except LocalServerError as err:
        _exit_with(err)
        return
    typer.echo(f"ComfyUI simulator: {sim_url}")
    how = "started" if info.started else "already running"
    typer.echo(f"Prefect server:    {info.url} ({how}); UI at {info.url.removesuffix('/api')}")
    typer.echo("Stop both with `tower server stop` (or `make stop`).")


@server_app.command("stop")
def stop(state_dir: StateOption = STATE_DIR) -> None:
    """Stop the servers that `tower server start` or `tower demo` started, nothing else."""
    stopped = stop_started_servers(state_dir)
    for name in stopped:
        typer.echo(f"stopped {name}")
    if not stopped:
        typer.echo("nothing to stop")


@server_app.command("status")
def status(state_dir: StateOption = STATE_DIR, prefect_port: PrefectPort = PREFECT_PORT,
           sim_port: SimPort = SIMULATOR_PORT) -> None:
    """Show whether each local server answers, and whether we started it."""
    for entry in server_status(state_dir, prefect_port=prefect_port, simulator_port=sim_port):
        state = "answering" if entry.answering else "not answering"
        owner = f", started by tower (pid {entry.pid})" if entry.pid else ""
        typer.echo(f"{entry.name}: {entry.url} {state}{owner}")


def demo(prefect_port: PrefectPort = PREFECT_PORT, sim_port: SimPort = SIMULATOR_PORT,
         shot_list: Annotated[Path, typer.Option("--shot-list", help="shot list to render")]
         = DEMO_SHOT_LIST) -> None:
    """Render the demo episode twice on the simulator and show where everything went."""
    try:
        report = run_demo(Path("."), typer.echo, shot_list=shot_list, prefect_port=prefect_port,
                          sim_port=sim_port)
    except (DemoError, LocalServerError) as err:
        _exit_with(err)
        return
    for line in describe(report):
        typer.echo(line)
