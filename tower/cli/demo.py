"""``tower demo``: render the demo episode twice against the simulator, on a real Prefect server.

The second run shows dedup at work: every take is already in the output index, so it
renders nothing. A third run renders the production episode (characters as LoRAs, a
layout frame, line art through a ControlNet, a hires final), whose contact sheet shows
which inputs each image used. Each run is checked against the Prefect API afterwards (its task runs
are recorded and finished), so what the demo prints is what the UI shows. The flow is
imported only after ``PREFECT_API_URL`` points at the server, because Prefect reads its
settings when first imported.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tower.cli.local_server import ensure_prefect_server, ensure_simulator
from tower.store.files import DataRoot

DEMO_SHOT_LIST = Path("shot_lists/ep01_demo.yaml")
PRODUCTION_SHOT_LIST = Path("shot_lists/ep02_demo.yaml")
PRODUCTION_PRESETS = Path("shot_lists/ep02_presets.yaml")
TERMINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "CRASHED"})
RECORD_TIMEOUT_S = 30.0

Echo = Callable[[str], None]


class DemoError(RuntimeError):
    """The demo could not run; the message says what to do."""


@dataclass
class DemoRun:
    """One flow run of the demo as the Prefect API recorded it."""

    flow_run_id: str
    state: str
    task_runs: int
    ui_url: str
    result: Any = None


@dataclass
class DemoReport:
    """Where everything the demo made can be found."""

    simulator_url: str
    api_url: str
    ui_url: str
    data_root: DataRoot
    runs: list[DemoRun] = field(default_factory=list)
    contact_sheet: Path | None = None
    production_sheet: Path | None = None


def ui_base_url(api_url: str, env: Mapping[str, str]) -> str:
    """The UI address: ``PREFECT_UI_URL`` when set, else the API address without ``/api``."""
    return (env.get("PREFECT_UI_URL") or api_url.removesuffix("/api")).rstrip("/")


def point_prefect_at(api_url: str, state_dir: Path) -> None:
    """Make this process's Prefect report to ``api_url`` (before Prefect is imported)."""
    os.environ["PREFECT_API_URL"] = api_url
    os.environ.setdefault("PREFECT_HOME", str((state_dir / "prefect").resolve()))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def recorded_task_runs(api_url: str, flow_run_id: str, timeout: float = RECORD_TIMEOUT_S,
                       headers: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """The task runs the server holds for a flow run, once all have finished.

    Waits (up to ``timeout``) until the count is stable and every run is in a terminal
    state, since the client reports task runs asynchronously.
    """
    body = {"flow_runs": {"id": {"any_": [flow_run_id]}}}
    deadline = time.monotonic() + timeout
    previous = -1
    while True:
        answer = httpx.post(f"{api_url}/task_runs/filter", json=body, headers=headers, timeout=10)
        answer.raise_for_status()
        runs = answer.json()
        done = all(run.get("state_type") in TERMINAL_STATES for run in runs)
        if (done and len(runs) == previous) or time.monotonic() > deadline:
            return runs
        previous = len(runs) if done else -1
        time.sleep(0.5)


def _find_contact_sheet(result: Any, data_root: DataRoot) -> Path | None:
    """The sheet the flow reports, else the newest contact sheet under the reports folder."""
    reported = getattr(result, "contact_sheet", None)
    if reported is None and isinstance(result, Mapping):
        reported = result.get("contact_sheet")
    if reported:
        return Path(reported)
    sheets = [p for p in data_root.reports.rglob("*.png") if "contact" in p.name
              or "sheet" in p.name] if data_root.reports.exists() else []
    return max(sheets, key=lambda p: p.stat().st_mtime) if sheets else None


def _counts(result: Any) -> str:
    """``45 takes rendered, 0 from the index; `` from the flow's summary, if it gave one."""
    if not isinstance(result, Mapping) or "takes_rendered" not in result:
        return ""
    rendered = result["takes_rendered"] + result.get("takes_cached", 0)
    return f"{rendered} takes rendered, {result.get('takes_deduped', 0)} from the index; "


def _run_flow(shot_list: Path, simulator_url: str, data_root: DataRoot, api_url: str,
              ui_url: str, presets: Path | None = None) -> DemoRun:
    try:
        from flows.render_episode import render_episode
    except ImportError as err:
        raise DemoError(f"the render_episode flow is not available: {err}") from err
    try:
        state = render_episode(shot_list=str(shot_list), servers=[simulator_url],
                               data_root=str(data_root.root),
                               presets_file=str(presets) if presets else None,
                               return_state=True)
    except Exception as err:  # a new user gets one sentence, not a traceback
        raise DemoError(f"the render flow could not run: {type(err).__name__}: {err}") from err
    flow_run_id = str(state.state_details.flow_run_id)
    result = state.result(raise_on_failure=False)
    try:
        runs = recorded_task_runs(api_url, flow_run_id)
    except httpx.HTTPError as err:
        raise DemoError(f"the Prefect server at {api_url} stopped answering: {err}") from err
    return DemoRun(flow_run_id, str(state.type.value), len(runs),
                   f"{ui_url}/runs/flow-run/{flow_run_id}", result)


def run_demo(project_dir: Path, echo: Echo, *, shot_list: Path = DEMO_SHOT_LIST,
             prefect_port: int = 4200, sim_port: int = 8188) -> DemoReport:
    """Start (or reuse) the servers, render the demo shot list twice, report where things are.

    Raises:
        DemoError: a run did not complete (its UI address is in the message).
        LocalServerError: a server could not be started.
    """
    state_dir = project_dir / ".tower"
    data_root = DataRoot(project_dir / "data")
    shot_list = shot_list if shot_list.is_absolute() else project_dir / shot_list
    if not shot_list.is_file():
        raise DemoError(f"demo shot list not found: {shot_list}")
    echo("Starting the ComfyUI simulator and a Prefect server (reused if running)...")
    simulator_url = ensure_simulator(state_dir, port=sim_port)
    info = ensure_prefect_server(state_dir, port=prefect_port)
    configured = os.environ.get("PREFECT_API_URL")
    if configured and info.source != "env":
        echo(f"  note: PREFECT_API_URL={configured} does not answer; using {info.url}")
    ui_url = ui_base_url(info.url, os.environ if info.source == "env" else {})
    echo(f"  ComfyUI simulator: {simulator_url}")
    echo(f"  Prefect server:    {info.url} (UI {ui_url})")
    point_prefect_at(info.url, state_dir)
    report = DemoReport(simulator_url, info.url, ui_url, data_root)
    runs: list[tuple[str, Path, Path | None]] = [
        ("render the episode", shot_list, None),
        ("the same again: everything is in the index, nothing renders", shot_list, None)]
    production = project_dir / PRODUCTION_SHOT_LIST
    if production.is_file():
        runs.append(("the production episode: characters, a layout, line art, a hires final",
                     production, project_dir / PRODUCTION_PRESETS))
    for number, (what, listed, presets) in enumerate(runs, start=1):
        echo(f"\nRun {number}: {what}")
        run = _run_flow(listed, simulator_url, data_root, info.url, ui_url, presets)
        report.runs.append(run)
        if run.state != "COMPLETED":
            raise DemoError(f"run {number} ended {run.state}; see {run.ui_url}")
        echo(f"Run {number} completed: {_counts(run.result)}{run.task_runs} task runs "
             f"recorded, {run.ui_url}")
    report.contact_sheet = _find_contact_sheet(report.runs[1].result, data_root)
    if len(report.runs) > 2:
        report.production_sheet = _find_contact_sheet(report.runs[2].result, data_root)
    return report


def describe(report: DemoReport) -> list[str]:
    """The closing lines: where the images, sheet, index, metrics and runs are."""
    root = report.data_root
    first = report.runs[0].result if report.runs else None
    episode = first.get("episode") if isinstance(first, Mapping) else None
    images = root.renders / episode if episode else root.renders
    lines = [
        "",
        f"Images:        {images}/",
        f"Contact sheet: {report.contact_sheet or '(none written)'}",
        *([f"Production:    {report.production_sheet}"] if report.production_sheet else []),
        f"Output index:  {root.index}/",
        f"Metrics:       {root.metrics}/",
    ]
    for number, run in enumerate(report.runs, start=1):
        lines.append(f"Run {number} in the Prefect UI: {run.ui_url}")
    lines.append("Stop the servers with `make stop` (tower server stop).")
    return lines
