"""``tower notify``: the automations that notify when a night ends or a server leaves rotation.

Prefect's own machinery sends the notifications (automations calling saved
notification blocks), so they go out from the server even when the render process
died; these commands only make, list and remove those automations. Prefect and the
Prefect layer are imported inside the command bodies, so ``tower`` starts without them.
Output names blocks and automations, never a block's URL (a webhook URL is a secret).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Optional

import typer

from tower.runtime.notifications import DEFAULT_FLOW

if TYPE_CHECKING:
    from tasks.automations import AutomationInfo

notify_app = typer.Typer(help="Notifications when a render ends or a server leaves rotation.",
                         no_args_is_help=True, add_completion=False)

FlowOption = Annotated[str, typer.Option("--flow", help="the flow whose runs notify")]
DeploymentOption = Annotated[Optional[str], typer.Option(  # noqa: UP045 (Typer needs it)
    "--deployment", help="only runs of this deployment (e.g. nightly); default: every run")]


def show_automations(found: list[AutomationInfo]) -> None:
    """One line per automation: what was done, its name and id, paused or not."""
    for automation in found:
        state = "" if automation.enabled else " (paused)"
        typer.echo(f"{automation.action}: {automation.name} [{automation.id}]{state}")


def _fail(err: Exception) -> None:
    typer.echo(f"tower notify: error: {err}", err=True)
    raise typer.Exit(1)


@notify_app.command("setup")
def setup(
    slack_block: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "--slack-block", help="name of a saved Slack Webhook block")] = None,
    email_block: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "--email-block", help="name of a saved SendGrid Email block")] = None,
    block: Annotated[Optional[list[str]], typer.Option(  # noqa: UP045
        "--block", help="any other notification block, as TYPE-SLUG/NAME "
                        "(e.g. custom-webhook/ops); repeatable")] = None,
    flow: FlowOption = DEFAULT_FLOW,
    deployment: DeploymentOption = None,
    ui_url: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "--ui-url", help="Prefect UI address for the links; default: from PREFECT_API_URL")
    ] = None,
) -> None:
    """Create or update the two automations (by name, so running it again is safe).

    One notifies when a run of the flow ends (Completed, Failed, Cancelled, Crashed):
    run name, state, the counts and failures, links to the run and its summary with
    the contact sheet. The other when a server is taken out of rotation: the server,
    the reason, the run.
    """
    wanted = [("slack-webhook", slack_block), ("sendgrid-email", email_block)]
    for spec in block or []:
        slug, _, name = spec.partition("/")
        if not slug or not name:
            raise typer.BadParameter(f"{spec!r} is not TYPE-SLUG/NAME", param_hint="'--block'")
        wanted.append((slug, name))
    wanted = [(slug, name) for slug, name in wanted if name]
    if not wanted:
        raise typer.BadParameter("name a notification block", param_hint="'--slack-block'")
    from tasks.notify import (
        NotifySetupError,
        find_block,
        setup_automations,
        ui_address,
    )

    try:
        blocks = [find_block(slug, name) for slug, name in wanted]
        done = setup_automations(blocks, flow, deployment, ui_address(ui_url))
    except NotifySetupError as err:
        _fail(err)
        return
    typer.echo("notifying: " + ", ".join(b.label for b in blocks))
    show_automations(done)


@notify_app.command("list")
def list_command() -> None:
    """Tower's automations on this Prefect server (notifications and the watchdog)."""
    from tasks.automations import list_automations

    found = list_automations()
    if not found:
        typer.echo("no tower notifications set up (tower notify setup --slack-block NAME)")
    show_automations(found)


@notify_app.command("remove")
def remove(flow: FlowOption = DEFAULT_FLOW, deployment: DeploymentOption = None) -> None:
    """Delete the automations setup made for the flow (and deployment)."""
    from tasks.notify import remove_automations

    removed = remove_automations(flow, deployment)
    if not removed:
        typer.echo("nothing to remove")
    show_automations(removed)
