"""The production topology end to end: PostgreSQL, a Prefect server, a work pool, two
workers on two "machines", three GPU boxes, the deployments of prefect.yaml.

One night, as a studio lives it: the nightly deployment renders the episode with its
scheduled parameters while an artist's draft preview jumps the queues; then the machine
running the nightly dies (its worker and flow process SIGKILLed). The watchdog
(``tower watchdog setup``) sees the run's heartbeats stop, sets it Crashed and starts the
nightly again; the other worker picks it up and the night completes. The GPU boxes are
judged by their own queue logs (``/_tower/queue_log``), not by our logs.
"""

from __future__ import annotations

import re
import time
from typing import Any

import polars as pl
import pytest
from faults.faults_common import assert_each_take_once, gpu_images
from topology import (
    FINAL_STATES,
    Farm,
    GpuBox,
    missing_postgres,
    queue_log,
    running_farm,
    wait_until,
)

from tower.cli.local_server import log_tail
from tower.store.files import DataRoot
from tower.store.metrics import MetricsStore

BOXES = (GpuBox("gpu-a", vram_mb=24576, max_queue_depth=3),
         GpuBox("gpu-b", vram_mb=12288, max_queue_depth=2),
         GpuBox("gpu-c", vram_mb=8192, max_queue_depth=1))
TIME_SCALE = 0.3  # the episode's ~200 simulated GPU seconds take ~60 s of wall on three boxes
HEARTBEAT_S, SILENCE_S = 30, 60
NIGHTLY, PREVIEW = "render-episode/nightly", "draft-preview/draft-preview"
PREVIEW_PROMPT = "quick look: Aoi on the lighthouse stairs at dawn"
PREVIEW_TAKES = 2
EPISODE = "shot_lists/ep01_demo.yaml"  # the nightly deployment's default

pytestmark = pytest.mark.timeout(420)


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Any:
    reason = missing_postgres()
    if reason:
        pytest.skip(reason)
    with running_farm(tmp_path_factory.mktemp("farm"), BOXES, time_scale=TIME_SCALE,
                      heartbeat_s=HEARTBEAT_S) as started:
        yield started


def finished_prompts(farm: Farm, front: bool) -> list[dict[str, Any]]:
    """Finished prompts on every box: ComfyUI numbers front-of-queue prompts below 0."""
    return [e | {"server": name} for name, sim in farm.sims.items()
            for e in queue_log(sim)["events"]
            if e["event"] == "finished" and (e["number"] < 0) == front]


def held_at_most(log: list[dict[str, Any]]) -> tuple[int, int]:
    """(largest number of nightly prompts, largest number of all prompts) on the box at
    once, replayed from its own queue events."""
    held: dict[str, int] = {}
    most_nightly = most_all = 0
    for event in log:
        if event["event"] == "queued":
            held[event["prompt_id"]] = event["number"]
        elif event["event"] in ("finished", "deleted", "dropped"):
            held.pop(event["prompt_id"], None)
        most_nightly = max(most_nightly, sum(n >= 0 for n in held.values()))
        most_all = max(most_all, len(held))
    return most_nightly, most_all


def reruns_of(farm: Farm, night: str) -> list[dict[str, Any]]:
    """Nightly runs an automation started (not the schedule's runs for coming nights)."""
    return [run for run in farm.flow_runs(NIGHTLY)
            if run["id"] != night and (run.get("created_by") or {}).get("type") == "AUTOMATION"]


def plan_counts(farm: Farm) -> tuple[int, int, int]:
    """(takes, already rendered, sharing an image) from ``tower plan`` of the episode."""
    text = farm.cli("tower", "plan", EPISODE, "--data-root", str(farm.data_root))
    found = re.search(r"(\d+) of (\d+) takes already rendered.*?(\d+) share an image", text)
    assert found, text
    done, takes, shared = map(int, found.groups())
    return takes, done, shared


