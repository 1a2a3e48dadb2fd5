"""Tower's Prefect automations, kept by name: created once, updated in place, listed, removed.

Notifications (:mod:`tasks.notify`) and the watchdog (:mod:`tasks.watchdog`) are both
automations that ``tower`` commands make on the Prefect server. Each is found again by
its name (``tower: ...``), so running a setup twice, or again with other options, leaves
one automation of each kind.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.events.schemas.automations import AutomationCore

from tower.runtime.notifications import AUTOMATION_PREFIX


@dataclass(frozen=True)
class AutomationInfo:
    """One automation as ``tower notify`` / ``tower watchdog`` report it (no secrets)."""

    name: str
    id: UUID
    enabled: bool
    action: str  # "created", "updated", "listed" or "removed"


def upsert_automations(wanted: Iterable[AutomationCore]) -> list[AutomationInfo]:
    """Create or update each automation by name; extra copies of one name are deleted."""
    done = []
    with get_client(sync_client=True) as client:
        for automation in wanted:
            existing = client.read_automations_by_name(automation.name)
            if existing:
                keep, *extra = existing
                client.update_automation(keep.id, automation)
                for duplicate in extra:
                    client.delete_automation(duplicate.id)
                done.append(AutomationInfo(automation.name, keep.id, automation.enabled,
                                           "updated"))
            else:
                new_id = client.create_automation(automation)
                done.append(AutomationInfo(automation.name, new_id, automation.enabled,
                                           "created"))
    return done


def list_automations(prefix: str = AUTOMATION_PREFIX) -> list[AutomationInfo]:
    """Every automation whose name starts with ``prefix``, by name."""
    with get_client(sync_client=True) as client:
        found = client.read_automations()
    return [AutomationInfo(a.name, a.id, a.enabled, "listed")
            for a in sorted(found, key=lambda a: a.name) if a.name.startswith(prefix)]


def delete_automations(names: Iterable[str]) -> list[AutomationInfo]:
    """Delete every automation with one of these names."""
    removed = []
    with get_client(sync_client=True) as client:
        for name in names:
            for automation in client.read_automations_by_name(name):
                client.delete_automation(automation.id)
                removed.append(AutomationInfo(name, automation.id, automation.enabled,
                                              "removed"))
    return removed
