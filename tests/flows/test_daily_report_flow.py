"""The daily report flow under a real (temporary) Prefect server."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import polars as pl
import pytest
from paths import DEMO_SHOT_LIST
from PIL import Image
from prefect import get_client as prefect_client
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
)
from report_rows import NOW, T0, run_row, sequential, write_metrics, write_runs

from flows.daily_report import ARTIFACT_KEY, daily_report
from flows.render_episode import render_episode
from tower.report.artifact import CHART_MAX_BYTES
from tower.report.model import CHART_TITLES
from tower.shotlist.shots import load_shot_list
from tower.simulator import SimulatorServer
from tower.spec.takes import resolve_takes
from tower.store.metrics import MetricsStore, RunLog

# The session's one Prefect backend (tests/conftest.py), shared with the flow tests.
pytestmark = pytest.mark.usefixtures("prefect_backend")


async def _artifact_markdown() -> str:
    async with get_client() as client:
        artifact = await client.read_latest_artifacts()
    [latest] = [a for a in artifact if a.key == ARTIFACT_KEY]
    return latest.data


def test_flow_writes_files_and_publishes_the_markdown(tmp_path: Path) -> None:
    write_metrics(tmp_path, sequential(6, gap_s=4.0)
                  + sequential(4, start=T0 - timedelta(days=3), batch_id="old"))
    write_runs(tmp_path, [run_row()])
    paths = daily_report(data_root=str(tmp_path), now=NOW)
    markdown = Path(paths["markdown"])
    assert markdown == tmp_path / "reports" / "2026-11-26.md"
    assert json.loads(Path(paths["json"]).read_text())["figures"]["volume"]["batches"] == 6
    for kind in ("seconds-per-take", "gpu-busy", "time-breakdown"):
        assert Path(paths[kind]).stat().st_size > 0
    artifact = asyncio.run(_artifact_markdown())
    assert "Tower performance report 2026-11-26" in artifact
    assert "raise queue depth on gpu-a (ComfyUIServer max_queue_depth)" in artifact
    assert "*Chart file: `reports/2026-11-26-gpu-busy.png`*" in artifact
    assert str(tmp_path) not in artifact


def _artifact_of_run(flow_run_id: UUID) -> str:
    """The daily-report artifact one flow run published, read back through Prefect."""
    with prefect_client(sync_client=True) as client:
        [artifact] = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[ARTIFACT_KEY]),
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    assert artifact.type == "markdown"
    return artifact.data


EMBEDDED = re.compile(r"!\[([^\]]*)\]\(data:image/jpeg;base64,([A-Za-z0-9+/=]+)\)")


def test_the_artifact_embeds_its_charts_and_names_files_by_the_data_root(
        tmp_path: Path) -> None:
    now = datetime.now(UTC)  # the flow reads the clock itself: its window ends after this
    start = now - timedelta(hours=6)
    write_metrics(tmp_path, sequential(6, start=start, gap_s=4.0)
                  + sequential(3, start=start, preset="high", server="gpu-b", batch_id="h")
                  + sequential(4, start=start - timedelta(days=3), batch_id="old"))
    write_runs(tmp_path, [run_row(start=start)])
    state = daily_report(data_root=str(tmp_path), return_state=True)
    assert state.is_completed(), state.message
    paths = state.result()
    artifact = _artifact_of_run(state.state_details.flow_run_id)

    pictures = dict(EMBEDDED.findall(artifact))
    assert set(pictures) == set(CHART_TITLES.values())
    for kind, title in CHART_TITLES.items():
        jpeg = base64.b64decode(pictures[title], validate=True)
        assert len(jpeg) <= CHART_MAX_BYTES
        image = Image.open(io.BytesIO(jpeg))
        assert image.format == "JPEG" and image.width >= 400 and image.height >= 200
        assert len(image.convert("L").getcolors(maxcolors=65536) or ()) > 10  # drawn on
        written = Path(paths[kind]).relative_to(tmp_path).as_posix()
        assert f"*Chart file: `{written}`*" in artifact
    for kind in ("markdown", "json"):
        assert f"`{Path(paths[kind]).relative_to(tmp_path).as_posix()}`" in artifact
    assert str(tmp_path) not in artifact
    assert "| gpu-b |" in artifact and len(artifact) < 4 * CHART_MAX_BYTES


def test_flow_reports_an_empty_day_and_the_farm_status(tmp_path: Path,
                                                       simulator: SimulatorServer) -> None:
    paths = daily_report(data_root=str(tmp_path), now=NOW, servers=[simulator.url])
    assert "No runs in this window" in Path(paths["markdown"]).read_text()
    artifact = asyncio.run(_artifact_markdown())
    assert "## Farm status" in artifact
    assert f"({simulator.url}): up" in artifact


DEMO = DEMO_SHOT_LIST


def test_report_of_the_demo_episode_rendered_by_the_render_flow(
        tmp_path: Path, simulator: SimulatorServer) -> None:
    data = tmp_path / "data"
    for _ in range(2):  # the second night finds every take in the index
        state = render_episode(shot_list=str(DEMO), servers=[f"gpu-a={simulator.url}"],
                               data_root=str(data), retry_backoff_s=0.01, return_state=True)
        assert state.is_completed(), state.message
    runs = RunLog(data / "runs").scan().collect()
    metrics = MetricsStore(data / "metrics").scan().collect()

    paths = daily_report(data_root=str(data), now=datetime.now(UTC) + timedelta(seconds=1),
                         servers=[f"gpu-a={simulator.url}"])
    report = json.loads(Path(paths["json"]).read_text())
    volume = report["figures"]["volume"]
    assert volume["runs"] == 2
    assert volume["takes_requested"] == runs["takes_requested"].sum()
    # night one renders each image once (two demo shots share one), night two nothing
    takes = resolve_takes(load_shot_list(DEMO))
    shared = len(takes) - len({t.key for t in takes})
    assert shared > 0
    assert runs.sort("started_at")["takes_deduped"].to_list() == [shared, len(takes)]
    assert volume["takes_deduped"] == runs["takes_deduped"].sum() == shared + len(takes)
    assert volume["dedup_hit_rate"] == (shared + len(takes)) / (2 * len(takes))
    assert volume["attempts"] == metrics.height
    assert volume["takes_rendered"] == metrics.filter(pl.col("status") == "ok")["takes"].sum()
    assert volume["takes_rendered"] + volume["takes_cached"] == runs["takes_rendered"].sum()
    presets = report["figures"]["presets"]
    assert {p["name"] for p in presets} == {"draft", "standard", "high"}
    for p in presets:
        take = p["per_take"]
        assert 0 < take["p50"] <= take["p95"] <= take["max"]
        assert p["breakdown"]["sampling"] > 0 and p["target_met"] is True
    [load] = report["figures"]["loads"]
    assert load["server"] == "gpu-a" and 0 < load["busy_share"] <= 1
    assert 0 < load["vram_peak_mb"] <= simulator.config.vram_mb
    [verdict] = report["verdicts"]
    assert verdict["server"] == "gpu-a" and verdict["evidence"]
    assert [r["run_id"] for r in report["figures"]["runs"]] == \
        runs.sort("started_at")["run_id"].to_list()
    markdown = Path(paths["markdown"]).read_text()
    assert "| gpu-a |" in markdown
    artifact = asyncio.run(_artifact_markdown())
    assert f"gpu-a ({simulator.url}): up" in artifact
    assert "last model: anime-" in artifact  # the status found gpu-a's batches by name
    assert "Last run: render_episode ep01 completed" in artifact
