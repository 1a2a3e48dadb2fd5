"""``tower watchdog``: the automations it keeps on a real Prefect server, and its limits.

That the automation really crashes a dead run and starts the nightly again is shown end
to end in tests/scaleout/test_farm_topology.py (a worker SIGKILLed mid-night).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from flow_helpers import tower
from prefect import get_client

from tasks.watchdog import (
    DeploymentRef,
    WatchdogSetupError,
    find_deployment,
    remove_watchdog,
    setup_watchdog,
    watchdog_automations,
)
from tower.runtime.watchdog import SILENT_RUNS_NAME, check_silence, rerun_name


def test_setup_is_idempotent_and_remove_clears_it(prefect_backend: None) -> None:
    first = setup_watchdog(120, [])
    again = setup_watchdog(90, [])
    assert [a.action for a in first] == ["created"] and [a.action for a in again] == ["updated"]
    assert first[0].id == again[0].id
    with get_client(sync_client=True) as client:
        [automation] = client.read_automations_by_name(SILENT_RUNS_NAME)
    trigger = automation.trigger
    assert trigger.posture == "Proactive" and trigger.within == timedelta(seconds=90)
    assert trigger.after == {"prefect.flow-run.heartbeat"}
    assert "prefect.flow-run.Completed" in trigger.expect
    [crash] = automation.actions
    assert crash.type == "change-flow-run-state" and crash.state == "CRASHED"
    assert "no heartbeat for 90 s" in crash.message
    assert [a.name for a in watchdog_automations()] == [SILENT_RUNS_NAME]
    assert [a.action for a in remove_watchdog()] == ["removed"]
    assert watchdog_automations() == []


def test_a_rerun_no_longer_asked_for_is_removed(prefect_backend: None) -> None:
    from uuid import uuid4

    night = DeploymentRef("render-episode/nightly", uuid4())
    made = setup_watchdog(120, [night])
    assert {a.name for a in made} == {SILENT_RUNS_NAME, rerun_name(night.name)}
    with get_client(sync_client=True) as client:
        [rerun] = client.read_automations_by_name(rerun_name(night.name))
    assert [a.type for a in rerun.actions] == ["change-flow-run-state", "run-deployment"]
    assert rerun.actions[1].deployment_id == night.id
    assert rerun.trigger.match_related.model_dump() == {  # type: ignore[union-attr]
        "prefect.resource.role": "deployment",
        "prefect.resource.id": f"prefect.deployment.{night.id}"}
    after = setup_watchdog(120, [])
    assert ("removed", rerun_name(night.name)) in {(a.action, a.name) for a in after}
    remove_watchdog()


def test_an_unknown_deployment_is_named(prefect_backend: None) -> None:
    with pytest.raises(WatchdogSetupError, match="no deployment 'render-episode/nope'"):
        find_deployment("render-episode/nope")
    with pytest.raises(WatchdogSetupError, match="FLOW/DEPLOYMENT"):
        find_deployment("nightly")
    done = tower("watchdog", "setup", "--silence", "600", "--rerun", "render-episode/nope")
    assert done.returncode == 1 and "no deployment 'render-episode/nope'" in done.stderr


@pytest.mark.parametrize(("silence", "heartbeat", "error"), [
    (300, None, "under two heartbeats (180 s each)"),
    (50, 30, "under two heartbeats (30 s each)"),
    (120, 20, "at most every 30 s"),
])
def test_a_silence_that_would_crash_healthy_runs_is_refused(silence, heartbeat, error) -> None:
    with pytest.raises(ValueError, match=error.replace("(", r"\(").replace(")", r"\)")):
        check_silence(silence, heartbeat)
    check_silence(2 * max(heartbeat or 180, 30), heartbeat if heartbeat != 20 else 30)
