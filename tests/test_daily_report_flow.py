"""The daily report flow under a real (temporary) Prefect server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.testing.utilities import prefect_test_harness
from test_report_rows import NOW, T0, run_row, sequential, write_metrics, write_runs

from flows.daily_report import ARTIFACT_KEY, daily_report
from tower.simulator import SimulatorServer


@pytest.fixture(scope="session", autouse=True)
def prefect_harness() -> Iterator[None]:
    with prefect_test_harness(server_startup_timeout=120):
        yield


async def _artifact_markdown() -> str:
    async with get_client() as client:
        artifact = await client.read_latest_artifacts()
    [latest] = [a for a in artifact if a.key == ARTIFACT_KEY]
    return latest.data


def test_flow_writes_files_and_publishes_the_markdown(tmp_path: Path) -> None:
    write_metrics(tmp_path, sequential(6, gap_s=4.0)
                  + sequential(4, start=T0 - timedelta(days=3), batch_id="old"))
    write_runs(tmp_path, [run_row()])
    paths = daily_report(data_root=tmp_path, now=NOW)
    markdown = Path(paths["markdown"])
    assert markdown == tmp_path / "reports" / "2026-11-26.md"
    assert json.loads(Path(paths["json"]).read_text())["figures"]["volume"]["batches"] == 6
    for kind in ("seconds-per-take", "gpu-busy", "time-breakdown"):
        assert Path(paths[kind]).stat().st_size > 0
    artifact = asyncio.run(_artifact_markdown())
    assert "Tower performance report 2026-11-26" in artifact
    assert "raise queue depth on gpu-a (ComfyUIServer max_queue_depth)" in artifact
    assert str(tmp_path / "reports" / "2026-11-26-gpu-busy.png") in artifact


def test_flow_reports_an_empty_day_and_the_farm_status(tmp_path: Path,
                                                       simulator: SimulatorServer) -> None:
    paths = daily_report(data_root=tmp_path, now=NOW, servers=[simulator.url])
    assert "No runs in this window" in Path(paths["markdown"]).read_text()
    artifact = asyncio.run(_artifact_markdown())
    assert "## Farm status" in artifact
    assert f"({simulator.url}): up" in artifact
