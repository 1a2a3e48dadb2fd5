"""``tower status`` and :func:`gather_status` against live simulators and real stores."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from report_rows import NOW, T0, metric_row, run_row, write_metrics, write_runs
from typer.testing import CliRunner

from tower.cli import app
from tower.cli.local_server import free_port
from tower.comfyui import ComfyUIClient, server_identity
from tower.report.status import RunningFlow, gather_status, render_running, render_status
from tower.runtime.progress import Progress, ProgressTracker
from tower.shotlist.shots import Shot, ShotList
from tower.simulator import SimulatorConfig, SimulatorServer, start_simulator
from tower.spec.graph import build_graph
from tower.spec.takes import resolve_takes
from tower.store.files import DataRoot
from tower.store.index import IndexRow, OutputIndex


def _takes(count: int, shot_id: str = "sh010"):
    shots = ShotList(episode="ep01", shots=(Shot(id=shot_id, prompt="a lantern", takes=count,
                                                 preset="draft", seed=3),))
    return resolve_takes(shots)


def _fill_data_root(root: Path, server: str, now: datetime = NOW) -> None:
    """Metrics, runs and index rows of a server, stamped relative to ``now``."""
    write_metrics(root, [
        metric_row(0, server=server, checkpoint="anime-draft-sd15.safetensors",
                   at=now - timedelta(hours=3)),
        metric_row(1, server=server, checkpoint="anime-final-sd15.safetensors",
                   at=now - timedelta(hours=2)),
        metric_row(2, server=server, checkpoint="other.safetensors", status="failed",
                   at=now - timedelta(hours=1)),
    ])
    write_runs(root, [run_row("old", start=now - timedelta(days=10), takes_requested=100,
                              takes_deduped=100),
                      run_row("run-a", start=now - timedelta(hours=5), takes_requested=40,
                              takes_deduped=10),
                      run_row("run-b", start=now - timedelta(hours=4), takes_requested=10,
                              takes_deduped=0, status="failed", takes_failed=3)])
    rows = [IndexRow.from_take(t, output_path=f"ep01/sh010/{t.take}.png", sha256="0" * 64,
                               size_bytes=2 * 1024 * 1024, rendered_at=T0, server=server,
                               prompt_id="p", run_id="run-a") for t in _takes(3)]
    OutputIndex(DataRoot(root).index).append(rows)


def test_status_of_a_live_server_and_the_data_root(simulator: SimulatorServer,
                                                   tmp_path: Path) -> None:
    with ComfyUIClient(simulator.url) as client:
        _fill_data_root(tmp_path, client.name)
        status = gather_status([client], DataRoot(tmp_path), NOW)
    [server] = status.servers
    assert server.reachable and server.error is None
    assert (server.running, server.pending) == (0, 0)
    assert server.devices and server.devices[0].vram_total_mb > 0
    assert server.last_checkpoint == "anime-final-sd15.safetensors"
    assert status.last_run is not None and status.last_run.run_id == "run-b"
    assert status.last_run.status == "failed"
    assert (status.index_rows, status.index_unique) == (3, 3)
    assert status.index_bytes == 3 * 2 * 1024 * 1024
    assert status.dedup_hit_rate == pytest.approx(10 / 50)  # the 10-day-old run is out
    text = render_status(status)
    assert f"{client.name} ({simulator.url}): up" in text
    assert "last model: anime-final-sd15.safetensors" in text
    assert "Last run: render_episode ep01 failed" in text
    assert "3 rows, 3 unique images, 6.0 MB; dedup hit rate (7 days): 20%" in text


@pytest.fixture
def slow_simulator(tmp_path: Path) -> Iterator[SimulatorServer]:
    """A simulator slow enough that queued prompts are still queued when asked."""
    config = SimulatorConfig(time_scale=1.0, output_dir=tmp_path / "slow")
    with start_simulator(config) as server:
        yield server


def test_status_shows_the_queue(slow_simulator: SimulatorServer, tmp_path: Path) -> None:
    with ComfyUIClient(slow_simulator.url) as client:
        ids = [client.submit(build_graph(_takes(1, f"sh{i:03d}"), f"ep01/q{i}"))
               for i in range(3)]
        deadline = time.monotonic() + 5
        while not client.queue().running and time.monotonic() < deadline:
            time.sleep(0.02)
        [server] = gather_status([client], DataRoot(tmp_path), NOW).servers
        client.cancel(ids)
        client.interrupt()
    assert (server.running, server.pending) == (1, 2)


def test_an_unreachable_server_is_reported_not_raised(simulator: SimulatorServer,
                                                      tmp_path: Path) -> None:
    dead = f"http://user:hunter2@127.0.0.1:{free_port()}"
    with ComfyUIClient(dead, connect_timeout=0.5, timeout=1.0) as down, \
            ComfyUIClient(simulator.url) as up:
        status = gather_status([down, up], DataRoot(tmp_path), NOW)
    assert [s.reachable for s in status.servers] == [False, True]
    assert "ConnectError" in (status.servers[0].error or "")
    text = render_status(status)
    assert "UNREACHABLE" in text and "hunter2" not in text
    assert "Last run: none recorded" in text


def test_a_server_answering_errors_is_unreachable(simulator: SimulatorServer,
                                                  tmp_path: Path) -> None:
    simulator.faults.http_500_next = 10
    with ComfyUIClient(simulator.url) as client:
        [server] = gather_status([client], DataRoot(tmp_path), NOW).servers
    assert not server.reachable
    assert "500" in (server.error or "")


def test_status_command(simulator: SimulatorServer, tmp_path: Path) -> None:
    _fill_data_root(tmp_path, "nobody")
    result = CliRunner().invoke(app, ["status", "--server", simulator.url,
                                      "--data-root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert f"({simulator.url}): up" in result.output
    assert "Output index: 3 rows" in result.output


def test_status_command_refuses_a_bad_url(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["status", "--server", "ftp://x",
                                      "--data-root", str(tmp_path)])
    assert result.exit_code == 1
    assert "--server" in result.output


def test_a_bare_url_finds_the_metrics_the_flows_recorded_for_it(simulator: SimulatorServer,
                                                                tmp_path: Path) -> None:
    # a flow given the bare URL records the server as host-port; the client is named so too
    _fill_data_root(tmp_path, f"127.0.0.1-{simulator.port}")
    with ComfyUIClient(simulator.url) as client:
        [server] = gather_status([client], DataRoot(tmp_path), NOW).servers
    assert server.name == f"127.0.0.1-{simulator.port}" == server_identity(simulator.url)
    assert server.last_checkpoint == "anime-final-sd15.safetensors"


def test_status_command_names_a_bare_url_as_the_flows_do(simulator: SimulatorServer,
                                                         tmp_path: Path) -> None:
    # `tower status` reads the real clock: stamp the data relative to it
    _fill_data_root(tmp_path, f"127.0.0.1-{simulator.port}", now=datetime.now(UTC))
    result = CliRunner().invoke(app, ["status", "--server", simulator.url,
                                      "--data-root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert f"127.0.0.1-{simulator.port} ({simulator.url}): up" in result.output
    assert "last model: anime-final-sd15.safetensors" in result.output


@pytest.mark.parametrize(("env", "where", "why"), [
    ({"TOWER_SERVERS": "gpu-a"}, "$TOWER_SERVERS", "saved blocks are not read here"),
    ({"TOWER_SERVERS": "gpu a=http://h:1"}, "$TOWER_SERVERS", "server name 'gpu a'"),
    ({"TOWER_SERVERS": "gpu-a="}, "$TOWER_SERVERS", "expected name=http"),
])
def test_status_command_names_where_a_bad_entry_came_from(env, where, why,
                                                          tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["status", "--data-root", str(tmp_path)], env=env)
    assert result.exit_code == 1
    assert f"error: {where}: " in result.output and why in result.output


def test_status_command_takes_named_servers_from_the_environment(simulator: SimulatorServer,
                                                                 tmp_path: Path) -> None:
    # `tower status` reads the real clock: stamp the data relative to it
    _fill_data_root(tmp_path, "gpu-a", now=datetime.now(UTC))
    result = CliRunner().invoke(app, ["status"], env={
        "TOWER_SERVERS": f"gpu-a={simulator.url}, http://127.0.0.1:{free_port()}",
        "TOWER_DATA_ROOT": str(tmp_path)})
    assert result.exit_code == 0, result.output
    assert f"gpu-a ({simulator.url}): up" in result.output
    assert "last model: anime-final-sd15.safetensors" in result.output
    assert "UNREACHABLE" in result.output


# Running flows: what the Prefect API said, worded as of the reader's ``now``.
RUN_AT = datetime(2030, 3, 4, 1, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Planned:
    batch_id: str
    server: str
    size: int
    est_seconds: float


def _progress_at(seconds: float) -> Progress:
    """gpu-a finished one batch of four; gpu-b left rotation and its two moved to gpu-a."""
    plan = [Planned(f"a{i}", "gpu-a", 4, 60.0) for i in range(4)] + \
           [Planned(f"b{i}", "gpu-b", 4, 60.0) for i in range(2)]
    tracker = ProgressTracker.of("ep01", plan, RUN_AT)
    tracker.finished("a0", "gpu-a", ok=True, at=RUN_AT + timedelta(seconds=60))
    where = {"a1": "gpu-a", "a2": "gpu-a", "a3": "gpu-a", "b0": "gpu-a", "b1": "gpu-a"}
    return tracker.snapshot(RUN_AT + timedelta(seconds=seconds), where,
                            out_of_rotation=("gpu-b",))


@pytest.mark.parametrize(("running", "unavailable", "now_s", "expected"), [
    (None, "Prefect API not reachable at http://x/api (refused)", 0,
     ["Running flows: Prefect API not reachable at http://x/api (refused)"]),
    ([], None, 0, ["Running flows: none"]),
    ([("render-episode", "ep01-nightly", None)], None, 0,
     ["Running flows:", "  render-episode ep01-nightly: no progress published yet"]),
    # Read two minutes after it was written: the time left shrinks, the ETA stays.
    ([("render-episode", "ep01-nightly", 60)], None, 180,
     ["Running flows:",
      "  render-episode ep01-nightly since 01:00 UTC: ep01: 4/24 takes, 4.0 img/min, "
      "ETA 01:06 UTC (3 min) (as of 2 min ago)",
      "    gpu-a: 4/24 takes, 4.0 img/min, ETA 01:06 UTC (3 min)",
      ]),
])
def test_running_flows_are_worded_from_their_eta_table(running, unavailable, now_s,
                                                       expected) -> None:
    flows = None if running is None else [
        RunningFlow(flow, name, None if at is None else RUN_AT,
                    None if at is None else _progress_at(at))
        for flow, name, at in running]
    text = render_running(flows, RUN_AT + timedelta(seconds=now_s), unavailable)
    assert text.splitlines()[:len(expected)] == expected


def test_a_server_out_of_rotation_is_named_with_what_it_did() -> None:
    flow = RunningFlow("render-episode", "ep01-nightly", RUN_AT, _progress_at(60))
    lines = render_running([flow], RUN_AT + timedelta(seconds=60)).splitlines()
    assert lines[-1] == "    gpu-b: 0/0 takes, 0.0 img/min, done (out of rotation)"


def test_status_command_says_when_the_prefect_api_is_not_reachable(tmp_path: Path) -> None:
    """In a child process: Prefect reads ``PREFECT_API_URL`` when it is first imported."""
    port = free_port()  # nothing listens there
    env = {**os.environ, "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
    done = subprocess.run([sys.executable, "-c", "from tower.cli import main; main()",
                           "status", "--data-root", str(tmp_path)], capture_output=True,
                          text=True, env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    last = done.stdout.splitlines()[-1]
    assert last.startswith(f"Running flows: Prefect API not reachable at http://127.0.0.1:{port}")
    assert "Output index: 0 rows" in done.stdout
