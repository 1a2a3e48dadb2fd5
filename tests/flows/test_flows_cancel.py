"""Cancelling a render: its prompts leave the ComfyUI queue; a re-run finishes the rest."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import polars as pl
import pytest
from flow_helpers import png_files, write_shot_list
from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
from prefect.states import Cancelling

from flows.common import cancel_hook
from flows.render_episode import render_episode
from tower.comfyui import ComfyUIClient
from tower.store.index import OutputIndex

pytestmark = pytest.mark.usefixtures("prefect_backend")

PARAMS = {"retries": 1, "retry_backoff_s": 0.01}


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not reached in time")


def start_in_thread(shot_list: Path, data: Path, server: str) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def go() -> None:
        out["state"] = render_episode(shot_list=str(shot_list), servers=[server],
                                      data_root=str(data), **PARAMS, return_state=True)

    thread = threading.Thread(target=go)
    thread.start()
    return thread, out


def flow_run_named(prefix: str):
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            name=FlowRunFilterName(like_=prefix)))
    return runs[0] if runs else None


def busy_queue(url: str) -> tuple[str, ...]:
    with ComfyUIClient(url) as client:
        queue = client.queue()
    return queue.running + queue.pending if queue.running and queue.pending else ()


def test_cancelling_empties_the_queue_and_a_rerun_renders_only_the_rest(tmp_path, sims):
    sim = sims("cancel", time_scale=0.5)
    shot_list = write_shot_list(tmp_path, episode="epcancel", shots=8, takes=1)
    data = tmp_path / "data"
    thread, out = start_in_thread(shot_list, data, f"cancel={sim.url}")
    wait_for(lambda: busy_queue(sim.url))
    run = wait_for(lambda: flow_run_named("epcancel-nightly"))
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(run.id, Cancelling(), force=True)
    thread.join(timeout=120)
    assert out["state"].is_cancelled(), out["state"]
    with ComfyUIClient(sim.url) as client:
        queue = wait_for(lambda: (lambda q: q if not q.running else None)(client.queue()), 10)
    assert queue.pending == () and queue.running == ()
    rendered_before = OutputIndex(data / "index").scan().collect().height
    assert rendered_before < 8

    state = render_episode(shot_list=str(shot_list), servers=[f"cancel={sim.url}"],
                           data_root=str(data), **PARAMS, return_state=True)
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary["takes_deduped"] == rendered_before
    index = OutputIndex(data / "index").scan().collect()
    assert index.height == 8 and index["render_key"].n_unique() == 8
    assert len(png_files(data / "renders")) == 8
    assert index.filter(pl.col("run_id") == summary["run_id"]).height == 8 - rendered_before


def test_the_cancellation_hook_removes_the_runs_prompts(tmp_path, sims):
    sim = sims("hook", time_scale=0.5)
    shot_list = write_shot_list(tmp_path, episode="ephook", shots=8, takes=1)
    thread, out = start_in_thread(shot_list, tmp_path / "data", f"hook={sim.url}")
    try:
        in_flight = wait_for(lambda: busy_queue(sim.url))
        run = wait_for(lambda: flow_run_named("ephook-nightly"))
        cancel_hook(render_episode, run, Cancelling())
        with ComfyUIClient(sim.url) as client:
            pending = client.queue().pending
        assert not set(in_flight[1:]) & set(pending)   # the waiting ones were deleted
    finally:
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(run.id, Cancelling(), force=True)
        thread.join(timeout=120)
    assert out["state"].is_cancelled()
