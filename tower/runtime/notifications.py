"""What the night's notifications say, and the event a server leaving rotation emits.

The notifications themselves are sent by the Prefect server (an automation per kind,
made by ``tower notify setup``), so the supervisor hears about a night that ended or a
server taken out of rotation even when the process that ran it has died. This module
holds the Prefect-free half: automation names, the custom event's name and fields, and
the Jinja templates the server fills in (``flow_run``, ``event`` are Prefect's template
context). The UI address is written into the templates at setup time because a
``prefect server start`` does not necessarily know the address it is reached under.
"""

from __future__ import annotations

from typing import Any

OUT_OF_ROTATION_EVENT = "tower.server.out-of-rotation"
SERVER_RESOURCE_PREFIX = "tower.server."
AUTOMATION_PREFIX = "tower: "
RUN_END_STATES = ("Completed", "Failed", "Cancelled", "Crashed")
DEFAULT_FLOW = "render-episode"
SUMMARY_KIND = "render"  # the summary artifact's key is ``render-<episode>`` (runs.py)


def scope(flow: str, deployment: str | None) -> str:
    """``render-episode`` or ``render-episode/nightly``: what an automation watches."""
    return f"{flow}/{deployment}" if deployment else flow


def run_ended_name(flow: str, deployment: str | None = None) -> str:
    """The run-ended automation's name; setup finds it again by this name."""
    return f"{AUTOMATION_PREFIX}{scope(flow, deployment)} run ended"


def out_of_rotation_name(flow: str, deployment: str | None = None) -> str:
    """The out-of-rotation automation's name; setup finds it again by this name."""
    return f"{AUTOMATION_PREFIX}{scope(flow, deployment)} server out of rotation"


def out_of_rotation_event(server: str, reason: str, flow_run_name: str | None,
                          flow_run_id: str | None) -> dict[str, Any]:
    """Arguments of ``emit_event`` for ``server`` leaving rotation.

    The server is the event's resource, so an automation can tell servers apart; the
    run is named in the payload too, so the message reads well even where Prefect
    cannot attach the run as a related resource.
    """
    return {
        "event": OUT_OF_ROTATION_EVENT,
        "resource": {"prefect.resource.id": f"{SERVER_RESOURCE_PREFIX}{server}",
                     "prefect.resource.name": server},
        "payload": {"server": server, "reason": reason, "flow_run": flow_run_name or "",
                    "flow_run_id": flow_run_id or ""},
    }


def _ui(ui_url: str) -> str:
    return ui_url.rstrip("/")


def run_ended_subject() -> str:
    return "Tower: {{ flow_run.name }} {{ flow_run.state.name }}"


def run_ended_body(ui_url: str) -> str:
    """Run name, final state, the state message (the counts and the failures, see
    ``flows.common.final_state``), a link to the run and one to its summary artifact,
    which embeds the contact sheet.

    The summary's key is ``render-<episode>``; the episode is the run name up to
    ``-<preset or nightly>-<date>`` (``flows.render_episode.nightly_run_name``).
    """
    ui = _ui(ui_url)
    episode = ("flow_run.name.rsplit('-' ~ (flow_run.parameters.preset or 'nightly') ~ '-', 1)"
               "[0] | lower | replace('_', '-') | replace('.', '-') | replace(' ', '-')")
    return (
        "{{ flow_run.name }} ended {{ flow_run.state.name }}.\n"
        "{{ flow_run.state.message or '' }}\n"
        f"Run: {ui}/runs/flow-run/{{{{ flow_run.id }}}}\n"
        f"Summary and contact sheet: {ui}/artifacts/key/{SUMMARY_KIND}-{{{{ {episode} }}}}\n"
    )


def out_of_rotation_subject() -> str:
    return "Tower: {{ event.payload.server }} out of rotation"


def out_of_rotation_body(ui_url: str) -> str:
    """The server, the reason and the run it happened in, with a link to that run."""
    ui = _ui(ui_url)
    return (
        "{{ event.payload.server }} is out of rotation: {{ event.payload.reason }}\n"
        "Run: {{ event.payload.flow_run }} "
        f"{ui}/runs/flow-run/{{{{ event.payload.flow_run_id }}}}\n"
    )
