"""``tower daily-report`` runs the daily_report flow; ``tower report`` reads the same way.

The metrics are crafted on a fixed past day (2026-11-26): draft batches over their
30 s target, so the report recommends fewer draft steps and says how many the presets
in use have, which shows which presets reached the report.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml
from flow_helpers import tower
from prefect.client.orchestration import get_client
from report_rows import run_row, sequential, write_metrics, write_runs
from typer.testing import CliRunner

from blocks import RenderPresets, RenderStore
from flows.daily_report import ARTIFACT_KEY
from tower.cli import app

pytestmark = pytest.mark.usefixtures("prefect_backend")
DAY = "2026-11-26"


def slow_draft_day(root: Path) -> Path:
    """A data root whose draft takes ran over target on ``DAY``."""
    write_metrics(root, sequential(5, takes=1, batch_size=1, images=1, execution_s=50.0,
                                   sampling_s=45.0))
    write_runs(root, [run_row()])
    return root


def presets_file(folder: Path, draft_steps: int) -> Path:
    path = folder / "presets.yaml"
    path.write_text(yaml.safe_dump({"presets": {"draft": {"steps": draft_steps}}}))
    return path


def printed_files(stdout: str) -> dict[str, Path]:
    """``kind: path`` lines, as ``tower daily-report`` prints the files it wrote."""
    return {kind: Path(path) for kind, _, path in
            (line.partition(": ") for line in stdout.splitlines()) if path}


async def _artifact_markdown() -> str:
    async with get_client() as client:
        artifacts = await client.read_latest_artifacts()
    [latest] = [a for a in artifacts if a.key == ARTIFACT_KEY]
    return latest.data


def test_daily_report_with_saved_blocks_a_day_and_a_server(tmp_path, simulator):
    farm = slow_draft_day(tmp_path / "farm")
    RenderStore(data_root=str(farm)).save("cli-report-farm", overwrite=True)
    RenderPresets(presets={"draft": {"steps": 6}}).save("cli-report-presets", overwrite=True)
    result = tower("daily-report", "--day", DAY, "--render-store", "cli-report-farm",
                   "--presets-block", "cli-report-presets", "--server", f"gpu-a={simulator.url}")
    assert result.returncode == 0, result.stderr
    files = printed_files(result.stdout)
    assert files["markdown"] == farm / "reports" / f"{DAY}.md"
    assert files["json"].is_file() and files["gpu-busy"].is_file()
    assert "(preset draft steps, now 6)" in files["markdown"].read_text()
    artifact = asyncio.run(_artifact_markdown())
    assert f"gpu-a ({simulator.url}): up" in artifact
    # the charts travel inside the artifact; files are named from the data root
    assert "](data:image/jpeg;base64," in artifact
    assert f"`reports/{DAY}-gpu-busy.png`" in artifact and str(farm) not in artifact


def test_daily_report_since_a_day_with_a_presets_file(tmp_path):
    data = slow_draft_day(tmp_path / "data")
    result = tower("daily-report", "--since", DAY, "--data-root", str(data),
                   "--presets", str(presets_file(tmp_path, 7)))
    assert result.returncode == 0, result.stderr
    markdown = printed_files(result.stdout)["markdown"]
    assert markdown.parent == data / "reports"
    assert markdown.name.startswith(f"{DAY}_")  # from that day until now
    assert "(preset draft steps, now 7)" in markdown.read_text()


def test_report_command_takes_the_flow_spellings(tmp_path):
    data = slow_draft_day(tmp_path / "data")
    result = CliRunner().invoke(app, ["report", "--day", DAY, "--data-root", str(data),
                                      "--presets-file", str(presets_file(tmp_path, 9))])
    assert result.exit_code == 0, result.output
    assert f"Tower performance report {DAY}" in result.output
    assert "(preset draft steps, now 9)" in result.output
