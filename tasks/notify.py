"""Prefect automations that send the night's notifications through notification blocks.

The Prefect server, not the render process, sends them: its triggers service sees a
``render-episode`` run end (or ``tower.server.out-of-rotation``, emitted by the
dispatcher) and its actions service fills in the template and calls the saved block
(a Slack webhook, an e-mail block, any Prefect notification block). A run killed
outright still reaches Crashed on the server, and so still notifies.

Setup is idempotent (:mod:`tasks.automations`): running it twice, or again with other
blocks, leaves one automation of each kind.
Block URLs are secrets; nothing here reads them (block documents are read without
secrets) and nothing returned holds them.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.events.actions import SendNotification
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_UI_URL

from tasks.automations import AutomationInfo, delete_automations, upsert_automations
from tower.runtime.notifications import (
    OUT_OF_ROTATION_EVENT,
    RUN_END_STATES,
    SERVER_RESOURCE_PREFIX,
    out_of_rotation_body,
    out_of_rotation_name,
    out_of_rotation_subject,
    run_ended_body,
    run_ended_name,
    run_ended_subject,
)


class NotifySetupError(RuntimeError):
    """Setup cannot go ahead (a block not found, no UI address); the message says why."""


@dataclass(frozen=True)
class BlockRef:
    """A saved notification block: its type slug, name and document id."""

    slug: str
    name: str
    id: UUID

    @property
    def label(self) -> str:
        return f"{self.slug}/{self.name}"


def find_block(slug: str, name: str) -> BlockRef:
    """The notification block ``slug/name``, read without its secrets.

    Raises:
        NotifySetupError: no such block, or it cannot send notifications.
    """
    with get_client(sync_client=True) as client:
        try:
            document = client.read_block_document_by_name(name, slug, include_secrets=False)
        except ObjectNotFound:
            raise NotifySetupError(f"no {slug} block named {name!r} on this Prefect server; "
                                   "save one first (UI: Blocks, or Block.save())") from None
    schema = document.block_schema
    if schema is not None and "notify" not in (schema.capabilities or []):
        raise NotifySetupError(f"block {slug}/{name} cannot send notifications")
    return BlockRef(slug, name, document.id)


def ui_address(ui_url: str | None) -> str:
    """The UI address to link to: the one given, else Prefect's (from PREFECT_API_URL)."""
    address = ui_url or PREFECT_UI_URL.value()
    if not address:
        raise NotifySetupError("the Prefect UI address is unknown: set PREFECT_API_URL to "
                               "the server (or give --ui-url)")
    return str(address)


def _related(flow: str, deployment: str | None) -> list[dict[str, str]]:
    related = [{"prefect.resource.role": "flow", "prefect.resource.name": flow}]
    if deployment:
        related.append({"prefect.resource.role": "deployment",
                        "prefect.resource.name": deployment})
    return related


def _notifications(blocks: list[BlockRef], subject: str, body: str) -> list[SendNotification]:
    return [SendNotification(block_document_id=b.id, subject=subject, body=body)
            for b in blocks]


def desired_automations(blocks: list[BlockRef], flow: str, deployment: str | None,
                        ui_url: str) -> list[AutomationCore]:
    """The two automations: a run of ``flow`` ended; a server left rotation in one."""
    related = _related(flow, deployment)
    run_ended = AutomationCore(
        name=run_ended_name(flow, deployment),
        description="Tower: a render run ended; sends its counts, failures and links.",
        trigger=EventTrigger(
            expect={f"prefect.flow-run.{state}" for state in RUN_END_STATES},
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related=related,
            for_each={"prefect.resource.id"},
            posture=Posture.Reactive, threshold=1, within=0),
        actions=_notifications(blocks, run_ended_subject(), run_ended_body(ui_url)),
    )
    out_of_rotation = AutomationCore(
        name=out_of_rotation_name(flow, deployment),
        description="Tower: a ComfyUI server was taken out of rotation during a render.",
        trigger=EventTrigger(
            expect={OUT_OF_ROTATION_EVENT},
            match={"prefect.resource.id": f"{SERVER_RESOURCE_PREFIX}*"},
            match_related=related,
            for_each={"prefect.resource.id"},
            posture=Posture.Reactive, threshold=1, within=0),
        actions=_notifications(blocks, out_of_rotation_subject(),
                               out_of_rotation_body(ui_url)),
    )
    return [run_ended, out_of_rotation]


def setup_automations(blocks: list[BlockRef], flow: str, deployment: str | None,
                      ui_url: str) -> list[AutomationInfo]:
    """Create or update the two automations (found again by name)."""
    return upsert_automations(desired_automations(blocks, flow, deployment, ui_url))


def remove_automations(flow: str, deployment: str | None) -> list[AutomationInfo]:
    """Delete the automations setup made for ``flow`` (and ``deployment``)."""
    return delete_automations([run_ended_name(flow, deployment),
                               out_of_rotation_name(flow, deployment)])
