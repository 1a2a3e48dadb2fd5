"""The draft preview flow: front of the queue, preset within a budget, look-alike reuse."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import polars as pl
import pytest
import yaml
from flow_helpers import write_shot_list

from flows.draft_preview import draft_preview
from flows.render_episode import render_episode
from tower.comfyui import ComfyUIClient
from tower.planning.planner import force_token
from tower.shotlist.presets import BUILTIN_PRESETS
from tower.shotlist.shots import load_shot_list
from tower.spec.graph import build_graph
from tower.spec.takes import resolve_takes
from tower.store.index import OutputIndex
from tower.store.metrics import BatchMetrics, MetricsStore

pytestmark = pytest.mark.usefixtures("prefect_backend")

FAST = {"retries": 0}


def preview(data: Path, server: str, **params):
    state = draft_preview(servers=[server], data_root=str(data), **{**FAST, **params},
                          return_state=True)
    assert state.is_completed(), state.message
    return state.result()


def test_a_preview_jumps_ahead_of_a_queued_backlog(tmp_path, sims):
    sim = sims("front", time_scale=0.5)
    backlog_list = write_shot_list(tmp_path, episode="backlog", shots=8, takes=1,
                                   preset="standard")
    takes = resolve_takes(load_shot_list(backlog_list), BUILTIN_PRESETS)
    with ComfyUIClient(sim.url) as client:
        backlog = [client.submit(build_graph([t], f"backlog/{t.shot_id}")) for t in takes]
        summary = preview(tmp_path / "data", f"front={sim.url}",
                          prompt="a lantern on a windowsill, night", takes=1)
        queue = client.queue()
        waiting = [pid for pid in backlog if pid in queue.pending]
        client.cancel(backlog)
        client.interrupt()
    assert summary["takes_rendered"] == 1 and summary["preset"] == "draft"
    assert len(waiting) >= 3, f"the preview waited for the backlog ({len(waiting)} left)"
    assert Path(summary["images"][0]).is_file() and Path(summary["contact_sheet"]).is_file()


def _with_seed(path: Path, seed: int) -> Path:
    data = yaml.safe_load(path.read_text())
    for shot in data["shots"]:
        shot["seed"] = seed
    out = path.with_name(f"{path.stem}-seed{seed}.yaml")
    out.write_text(yaml.safe_dump(data))
    return out


def test_similar_images_are_reused_instead_of_rendered(tmp_path, sims):
    sim = sims("reuse")
    data = tmp_path / "data"
    shot_list = write_shot_list(tmp_path, shots=2, takes=2)
    first = render_episode(shot_list=str(shot_list), servers=[f"reuse={sim.url}"],
                           data_root=str(data), retries=0, return_state=True)
    assert first.is_completed()
    other_seed = _with_seed(shot_list, 7)
    summary = preview(data, f"reuse={sim.url}", shot_list=str(other_seed),
                      shots=["sh010"], reuse="similar")
    assert summary["takes_rendered"] == 0 and summary["takes_deduped"] == 2
    indexed = OutputIndex(data / "index").scan().collect()
    existing = {str(data / "renders" / p)
                for p in indexed.filter(pl.col("shot_id") == "sh010")["output_path"]}
    assert set(summary["images"]) == existing
    rendered = preview(data, f"reuse={sim.url}", shot_list=str(other_seed), shots=["sh010"],
                       reuse="exact")
    assert rendered["takes_rendered"] == 2


def slow_farm_history(data: Path, batches: int = 3) -> None:
    """Measured standard batches of a farm sampling at 10 s per step-megapixel, an hour ago
    by the real clock (the flow reads the last 30 days up to its start)."""
    finished = datetime.now(UTC) - timedelta(hours=1)
    MetricsStore(data / "metrics").append([BatchMetrics(
        run_id="slow", batch_id=f"slow{n}", server="b", episode="hist", preset="standard",
        checkpoint="anime-final-sd15.safetensors", width=768, height=768, takes=2,
        batch_size=2, vae_tiled=False, status="ok", attempt=1, finished_at=finished,
        sampling_s=10.0 * 15 * 768 * 768 / 1e6 * 2) for n in range(batches)])


# The flow's side of the choice: history from a real render or from stored metrics
# reaches it, and the preset chosen is the one rendered. Every rule of the choice itself
# is tabled in tests/planning/test_preview.py.
@pytest.mark.parametrize(("history", "budget", "preference", "preset", "reason"), [
    ("simulator", 3600, "quality", "high", "best preset expected within 3600s (quality)"),
    ("slow farm", 150, "balanced", "standard", "best preset expected within 120s (balanced)"),
    ("none", 3600, "quality", "draft", "no render history to estimate from"),
])
def test_the_preset_is_chosen_from_history_within_the_budget(tmp_path, sims, history, budget,
                                                              preference, preset, reason):
    sim = sims(f"budget-{preset}")
    data = tmp_path / "data"
    if history == "simulator":    # the simulator renders in milliseconds
        past = write_shot_list(tmp_path, episode="hist", shots=2, takes=1)
        assert render_episode(shot_list=str(past), servers=[f"b={sim.url}"],
                              data_root=str(data), retries=0, return_state=True).is_completed()
    elif history == "slow farm":  # one image at high ~270 s, at standard ~95 s
        slow_farm_history(data)
    summary = preview(data, f"b={sim.url}", prompt="a paper lantern rising", takes=1,
                      time_budget_seconds=budget, quality_preference=preference)
    assert (summary["preset"], summary["preset_reason"]) == (preset, reason)
    rows = OutputIndex(data / "index").scan().collect().filter(
        pl.col("run_id") == summary["run_id"])
    assert rows["preset"].to_list() == [preset]


def test_a_preview_that_reuses_nothing_renders_every_node_anew(tmp_path, sims):
    sim = sims("fresh-preview")
    data = tmp_path / "data"
    shot_list = write_shot_list(tmp_path, shots=2, takes=2)
    params = {"shot_list": str(shot_list), "shots": ["sh010"]}
    first = preview(data, f"fresh-preview={sim.url}", reuse="exact", **params)
    assert first["takes_rendered"] == 2
    state = draft_preview(servers=[f"fresh-preview={sim.url}"], data_root=str(data),
                          reuse="none", **params, **FAST, return_state=True)
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary["takes_rendered"] == 2 and summary["takes_deduped"] == 0
    metrics = MetricsStore(data / "metrics").scan().collect()
    assert metrics.filter(pl.col("run_id") == summary["run_id"])["status"].to_list() == ["ok"]
    index = OutputIndex(data / "index").scan().collect()
    [prompt_id] = set(index.filter(pl.col("run_id") == summary["run_id"])["prompt_id"])
    assert prompt_id.endswith(force_token(str(state.state_details.flow_run_id)))
    entry = httpx.get(f"{sim.url}/history/{prompt_id}", timeout=10).json()[prompt_id]
    cached = [data["nodes"] for event, data in entry["status"]["messages"]
              if event == "execution_cached"]
    assert cached == [[]]
    assert len(sim.busy_intervals()) == 2
