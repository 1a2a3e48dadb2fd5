"""Progress with ETA while a night runs: the ETA table artifact and ``tower status``.

Real simulators slowed down so a run lasts a few seconds, inside the session's Prefect
backend; the table is read back through Prefect's client, the way the UI and ``tower
status`` get it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from flow_helpers import TOWER, tower, write_shot_list
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.settings import PREFECT_API_URL

from flows.render_episode import render_episode
from tower.runtime.progress import ALL, Progress, parse_rows
from tower.runtime.runs import RunArtifacts

pytestmark = pytest.mark.usefixtures("prefect_backend")
T = TypeVar("T")


def wait_for(probe: Callable[[], T | None], timeout: float = 90.0,
             interval: float = 0.1) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not reached in time")


def eta_tables(episode: str) -> list[Any]:
    """Every ETA table artifact of ``episode``'s renders (all flow runs, all versions)."""
    key = RunArtifacts("render", episode).progress_table
    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[key])))


def latest(episode: str) -> tuple[Progress, str] | None:
    """The one ETA table of ``episode`` (updated in place, never versioned) and its line."""
    found = eta_tables(episode)
    if not found:
        return None
    [table] = found
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    progress = parse_rows(episode, rows)
    assert progress is not None, rows
    return progress, table.description or ""


def test_the_eta_table_shows_takes_rate_and_eta_while_running_and_the_total_at_the_end(
        tmp_path: Path, sims) -> None:
    sim = sims("eta-a", time_scale=0.25)
    shot_list = write_shot_list(tmp_path, episode="ep71", shots=6, takes=2)
    out: dict[str, Any] = {}

    def run() -> None:
        out["state"] = render_episode(shot_list=str(shot_list), servers=[f"eta-a={sim.url}"],
                                      data_root=str(tmp_path / "data"), retries=0,
                                      return_state=True)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        mid, line = wait_for(lambda: latest("ep71"), timeout=60)
        # Published before the first batch ends: the ETA comes from the plan.
        assert mid.overall.takes_total == 12 and mid.overall.takes_done < 12
        assert mid.overall.eta is not None and "ETA" in line and " UTC (" in line
        assert [s.name for s in mid.servers] == ["eta-a"]
        assert line.startswith("ep71: ")
    finally:
        thread.join(timeout=180)
    state = out["state"]
    assert state.is_completed(), state.message
    end, line = latest("ep71") or (None, "")
    assert isinstance(end, Progress)
    assert (end.overall.name, end.overall.takes_done, end.overall.takes_failed,
            end.overall.takes_total) == (ALL, 12, 0, 12)
    assert end.overall.eta is None and line.endswith(", done")
    assert end.overall.images_per_min and end.overall.images_per_min > 0
    [server] = end.servers
    assert (server.takes_done, server.takes_total, server.eta) == (12, 12, None)
    # Each batch of 2 takes is its own prompt: six batches, enough for a measured pace.
    assert server.pace is not None and server.pace > 0


def test_tower_status_shows_a_running_render_and_its_eta(tmp_path: Path, sims) -> None:
    sim = sims("eta-b", time_scale=0.25)
    shot_list = write_shot_list(tmp_path, episode="ep72", shots=6, takes=2)
    data = tmp_path / "data"
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    child = subprocess.Popen(
        [str(TOWER), "render", str(shot_list), "--server", f"eta-b={sim.url}",
         "--data-root", str(data), "--retries", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        start_new_session=True)
    try:
        wait_for(lambda: latest("ep72"), timeout=90)
        status = tower("status", "--data-root", str(data))
        assert status.returncode == 0, status.stderr
        running = status.stdout[status.stdout.index("Running flows:"):]
        assert "render-episode" in running, status.stdout
        assert "ep72: " in running and "/12 takes" in running and "ETA" in running
        assert "    eta-b: " in running
        out, _ = child.communicate(timeout=180)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.communicate()
    assert child.returncode == 0, out
    # The terminal got the progress lines through the flow run's log; the last says done.
    assert "ep72: 12/12 takes" in out and ", done" in out, out[-3000:]
    after = tower("status", "--data-root", str(data))
    assert "ep72" not in after.stdout[after.stdout.index("Running flows:"):]