def test_a_night_on_the_farm_survives_a_dead_worker(farm: Farm) -> None:
    takes, done, shared = plan_counts(farm)
    assert done == 0
    farm.cli("tower", "watchdog", "setup", "--silence", str(SILENCE_S), "--heartbeat",
             str(HEARTBEAT_S), "--rerun", NIGHTLY)
    workers = [farm.start_worker("worker-1", "gpu-box-1"),
               farm.start_worker("worker-2", "gpu-box-2")]

    night = farm.run_deployment(NIGHTLY)  # the schedule's own parameters
    wait_until(lambda: len(finished_prompts(farm, front=False)) >= 1, 120,
               lambda: f"the nightly rendered nothing: {farm.flow_run(night)['state_name']}")
    preview = farm.run_deployment(PREVIEW, prompt=PREVIEW_PROMPT, takes=PREVIEW_TAKES)
    previewed = farm.wait_state(preview, FINAL_STATES, 120)
    assert previewed["state_type"] == "COMPLETED", previewed["state"]["message"]
    preview_done = time.time()
    assert farm.flow_run(night)["state_type"] == "RUNNING"

    victim = farm.worker_of(night)
    assert victim is not None, "no worker runs the nightly"
    farm.kill_worker(victim.name)
    survivor = next(w for w in workers if w is not victim)

    crashed = farm.wait_state(night, FINAL_STATES, SILENCE_S + 90)
    assert crashed["state_type"] == "CRASHED", crashed["state"]["message"]
    assert "no heartbeat" in crashed["state"]["message"]

    wait_until(lambda: any(r["state_type"] in FINAL_STATES for r in reruns_of(farm, night)), 150,
               lambda: f"no re-run finished; {survivor.name}:\n{log_tail(survivor.log, 30)}")
    reruns = reruns_of(farm, night)
    assert [r["state_type"] for r in reruns] == ["COMPLETED"], reruns
    assert survivor.process.poll() is None and victim.process.poll() is not None

    # Every take rendered once by a GPU, stored once, indexed once; nothing half-written.
    data = farm.data_root
    images = takes - shared
    state = assert_each_take_once(data, takes=images + PREVIEW_TAKES)
    assert sum(len(gpu_images(sim)) for sim in farm.sims.values()) == images + PREVIEW_TAKES
    assert plan_counts(farm)[1] == takes  # nothing left to render
    episode = state.index.filter(pl.col("episode") == "ep01")
    assert episode.height == images

    # No box ever held more of our prompts than its queue depth (previews: one slot more).
    for box in BOXES:
        log = queue_log(farm.sims[box.name])["events"]
        nightly, everything = held_at_most(log)
        assert 0 < nightly <= box.max_queue_depth, (box, nightly)
        assert everything <= box.max_queue_depth + 1, (box, everything)
        queued = [e["prompt_id"] for e in log if e["event"] == "queued"]
        assert len(queued) == len(set(queued)), "a prompt was queued twice"
        assert not [e for e in log if e["event"] in ("deleted", "dropped")]

    # The preview went to the front: it finished while the night still had batches to go.
    previews = finished_prompts(farm, front=True)
    assert len(previews) >= 1
    assert max(e["t"] for e in previews) <= preview_done
    later = [e for e in finished_prompts(farm, front=False) if e["t"] > preview_done]
    assert later, "the nightly had nothing left when the preview finished"
    for front in previews:
        log = queue_log(farm.sims[front["server"]])["events"]
        asked = next(e["t"] for e in log
                     if e["event"] == "queued" and e["prompt_id"] == front["prompt_id"])
        started = next(e["t"] for e in log
                       if e["event"] == "started" and e["prompt_id"] == front["prompt_id"])
        overtaken = [e for e in log if e["event"] == "started" and asked < e["t"] < started]
        assert overtaken == [], "a nightly prompt started before the waiting preview"

    # Metrics: one row per batch, whichever run stored it; nothing failed.
    metrics = MetricsStore(DataRoot(data).metrics).scan().collect()
    nightly_rows = metrics.filter(pl.col("episode") == "ep01")
    assert nightly_rows.filter(pl.col("status").is_in(["ok", "cached"]))["images"].sum() \
        == episode.height
    assert nightly_rows.filter(~pl.col("status").is_in(["ok", "cached"])).height == 0

    # Two machines wrote the one data root: the dead one and the survivor.
    parts = {p.name for p in (data / "index").rglob("part-*.parquet")}
    assert any(victim.host in name for name in parts), parts
    assert any(survivor.host in name for name in parts), parts

