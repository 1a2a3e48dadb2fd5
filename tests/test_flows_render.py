"""The nightly render flow against real simulators, inside one Prefect test backend."""

from __future__ import annotations

from pathlib import Path

import flow_helpers
import polars as pl
import pytest
from flow_helpers import png_files, write_shot_list

from flows.render_episode import render_episode
from tower.index import OutputIndex
from tower.metrics import RunLog

prefect_backend = flow_helpers.prefect_backend
sims = flow_helpers.sims
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
