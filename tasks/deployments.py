"""The deployments of ``prefect.yaml`` as runner deployments, for ``tower serve``.

One file describes the deployments for both ways of running them: ``prefect deploy``
(work pool and worker) reads it directly, and ``tower serve`` builds the same
deployments from it and serves them from one process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from prefect.deployments.runner import RunnerDeployment
from prefect.flows import Flow, load_flow_from_entrypoint
from prefect.schedules import Cron


def read_deployments(path: Path) -> list[dict[str, Any]]:
    """The ``deployments`` entries of a prefect.yaml file."""
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    entries = data.get("deployments") or []
    if not isinstance(entries, list):
        raise ValueError(f"{path}: deployments must be a list")
    return entries


def load_entrypoint(entrypoint: str, root: Path) -> Flow[..., Any]:
    """Import the flow of ``path/to/file.py:function`` relative to ``root``."""
    file, _, name = entrypoint.partition(":")
    return load_flow_from_entrypoint(f"{root / file}:{name}")


def runner_deployments(path: Path) -> list[RunnerDeployment]:
    """Every deployment of ``path`` with its schedules and parameters, ready to serve."""
    deployments = []
    for entry in read_deployments(path):
        flow = load_entrypoint(entry["entrypoint"], path.parent)
        schedules = [Cron(s["cron"], timezone=s.get("timezone"), active=s.get("active", True))
                     for s in entry.get("schedules") or []]
        deployments.append(flow.to_deployment(
            name=entry["name"], schedules=schedules or None,
            parameters=entry.get("parameters") or {}, description=entry.get("description"),
            tags=entry.get("tags"), concurrency_limit=entry.get("concurrency_limit")))
    return deployments
