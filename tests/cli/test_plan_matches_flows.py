"""``tower plan`` prints the plan the flows render: one planning pipeline for all three.

One data root with an output index and enough measured batches for calibration to kick
in, the same servers and budgets (a 12 GB server given by URL, an 8 GB one by a saved
block): the command's printed table equals the nightly render's dry-run plan, and a
preview's published plan, batch for batch.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import pytest
from flow_helpers import write_shot_list
from paths import DEMO_SHOT_LIST
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from typer.testing import CliRunner

from blocks import ComfyUIServer
from flows.draft_preview import draft_preview
from flows.render_episode import render_episode
from tower.cli import app
from tower.planning.planner import ServerSpec, apply_decode_policy
from tower.planning.vram import GPU_PROFILES, VramModel
from tower.shotlist.presets import BUILTIN_PRESETS
from tower.shotlist.shots import load_shot_list
from tower.spec.outputs import take_output_path
from tower.spec.takes import resolve_takes
from tower.store.files import DataRoot
from tower.store.index import IndexRow, OutputIndex
from tower.store.metrics import BatchMetrics, MetricsStore

pytestmark = pytest.mark.usefixtures("prefect_backend")

SERVERS = "cmp-a=12gb,cmp-b=8gb"
SPECS = [ServerSpec("cmp-a", GPU_PROFILES["12gb"].budget_mb),
         ServerSpec("cmp-b", GPU_PROFILES["8gb"].budget_mb)]
Row = tuple[str, str, str, str, str, int, float]


def measured_history(root: DataRoot, count: int = 24) -> None:
    """Batches of a card needing half the default activation memory, sampling at 0.2 s
    per step-megapixel, finished an hour ago by the real clock (the command and the
    flows read the last 30 days up to now)."""
    prior = VramModel()
    finished = datetime.now(UTC) - timedelta(hours=1)
    rows = []
    for n in range(count):
        size, batch = (512, 768, 1024)[n % 3], 1 + n % 4
        rows.append(BatchMetrics(
            run_id="earlier", batch_id=f"m{n}", server="cmp-a", episode="ep00",
            preset="standard", checkpoint="anime-final-sd15.safetensors", width=size,
            height=size, takes=batch, batch_size=batch, vae_tiled=False, status="ok",
            attempt=1, finished_at=finished + timedelta(seconds=n),
            vram_peak_mb=2000 + 0.5 * prior.activation_mb("sd15", size, size, batch),
            sampling_s=0.2 * 15 * size * size / 1e6 * batch))
    MetricsStore(root.metrics).append(rows)


def rendered_before(root: DataRoot, count: int = 7) -> None:
    """The demo's first takes, indexed with their files on disk."""
    takes = apply_decode_policy(resolve_takes(load_shot_list(DEMO_SHOT_LIST)), SPECS,
                                BUILTIN_PRESETS)[:count]
    rows = []
    for take in takes:
        path = root.renders / take_output_path(take)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(take.key.encode())
        rows.append(IndexRow.from_take(
            take, output_path=take_output_path(take),
            sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
            size_bytes=path.stat().st_size, rendered_at=datetime.now(UTC) - timedelta(days=1),
            server="cmp-a", prompt_id="p", run_id="earlier"))
    OutputIndex(root.index).append(rows)


def cli_plan(root: DataRoot, *options: str, shot_list: Path = DEMO_SHOT_LIST,
             ) -> tuple[str, list[Row]]:
    """``tower plan``'s output and its table's batch rows."""
    result = CliRunner().invoke(app, ["plan", str(shot_list), "--servers", SERVERS,
                                      "--data-root", str(root.root), *options])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("-----")) + 1
    rows = []
    for line in lines[start:lines.index("", start)]:
        server, batch, episode, shot, takes, preset, _ckpt, _vae, vram, est = line.split()
        rows.append((server, batch, f"{episode} {shot}", takes, preset, int(vram), float(est)))
    return result.output, rows


def flow_rows(plan_rows: list[dict]) -> list[Row]:
    return [(r["server"], r["batch"], r["shot"], r["takes"], r["preset"],
             int(r["vram_estimate_mb"]), float(r["est_seconds"])) for r in plan_rows]


def without_ids(rows: list[Row]) -> list[tuple[object, ...]]:
    return [row[:1] + row[2:] for row in rows]


def published_plan(flow_run_id: UUID) -> list[dict]:
    """The rows of a flow run's plan artifact, as cancellation reads them back."""
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    [plan] = [a for a in artifacts if (a.key or "").startswith("preview-plan-")]
    return json.loads(plan.data) if isinstance(plan.data, str) else plan.data


def test_tower_plan_prints_the_plan_the_flows_render(tmp_path: Path, sims):
    a, b = sims("cmp-a"), sims("cmp-b")
    ComfyUIServer(name="cmp-b", base_url=b.url, gpu_profile="8gb").save(
        "plan-match-b", overwrite=True)
    servers = [f"cmp-a={a.url}", "plan-match-b"]
    root = DataRoot(tmp_path / "data")
    measured_history(root)
    rendered_before(root)

    output, printed = cli_plan(root)
    assert "VRAM model for sd15 calibrated from 24 measured batches" in output
    assert "time model for sd15 calibrated from 24 measured batches" in output
    assert "8 of 45 takes already rendered" in output   # sh080 shares sh020's first image
    state = render_episode(shot_list=str(DEMO_SHOT_LIST), servers=servers,
                           data_root=str(root.root), dry_run=True, return_state=True)
    assert state.is_completed(), state.message
    # Batch for batch; only the batch ids differ: the run's keys hold the model identities
    # the servers report (/view_metadata), `tower plan` asks no server.
    assert without_ids(flow_rows(state.result()["plan"])) == without_ids(printed)
    assert {row[0] for row in printed} == {"cmp-a", "cmp-b"}
    # calibration made a difference: the same index without metrics plans more batches
    bare = DataRoot(tmp_path / "bare")
    rendered_before(bare)
    _, uncalibrated = cli_plan(bare)
    assert len(printed) < len(uncalibrated)

    # a preview renders: a short list keeps it quick (concurrency leases are slow when
    # the suite runs with --clock)
    short = write_shot_list(tmp_path, episode="ep02", shots=3, takes=3, preset="standard")
    _, printed_draft = cli_plan(root, "--preset", "draft", shot_list=short)
    assert {row[0] for row in printed_draft} == {"cmp-a", "cmp-b"}
    preview = draft_preview(shot_list=str(short), servers=servers,
                            data_root=str(root.root), reuse="exact", retries=0,
                            return_state=True)
    assert preview.is_completed(), preview.message
    assert preview.result()["preset"] == "draft"
    assert without_ids(flow_rows(published_plan(preview.state_details.flow_run_id))) == \
        without_ids(printed_draft)
