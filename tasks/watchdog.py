"""The watchdog's Prefect automations: crash runs that went silent, re-run the nightly.

Prefect's own machinery does the work (its triggers service watches the flow-run
heartbeat events; :mod:`tower.runtime.watchdog` says why), so it works whichever worker
machine died; these functions only make, list and remove the automations.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState, RunDeployment
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
from prefect.exceptions import ObjectNotFound

from tasks.automations import (
    AutomationInfo,
    delete_automations,
    list_automations,
    upsert_automations,
)
from tower.runtime.notifications import RUN_END_STATES
from tower.runtime.watchdog import (
    RERUN_PREFIX,
    SILENT_RUNS_NAME,
    WATCHED_TAG,
    crash_message,
    rerun_name,
)

END_EVENTS = tuple(f"prefect.flow-run.{state}" for state in RUN_END_STATES)


class WatchdogSetupError(RuntimeError):
    """Setup cannot go ahead (a deployment not found); the message says why."""


@dataclass(frozen=True)
class DeploymentRef:
    """A deployment to re-run: ``flow/deployment`` and its id."""

    name: str
    id: UUID


def find_deployment(name: str) -> DeploymentRef:
    """The deployment ``flow-name/deployment-name`` on this Prefect server.

    Raises:
        WatchdogSetupError: no such deployment (``prefect deploy --all`` makes them).
    """
    if "/" not in name:
        raise WatchdogSetupError(f"{name!r}: name a deployment as FLOW/DEPLOYMENT, "
                                 "e.g. render-episode/nightly")
    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(name)
        except ObjectNotFound:
            raise WatchdogSetupError(f"no deployment {name!r} on this Prefect server; "
                                     "run `prefect deploy --all` first") from None
    return DeploymentRef(name, deployment.id)


def _silent_trigger(silence_s: int, related: dict[str, str]) -> EventTrigger:
    """Fires once per flow run that sent a heartbeat and then nothing for ``silence_s``."""
    return EventTrigger(after={"prefect.flow-run.heartbeat"},
                        expect={"prefect.flow-run.heartbeat", *END_EVENTS},
                        match={"prefect.resource.id": "prefect.flow-run.*"},
                        match_related=related, for_each={"prefect.resource.id"},
                        posture=Posture.Proactive, threshold=1,
                        within=timedelta(seconds=silence_s))


def _crash(silence_s: int) -> ChangeFlowRunState:
    return ChangeFlowRunState(state=StateType.CRASHED, name="Crashed",
                              message=crash_message(silence_s))


def desired_watchdog(silence_s: int, reruns: list[DeploymentRef]) -> list[AutomationCore]:
    """Crash every silent tower run; for each of ``reruns``, crash and start it again.

    The re-run uses the deployment's own parameters, i.e. exactly the scheduled night's.
    It is an action of the same automation, after the crash, so the dead run has given
    back the deployment's concurrency slot by the time the new one asks for it.
    """
    tag = {"prefect.resource.role": "tag", "prefect.resource.id": f"prefect.tag.{WATCHED_TAG}"}
    wanted = [AutomationCore(
        name=SILENT_RUNS_NAME,
        description="Tower watchdog: a flow run that stopped sending heartbeats (its "
                    "process or machine died) is set Crashed.",
        trigger=_silent_trigger(silence_s, tag), actions=[_crash(silence_s)])]
    for deployment in reruns:
        related = {"prefect.resource.role": "deployment",
                   "prefect.resource.id": f"prefect.deployment.{deployment.id}"}
        wanted.append(AutomationCore(
            name=rerun_name(deployment.name),
            description=f"Tower watchdog: a silent run of {deployment.name} is set Crashed "
                        "and the deployment run again; the new run renders only what is "
                        "missing.",
            trigger=_silent_trigger(silence_s, related),
            actions=[_crash(silence_s),
                     RunDeployment(source="selected", deployment_id=deployment.id)]))
    return wanted


def setup_watchdog(silence_s: int, reruns: list[DeploymentRef]) -> list[AutomationInfo]:
    """Create or update the watchdog's automations; re-runs no longer asked for go."""
    done = upsert_automations(desired_watchdog(silence_s, reruns))
    keep = {info.name for info in done}
    stale = [a.name for a in list_automations(RERUN_PREFIX) if a.name not in keep]
    return done + delete_automations(stale)


def watchdog_automations() -> list[AutomationInfo]:
    """The watchdog's automations on this Prefect server."""
    return [a for a in list_automations()
            if a.name == SILENT_RUNS_NAME or a.name.startswith(RERUN_PREFIX)]


def remove_watchdog() -> list[AutomationInfo]:
    """Delete every automation the watchdog setup made."""
    return delete_automations(sorted({a.name for a in watchdog_automations()}))
