"""The nightly render flow against real simulators, inside one Prefect test backend."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import httpx
import polars as pl
import pytest
from flow_helpers import QueueWatch, png_files, write_shot_list

from flows.render_episode import render_episode
from tasks.dispatch import prompts_of_flow_run
from tower.comfyui import ComfyUIClient
from tower.planning.planner import force_token
from tower.shotlist.presets import BUILTIN_PRESETS
from tower.shotlist.shots import load_shot_list
from tower.spec.takes import resolve_takes
from tower.store.index import OutputIndex
from tower.store.metrics import MetricsStore, RunLog

pytestmark = pytest.mark.usefixtures("prefect_backend")

FAST = {"retries": 1, "retry_backoff_s": 0.01}


def run(shot_list: Path, data: Path, servers: list[str], **params):
    state = render_episode(shot_list=str(shot_list), servers=servers, data_root=str(data),
                           **{**FAST, **params}, return_state=True)
    return state, state.result(raise_on_failure=False)


def test_an_episode_renders_and_a_second_run_renders_nothing(tmp_path, sims):
    sim = sims("gpu-a")
    shot_list = write_shot_list(tmp_path, shots=3, takes=2)
    data = tmp_path / "data"
    state, summary = run(shot_list, data, [f"gpu-a={sim.url}"])
    assert state.is_completed(), state.message
    assert summary["takes_rendered"] == 6 and summary["takes_failed"] == 0
    assert len(png_files(data / "renders")) == 6
    assert Path(summary["contact_sheet"]).is_file()
    assert OutputIndex(data / "index").scan().collect().height == 6

    state, again = run(shot_list, data, [f"gpu-a={sim.url}"])
    assert state.is_completed()
    assert again["takes_rendered"] == 0 and again["takes_deduped"] == 6
    runs = RunLog(data / "runs").scan().collect().sort("started_at")
    assert runs["takes_rendered"].to_list() == [6, 0]
    assert runs["takes_deduped"].to_list() == [0, 6]
    assert runs["status"].to_list() == ["completed", "completed"]
    assert pl.Series(runs["flow"]).unique().to_list() == ["render_episode"]


def index_frame(data: Path) -> pl.DataFrame:
    return OutputIndex(data / "index").scan().collect()


def test_two_servers_share_the_work(tmp_path, sims):
    a, b = sims("share-a"), sims("share-b")
    shot_list = write_shot_list(tmp_path, shots=6, takes=2)
    data = tmp_path / "data"
    state, _ = run(shot_list, data, [f"share-a={a.url}", f"share-b={b.url}"])
    assert state.is_completed(), state.message
    servers = index_frame(data)["server"].value_counts()
    assert set(servers["server"]) == {"share-a", "share-b"}
    assert servers["count"].sum() == 12
    assert a.busy_intervals() and b.busy_intervals()


def test_a_failing_server_is_taken_out_and_the_others_finish_its_work(tmp_path, sims):
    good, bad = sims("out-good"), sims("out-bad")
    bad.faults.execution_error_rate = 1.0
    shot_list = write_shot_list(tmp_path, shots=6, takes=2)
    data = tmp_path / "data"
    state, summary = run(shot_list, data, [f"out-good={good.url}", f"out-bad={bad.url}"])
    assert state.is_completed(), state.message
    assert "out-bad" in summary["out_of_rotation"]
    assert summary["takes_rendered"] == 12 and summary["takes_failed"] == 0
    assert set(index_frame(data)["server"]) == {"out-good"}
    assert "Taken out of rotation" in summary["markdown"]


def test_out_of_memory_halves_the_batch(tmp_path, sims):
    sim = sims("oom")
    sim.faults.oom_above_batch = 2
    shot_list = write_shot_list(tmp_path, shots=1, takes=4)
    data = tmp_path / "data"
    state, summary = run(shot_list, data, [f"oom={sim.url}"])
    assert state.is_completed(), state.message
    assert summary["oom_splits"] == 1 and summary["takes_rendered"] == 4
    metrics = MetricsStore(data / "metrics").scan().collect()
    assert sorted(metrics["status"].to_list()) == ["ok", "ok", "oom"]
    assert sorted(metrics.filter(pl.col("status") == "ok")["takes"].to_list()) == [2, 2]
    assert len(png_files(data / "renders")) == 4


def test_a_missing_checkpoint_fails_fast_with_one_message(tmp_path, sims):
    a, b = sims("pre-a"), sims("pre-b")
    shot_list = write_shot_list(tmp_path, shots=2, takes=1, checkpoint="nope-sd15.safetensors")
    data = tmp_path / "data"
    state, _ = run(shot_list, data, [f"pre-a={a.url}", f"pre-b={b.url}",
                                     "pre-c=http://127.0.0.1:9"])
    assert state.is_failed()
    message = state.message
    assert "nothing was queued" in message and "nope-sd15.safetensors" in message
    assert "pre-a" in message and "pre-b" in message and "pre-c" in message
    assert a.busy_intervals() == [] and b.busy_intervals() == []
    assert not (data / "index").exists() or index_frame(data).height == 0


def test_a_bad_shot_list_fails_naming_the_file_and_field(tmp_path, sims):
    sim = sims("bad-list")
    path = tmp_path / "broken.yaml"
    path.write_text("episode: ep01\nshots:\n  - id: sh010\n    prompt: x\n    takes: 100\n")
    state, _ = run(path, tmp_path / "data", [f"bad-list={sim.url}"])
    assert state.is_failed()
    assert "broken.yaml" in state.message and "takes" in state.message
    assert sim.busy_intervals() == []


def test_dry_run_plans_without_queueing(tmp_path, sims):
    sim = sims("dry")
    shot_list = write_shot_list(tmp_path, shots=2, takes=3)
    state, summary = run(shot_list, tmp_path / "data", [f"dry={sim.url}"], dry_run=True)
    assert state.is_completed()
    assert summary["takes_to_render"] == 6 and summary["batches"] == 2
    assert sim.busy_intervals() == [] and not (tmp_path / "data" / "runs").exists()


def test_two_flows_at_once_keep_the_server_queue_at_its_depth(tmp_path, sims):
    # Slow enough that a batch outlasts Prefect's own per-task overhead.
    sim = sims("shared", time_scale=0.2)
    lists = [write_shot_list(tmp_path, episode=ep, shots=3, takes=1) for ep in ("ep01", "ep02")]
    data = tmp_path / "data"
    results: dict[str, object] = {}

    def go(path: Path) -> None:
        results[path.stem] = run(path, data, [f"shared={sim.url}"])[0]

    with QueueWatch(sim.url) as watch:
        threads = [threading.Thread(target=go, args=(p,)) for p in lists]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=180)
    assert all(state.is_completed() for state in results.values()), results
    assert watch.samples > 20
    assert watch.max_depth == 2   # reached, and never exceeded
    assert set(index_frame(data)["episode"]) == {"ep01", "ep02"}


def test_a_server_restart_mid_run_is_retried_without_duplicates(tmp_path, sims):
    sim = sims("restart", time_scale=0.3)
    shot_list = write_shot_list(tmp_path, shots=4, takes=1)
    data = tmp_path / "data"
    out: dict = {}
    thread = threading.Thread(target=lambda: out.update(
        result=run(shot_list, data, [f"restart={sim.url}"], retries=2)))
    thread.start()
    with ComfyUIClient(sim.url) as client:
        deadline = time.monotonic() + 60
        while not client.queue().running and time.monotonic() < deadline:
            time.sleep(0.01)
    sim.restart()   # queue and history lost, like a crashed ComfyUI coming back
    thread.join(timeout=120)
    state, summary = out["result"]
    assert state.is_completed(), state.message
    assert summary["retries"] >= 1 and summary["takes_failed"] == 0
    index = index_frame(data)
    assert index.height == 4 and index["render_key"].n_unique() == 4
    assert len(png_files(data / "renders")) == 4


def test_errors_that_retrying_cannot_fix_fail_the_run_at_once(tmp_path, sims):
    sim = sims("broken")
    sim.faults.execution_error_rate = 1.0
    shot_list = write_shot_list(tmp_path, shots=1, takes=2)
    data = tmp_path / "data"
    state, summary = run(shot_list, data, [f"broken={sim.url}"], retries=3)
    assert state.is_failed()
    assert "simulated sampler failure" in state.message
    assert summary["retries"] == 0 and summary["takes_failed"] == 2
    metrics = MetricsStore(data / "metrics").scan().collect()
    assert metrics["attempt"].to_list() == [1] and metrics["status"].to_list() == ["failed"]
    runs = RunLog(data / "runs").scan().collect()
    assert runs["status"].to_list() == ["failed"] and runs["takes_failed"].to_list() == [2]


def test_dry_run_still_checks_the_servers(tmp_path, sims):
    sim = sims("dry-pre")
    shot_list = write_shot_list(tmp_path, shots=1, takes=1, checkpoint="absent.safetensors")
    state, _ = run(shot_list, tmp_path / "data", [f"dry-pre={sim.url}"], dry_run=True)
    assert state.is_failed() and "absent.safetensors" in state.message


def server_cached_nodes(url: str, prompt_id: str) -> list[str]:
    """``execution_cached`` nodes of a prompt, read from the server's ``/history``."""
    entry = httpx.get(f"{url}/history/{prompt_id}", timeout=10).json()[prompt_id]
    return next(data["nodes"] for event, data in entry["status"]["messages"]
                if event == "execution_cached")


