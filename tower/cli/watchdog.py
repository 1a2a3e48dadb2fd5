"""``tower watchdog``: crash flow runs whose process or machine died, re-run the nightly.

The automations run on the Prefect server (:mod:`tasks.watchdog`), so they act when a
worker machine dies outright; these commands only make, list and remove them. Prefect
is imported inside the command bodies, so ``tower`` starts without it.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from tower.cli.notify import show_automations
from tower.runtime.watchdog import DEFAULT_SILENCE_S, check_silence

watchdog_app = typer.Typer(help="Crash runs whose worker died; re-run the nightly.",
                           no_args_is_help=True, add_completion=False)


@watchdog_app.command("setup")
def setup(
    silence: Annotated[int, typer.Option(
        "--silence", help="seconds without a heartbeat after which a run counts as dead")
    ] = DEFAULT_SILENCE_S,
    heartbeat: Annotated[Optional[int], typer.Option(  # noqa: UP045 (Typer needs it)
        "--heartbeat", help="the workers' PREFECT_FLOWS_HEARTBEAT_FREQUENCY, if not "
                            "Prefect's default 180")] = None,
    rerun: Annotated[Optional[list[str]], typer.Option(  # noqa: UP045
        "--rerun", help="deployment to start again after a silent run, as FLOW/DEPLOYMENT "
                        "(e.g. render-episode/nightly); repeatable")] = None,
) -> None:
    """Create or update the watchdog (by name, so running it again is safe).

    A tower flow run that sent heartbeats and then nothing for --silence seconds is set
    Crashed, which frees its deployment's concurrency slot and its ComfyUI slots. Runs
    of a --rerun deployment are then started again with the deployment's parameters;
    the new run renders only what is missing.
    """
    try:
        check_silence(silence, heartbeat)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="'--silence'") from None
    from tasks.watchdog import WatchdogSetupError, find_deployment, setup_watchdog

    try:
        deployments = [find_deployment(name) for name in rerun or []]
    except WatchdogSetupError as err:
        typer.echo(f"tower watchdog: error: {err}", err=True)
        raise typer.Exit(1) from None
    show_automations(setup_watchdog(silence, deployments))


@watchdog_app.command("list")
def list_command() -> None:
    """The watchdog's automations on this Prefect server."""
    from tasks.watchdog import watchdog_automations

    found = watchdog_automations()
    if not found:
        typer.echo("no watchdog set up (tower watchdog setup --rerun render-episode/nightly)")
    show_automations(found)


@watchdog_app.command("remove")
def remove() -> None:
    """Delete the watchdog's automations."""
    from tasks.watchdog import remove_watchdog

    removed = remove_watchdog()
    if not removed:
        typer.echo("nothing to remove")
    show_automations(removed)
