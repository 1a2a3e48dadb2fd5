"""Servers that fail: out of rotation, bounded attempts, out-of-memory that persists.

Every test ends by checking what a night leaves behind: the index holds one row per
take, each pointing at a complete file under the render root, no duplicates, the
metrics count every attempt, and no prompt of the run is left in any ComfyUI queue.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import httpx
import polars as pl
import pytest
from flow_helpers import png_files, write_shot_list
from prefect import flow
from prefect.runtime import flow_run as current_flow_run

from blocks.comfyui_server import ComfyUIServer
from flows.render_episode import render_episode
from tasks.dispatch import run_batches
from tasks.render import with_retry_policy
from tasks.setup import ensure_concurrency_limits, render_context
from tower.comfyui import ComfyUIClient
from tower.planning.pipeline import plan_run
from tower.planning.planner import ServerSpec
from tower.runtime.failures import max_attempts
from tower.runtime.pool import ServerPool
from tower.runtime.summary import RunTally
from tower.shotlist.presets import BUILTIN_PRESETS
from tower.simulator import SimulatorServer
from tower.store.files import DataRoot
from tower.store.index import OutputIndex
from tower.store.metrics import MetricsStore

pytestmark = pytest.mark.usefixtures("prefect_backend")

FAST = {"retries": 1, "retry_backoff_s": 0.01}


def run(shot_list: Path, data: Path, servers: list[SimulatorServer], **params):
    named = [f"{sim.config.name}={sim.url}" for sim in servers]
    state = render_episode(shot_list=str(shot_list), servers=named, data_root=str(data),
                           **{**FAST, **params}, return_state=True)
    return state, state.result(raise_on_failure=False)


def metrics(data: Path) -> pl.DataFrame:
    return MetricsStore(data / "metrics").scan().collect()


def executed_prompts(sim: SimulatorServer) -> set[str]:
    """The prompt ids the simulator executed (its ``/history``), failed ones included."""
    return set(httpx.get(f"{sim.url}/history", timeout=10).json())


def assert_clean_night(data: Path, sims: list[SimulatorServer], takes: int) -> None:
    """One complete, indexed file per take; nothing else; every queue empty."""
    index = OutputIndex(data / "index").scan().collect() if (data / "index").exists() \
        else pl.DataFrame({"render_key": [], "output_path": []})
    assert index.height == takes
    assert index["render_key"].n_unique() == takes and index["output_path"].n_unique() == takes
    for row in index.iter_rows(named=True):
        path = data / "renders" / row["output_path"]
        assert path.stat().st_size == row["size_bytes"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == row["sha256"]
    on_disk = png_files(data / "renders") if (data / "renders").exists() else []
    assert sorted(p.relative_to(data / "renders").as_posix() for p in on_disk) == sorted(
        index["output_path"].to_list())
    for sim in sims:
        with ComfyUIClient(sim.url) as client:
            queue = client.queue()
        assert queue.running == () and queue.pending == (), sim


def test_a_server_failing_every_batch_leaves_rotation_and_the_healthy_one_renders_it_all(
        tmp_path, sims):
    good, bad = sims("fo-good"), sims("fo-bad")
    bad.faults.execution_error_rate = 1.0
    shot_list = write_shot_list(tmp_path, shots=6, takes=2)
    data = tmp_path / "data"

    state, summary = run(shot_list, data, [good, bad], max_server_failures=2)

    assert state.is_completed(), state.message
    assert "fo-bad" in summary["out_of_rotation"]
    assert "simulated sampler failure" in summary["out_of_rotation"]["fo-bad"]
    assert summary["takes_rendered"] == 12 and summary["takes_failed"] == 0
    assert_clean_night(data, [good, bad], takes=12)
    index = OutputIndex(data / "index").scan().collect()
    assert set(index["server"]) == {"fo-good"}
    rows = metrics(data)
    failed = rows.filter(pl.col("status") == "failed")
    assert set(failed["server"]) == {"fo-bad"} and failed.height >= 2   # the threshold
    # never twice on the failing server: one attempt per batch there, each one executed
    assert failed["batch_id"].n_unique() == failed.height
    assert failed["attempt"].to_list() == [1] * failed.height
    assert len(executed_prompts(bad)) == failed.height
    # every batch that failed there rendered on the healthy server
    ok = rows.filter(pl.col("status") == "ok")
    assert set(failed["batch_id"]) <= set(ok["batch_id"])
    assert set(ok["server"]) == {"fo-good"} and ok["takes"].sum() == 12


def test_with_every_server_failing_the_run_ends_quoting_each_servers_last_error(
        tmp_path, sims):
    servers = [sims("fo-x"), sims("fo-y")]
    for sim in servers:
        sim.faults.execution_error_rate = 1.0
    shot_list = write_shot_list(tmp_path, shots=4, takes=1)
    data = tmp_path / "data"

    state, summary = run(shot_list, data, servers, retries=2, max_server_failures=2)

    assert state.is_failed()
    message = state.message
    assert "no server left to render it" in message
    assert "fo-x: out of rotation, last error: ComfyUIExecutionError" in message
    assert "fo-y: out of rotation, last error: ComfyUIExecutionError" in message
    assert set(summary["out_of_rotation"]) == {"fo-x", "fo-y"}
    assert summary["takes_failed"] == 4 and summary["batches_failed"] == 4
    # Attempts, counted: each metrics row is one attempt, each executed on a simulator.
    # An execution error is not transient, so each server tries a batch once at most.
    attempts = metrics(data)
    assert set(attempts["status"]) == {"failed"}
    per_batch = Counter(attempts["batch_id"].to_list())
    assert max(per_batch.values()) <= max_attempts(len(servers), 0)
    assert attempts.select("batch_id", "server").n_unique() == attempts.height
    assert attempts.height == sum(len(executed_prompts(sim)) for sim in servers)
    assert_clean_night(data, servers, takes=0)


@flow(name="render-prepared-plan")
def render_prepared(data: str, urls: dict[str, str], retries: int, max_failures: int,
                    ) -> RunTally:
    """The dispatch loop of the nightly render on a plan made beforehand, without the
    preflight (which an unreachable farm would fail before any batch is tried)."""
    root = DataRoot(Path(data))
    servers = {name: ComfyUIServer(name=name, base_url=url, max_queue_depth=1)
               for name, url in urls.items()}
    plan = plan_run(write_shot_list(Path(data), shots=2, takes=1), presets=BUILTIN_PRESETS,
                    servers=[ServerSpec(name, 10000.0) for name in servers],
                    data_root=root).plan
    ctx = render_context(root, "attempts", datetime.now(UTC), str(current_flow_run.id))
    pool = ServerPool(plan.batches, {name: 1 for name in servers}, max_failures=max_failures)
    ensure_concurrency_limits(servers.values())
    tally = RunTally()
    run_batches(pool, servers, ctx, with_retry_policy(retries, 0.01), tally,
                progress_key=None, on_cancel=lambda prompts: None)
    return tally


def test_an_unreachable_farm_gives_each_batch_exactly_the_documented_attempts(
        tmp_path, sims):
    servers = [sims("fo-down-a"), sims("fo-down-b")]
    for sim in servers:
        sim.faults.http_500_rate = 1.0          # every ComfyUI route answers 500
    retries = 1
    data = tmp_path / "data"
    data.mkdir()

    tally = render_prepared(str(data), {s.config.name: s.url for s in servers}, retries,
                            max_failures=3)

    assert tally.batches_failed == 2 and tally.takes_failed == 2
    assert all("no server left to render it" in failure for failure in tally.failures)
    attempts = metrics(data)
    bound = max_attempts(len(servers), retries)
    assert bound == 4
    assert Counter(attempts["batch_id"].to_list()) == {
        batch: bound for batch in set(attempts["batch_id"])}
    for (_, _), group in attempts.group_by("batch_id", "server"):
        assert sorted(group["attempt"].to_list()) == list(range(1, retries + 2))
    assert set(attempts["error_type"]) == {"ComfyUIUnavailable"}
    for sim in servers:
        sim.faults.http_500_rate = 0.0
    assert_clean_night(data, servers, takes=0)
    assert all(executed_prompts(sim) == set() for sim in servers)


def test_out_of_memory_halves_the_batch_and_the_next_plan_uses_the_half(tmp_path, sims):
    sim = sims("fo-oom")
    sim.faults.oom_above_batch = 2
    shot_list = write_shot_list(tmp_path, shots=2, takes=4)
    data = tmp_path / "data"

    state, first = run(shot_list, data, [sim], shots=["sh010"])

    assert state.is_completed(), state.message
    assert first["oom_splits"] == 1 and first["takes_rendered"] == 4
    rows = metrics(data)
    assert sorted(zip(rows["status"], rows["batch_size"], strict=True)) == [
        ("ok", 2), ("ok", 2), ("oom", 4)]

    # the next night plans the other shot at the half for this preset on this server
    state, second = run(shot_list, data, [sim], shots=["sh020"])

    assert state.is_completed(), state.message
    assert second["oom_splits"] == 0 and second["takes_rendered"] == 4
    night = metrics(data).filter(pl.col("run_id") == second["run_id"])
    assert night["status"].to_list() == ["ok", "ok"] and night["batch_size"].to_list() == [2, 2]
    assert_clean_night(data, [sim], takes=8)
