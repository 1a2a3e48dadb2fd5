"""``tower render``: each option reaches the render_episode flow (real console script).

Every test runs the installed ``tower`` against the session's Prefect server and real
simulators, and checks an effect only the option can have caused.
"""

from __future__ import annotations

import time
from pathlib import Path
from uuid import UUID

import polars as pl
import pytest
import yaml
from flow_helpers import png_files, tower, write_shot_list
from PIL import Image
from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from blocks import RenderPresets, RenderStore
from tower.store.index import OutputIndex
from tower.store.metrics import MetricsStore

pytestmark = pytest.mark.usefixtures("prefect_backend")

# draft at a size no built-in preset has, so every image shows the file was used
PRESETS = {"presets": {"draft": {"width": 640, "height": 384}}}


def write_presets(folder: Path, presets: dict = PRESETS) -> Path:
    path = folder / "studio-presets.yaml"
    path.write_text(yaml.safe_dump(presets), encoding="utf-8")
    return path


def test_presets_file_render_store_and_reuse_none(tmp_path, sims):
    sim = sims("cli-opts")
    shot_list = write_shot_list(tmp_path, shots=2, takes=2)
    presets = write_presets(tmp_path)
    farm = tmp_path / "farm"
    RenderStore(data_root=str(farm)).save("cli-farm", overwrite=True)
    first = tower("render", str(shot_list), "--server", f"cli-opts={sim.url}",
                  "--render-store", "cli-farm", "--presets", str(presets))
    assert first.returncode == 0, first.stderr
    assert "| rendered | 4 |" in first.stdout
    assert {Image.open(p).size for p in png_files(farm / "renders")} == {(640, 384)}

    again = tower("render", str(shot_list), "--servers", f"cli-opts={sim.url}",
                  "--render-store", "cli-farm", "--presets-file", str(presets),
                  "--reuse", "none")
    assert again.returncode == 0, again.stderr
    assert "| from the index (deduplicated) | 0 |" in again.stdout  # the default would skip all 4
    index = OutputIndex(farm / "index").scan().collect()
    assert index["run_id"].n_unique() == 2 and index.height == 8
    assert set(zip(index["width"], index["height"], strict=True)) == {(640, 384)}


def test_presets_block_preset_and_shots_in_a_dry_run(tmp_path, sims):
    sim = sims("cli-dry")
    RenderPresets(presets={"storyboard": {"extends": "draft", "width": 768, "height": 432}}
                  ).save("cli-storyboard", overwrite=True)
    shot_list = write_shot_list(tmp_path, shots=3, takes=2)
    dry = tower("render", str(shot_list), "-s", f"cli-dry={sim.url}",
                "--data-root", str(tmp_path / "data"), "--presets-block", "cli-storyboard",
                "--preset", "storyboard", "--shot", "sh010", "--shots", "sh030", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    rows = [line for line in dry.stdout.splitlines() if line.startswith("cli-dry ")]
    assert [("ep01 sh010" in r, "ep01 sh030" in r) for r in rows] == [(True, False),
                                                                      (False, True)]
    assert all(" storyboard " in row for row in rows)
    assert "4 takes to render, 0 already rendered" in dry.stdout
    assert sim.busy_intervals() == [] and not (tmp_path / "data" / "index").exists()


def _render_batch_policies(flow_run_id: str, timeout: float = 15.0) -> list:
    """The retry policy of each render_batch task run of a flow run, as Prefect stored it."""
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[UUID(flow_run_id)])))
            policies = [r.empirical_policy for r in runs if r.task_key.startswith("render_batch-")]
            if policies or time.monotonic() > deadline:
                return policies
            time.sleep(0.5)


def test_retries_backoff_and_max_server_failures(tmp_path, sims):
    good, bad = sims("cli-good"), sims("cli-bad")
    bad.faults.execution_error_rate = 1.0
    shot_list = write_shot_list(tmp_path, shots=6, takes=2)
    data = tmp_path / "data"
    result = tower("render", str(shot_list), "--server", f"cli-good={good.url}",
                   "--server", f"cli-bad={bad.url}", "--data-root", str(data),
                   "--retries", "2", "--retry-backoff-s", "0", "--max-server-failures", "1")
    assert result.returncode == 0, result.stderr  # cli-good renders what cli-bad failed
    assert "**cli-bad**: 1 batches failed in a row" in result.stdout  # default: 2
    metrics = MetricsStore(data / "metrics").scan().collect()
    assert set(metrics.filter(pl.col("server") == "cli-bad")["status"]) == {"failed"}
    [flow_run_id] = metrics["flow_run_id"].unique().to_list()
    policies = _render_batch_policies(flow_run_id)
    assert policies and all(p.retries == 2 for p in policies)  # default: 3
    assert all(p.retry_delay == [0, 0] for p in policies)  # default: 10 s, then 20 s
