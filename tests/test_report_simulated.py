"""A report built from what a real simulated night wrote: the demo episode, rendered
batch by batch on the ComfyUI simulator through the render runtime, then reported."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from tower.comfyui import ComfyUIClient
from tower.index import OutputIndex
from tower.metrics import MetricsStore, RunLog, RunRecord
from tower.planner import ServerSpec, plan_batches
from tower.presets import BUILTIN_PRESETS
from tower.render import RenderContext, execute_with_oom_split
from tower.report import build_report, write_report
from tower.report_model import report_window
from tower.report_verdicts import NO_BOTTLENECK, RULES
from tower.shots import load_shot_list
from tower.simulator import SimulatorServer
from tower.storage import DataRoot
from tower.takes import resolve_takes

DEMO = Path(__file__).resolve().parents[1] / "shot_lists" / "ep01_demo.yaml"
BUDGET_MB = 11000.0


def _render_night(client: ComfyUIClient, data: DataRoot, run_id: str) -> RunRecord:
    """Dedup, plan and render the demo episode; log the run like the flow does."""
    takes = resolve_takes(load_shot_list(DEMO))
    index = OutputIndex(data.index)
    ctx = RenderContext(data_root=data, index=index, metrics=MetricsStore(data.metrics),
                        run_id=run_id, vram_budget_mb=BUDGET_MB)
    started = datetime.now(UTC)
    dedup = index.dedup(takes)
    plan = plan_batches(dedup.to_render, [ServerSpec(client.name, BUDGET_MB)], BUILTIN_PRESETS) \
        if dedup.to_render else None
    outcomes = [o for b in (plan.batches if plan else ())
                for o in execute_with_oom_split(client, b, ctx)]
    record = RunRecord(
        run_id=run_id, flow="render_episode", episode="ep01", servers=[client.name],
        started_at=started, finished_at=datetime.now(UTC), takes_requested=len(takes),
        takes_deduped=len(dedup.rendered), takes_rendered=sum(o.batch.size for o in outcomes),
        takes_failed=0, batches=len(outcomes), retries=0, oom_splits=0,
        model_swaps=sum(plan.model_swaps.values()) if plan else 0, status="completed")
    RunLog(data.runs).append([record])
    return record


def test_report_of_two_simulated_runs(simulator: SimulatorServer, tmp_path: Path) -> None:
    data = DataRoot(tmp_path / "data")
    with ComfyUIClient(simulator.url, name="sim-a") as client:
        first = _render_night(client, data, "night-1")
        second = _render_night(client, data, "night-2")   # everything served from the index
    assert first.takes_rendered > 0 and second.takes_rendered == 0

    report = build_report(data, report_window(datetime.now(UTC) + timedelta(seconds=1)))
    f = report.figures
    assert f.volume.runs == 2
    assert f.volume.takes_requested == first.takes_requested * 2
    assert f.volume.takes_deduped == second.takes_requested
    assert f.volume.dedup_hit_rate == 0.5
    assert f.volume.takes_rendered == first.takes_rendered
    assert f.volume.images == first.takes_rendered
    assert {t.name for t in f.presets} == {"draft", "standard", "high"}
    assert sum(t.takes for t in f.presets) == first.takes_rendered
    for t in f.presets:
        assert 0 < t.per_take.p50 <= t.per_take.p95 <= t.per_take.max
        assert t.breakdown["sampling"] > 0 and t.target_met is True
    [load] = f.loads
    assert load.server == "sim-a" and 0 < load.busy_share <= 1
    assert load.vram_budget_mb == BUDGET_MB and load.vram_peak_mb is not None
    assert 0 < load.vram_peak_mb <= simulator.config.vram_mb
    [verdict] = report.verdicts
    assert verdict.bottleneck in {name for name, _ in RULES} | {NO_BOTTLENECK}
    assert [r.run_id for r in f.runs] == ["night-1", "night-2"]

    files = write_report(report, data)
    text = files.markdown.read_text()
    assert "| sim-a |" in text and "night-1" in text