def test_force_renders_every_batch_anew_on_a_server_that_still_has_it(tmp_path, sims):
    sim = sims("force")
    shot_list = write_shot_list(tmp_path, shots=3, takes=2)
    data = tmp_path / "data"
    state, first = run(shot_list, data, [f"force={sim.url}"])
    assert state.is_completed(), state.message

    state, forced = run(shot_list, data, [f"force={sim.url}"], force=True)

    assert state.is_completed(), state.message
    assert forced["takes_rendered"] == 6 and forced["takes_deduped"] == 0
    metrics = MetricsStore(data / "metrics").scan().collect()
    rows = metrics.filter(pl.col("run_id") == forced["run_id"])
    assert rows["status"].to_list() == ["ok"] * 3
    assert rows["cached_nodes"].to_list() == [0] * 3
    index = index_frame(data)
    plain_ids = set(index.filter(pl.col("run_id") == first["run_id"])["prompt_id"])
    new = index.filter(pl.col("run_id") == forced["run_id"])
    forced_ids = set(new["prompt_id"])
    token = force_token(str(state.state_details.flow_run_id))
    assert len(forced_ids) == 3 and not forced_ids & plain_ids
    assert forced_ids == {f"{pid}-{token}" for pid in plain_ids}
    for prompt_id in forced_ids:
        assert server_cached_nodes(sim.url, prompt_id) == []
    assert len(sim.busy_intervals()) == 6  # every batch executed twice, once per run
    # images where they belong, indexed under the forced prompts (the newest rows win)
    assert len(png_files(data / "renders")) == 6
    for row in new.iter_rows(named=True):
        path = data / "renders" / row["output_path"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == row["sha256"]
    takes = resolve_takes(load_shot_list(shot_list), BUILTIN_PRESETS)
    served = OutputIndex(data / "index").dedup(takes, data / "renders")
    assert served.to_render == [] and {row.prompt_id for _, row in served.rendered} == forced_ids
    # a cancellation hook finds the forced prompts in the plan artifact
    assert set(prompts_of_flow_run(state.state_details.flow_run_id)) == forced_ids
