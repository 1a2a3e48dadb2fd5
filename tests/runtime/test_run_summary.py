"""Run tallies, retry counts and the closing summary."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from tower.planning.planner import RenderBatch
from tower.runtime.execute import BatchOutcome
from tower.runtime.summary import (
    RunInfo,
    RunTally,
    count_retries,
    run_record,
    run_status,
    run_summary,
    summary_markdown,
)
from tower.shotlist.presets import BUILTIN_PRESETS
from tower.shotlist.shots import ShotList
from tower.spec.takes import resolve_takes
from tower.store.metrics import BatchMetrics, MetricsStore, RunLog

T0 = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)


def _batch(takes: int = 2) -> RenderBatch:
    shot_list = ShotList(episode="ep01", shots=({"id": "sh010", "prompt": "x", "takes": takes},))
    resolved = tuple(resolve_takes(shot_list, BUILTIN_PRESETS, "draft"))
    return RenderBatch(batch_id="b1", server="gpu-a", takes=resolved, vram_estimate_mb=3000,
                       est_seconds=4.0)


def _metrics(batch_id: str, attempt: int, status: str = "ok",
             execution_s: float | None = 30.0) -> BatchMetrics:
    return BatchMetrics(run_id="r1", batch_id=batch_id, server="gpu-a", episode="ep01",
                        preset="draft", checkpoint="c", width=512, height=512, takes=2,
                        batch_size=2, vae_tiled=False, status=status, attempt=attempt,
                        execution_s=execution_s, finished_at=T0)


def _outcome(status: str, execution_s: float) -> BatchOutcome:
    batch = _batch()
    images = [Path(f"/renders/ep01/sh010/t{t.take}.png") for t in batch.takes]
    return BatchOutcome(batch, status, images, [], _metrics("b1", 1, status, execution_s))


def test_tally_counts_images_busy_time_and_splits():
    tally = RunTally(takes_requested=6, takes_deduped=1)
    tally.add([_outcome("ok", 30.0), _outcome("ok", 30.0)], "gpu-a")   # an OOM split
    tally.add([_outcome("cached", 0.0)], "gpu-b")
    tally.fail("ep01 sh020 t0-1 draft @gpu-b", 2, "ComfyUIExecutionError: boom")
    assert (tally.takes_rendered, tally.takes_cached, tally.takes_failed) == (4, 2, 2)
    assert tally.oom_splits == 1 and tally.batches_done == 2 and tally.batches_failed == 1
    assert tally.gpu_busy_share(wall_s=60.0, servers=2) == pytest.approx(0.5)
    assert tally.images_per_minute(wall_s=120.0) == pytest.approx(3.0)
    assert tally.gpu_busy_share(0.0, 2) is None and tally.images_per_minute(0) is None
    assert len(tally.images) == 6 and tally.images[0][0] == "sh010 t0"
    assert run_status(tally) == "failed" and run_status(tally, cancelled=True) == "cancelled"
    assert run_status(RunTally()) == "completed"


def test_count_retries_from_a_real_metrics_store(tmp_path):
    store = MetricsStore(tmp_path / "metrics")
    store.append([_metrics("b1", 1, "failed"), _metrics("b1", 2, "failed"),
                  _metrics("b1", 3), _metrics("b2", 1), _metrics("half", 2)])
    rows = store.scan().collect()
    assert count_retries(rows, ["b1", "b2"]) == 2
    assert count_retries(pl.DataFrame(), ["b1"]) == 0


def test_summary_markdown_lists_what_a_supervisor_needs():
    tally = RunTally(takes_requested=4, takes_deduped=2, takes_rendered=2, retries=1)
    tally.fail("ep01 sh030 t0 high @gpu-b", 1, "ComfyUIUnavailable: refused")
    text = summary_markdown("ep01 render", tally, started=T0, finished=T0 + timedelta(seconds=60),
                            servers=["gpu-a", "gpu-b"], model_swaps={"gpu-a": 1, "gpu-b": 2},
                            out_of_rotation={"gpu-b": "2 batches failed in a row"},
                            contact_sheet="/data/renders/ep01/contact-sheets/r1.png",
                            status="failed")
    for needle in ("# ep01 render: failed", "| skipped as duplicates | 2 |",
                   "| wall time | 60.0 s |",
                   "| model swaps (planned) | 3 |", "| retries | 1 |", "**gpu-b**",
                   "ep01 sh030 t0 high @gpu-b: ComfyUIUnavailable: refused",
                   "[r1.png](/data/renders/ep01/contact-sheets/r1.png)"):
        assert needle in text


def test_the_run_log_row_and_the_summary_agree_with_the_tally(tmp_path):
    tally = RunTally(takes_requested=8, takes_deduped=2, retries=1)
    tally.add([_outcome("ok", 30.0)], "gpu-a")
    tally.add([_outcome("cached", 0.0)], "gpu-b")
    tally.fail("ep01 sh030 t0-1 draft @gpu-b", 2, "ComfyUIExecutionError: boom")
    info = RunInfo(run_id="ep01-20261127T020000-abcd1234", flow_run_id="abcd1234-ef",
                   flow="render_episode", episode="ep01", preset=None,
                   servers=("gpu-a", "gpu-b"), started=T0, batches=3,
                   model_swaps={"gpu-a": 1, "gpu-b": 2})
    finished = T0 + timedelta(minutes=2)
    RunLog(tmp_path / "runs").append([run_record(info, tally, "failed", finished)])
    [row] = RunLog(tmp_path / "runs").scan().collect().to_dicts()
    assert (row["takes_requested"], row["takes_deduped"], row["takes_rendered"],
            row["takes_failed"]) == (8, 2, 4, 2)           # adopted/cached count as rendered
    assert (row["model_swaps"], row["retries"], row["status"]) == (3, 1, "failed")
    assert row["servers"] == ["gpu-a", "gpu-b"] and row["finished_at"] == finished
    summary = run_summary(info, tally, status="failed", finished=finished,
                          out_of_rotation={"gpu-b": "2 batches failed in a row"},
                          contact_sheet=None, markdown="# ep01")
    assert (summary["takes_rendered"], summary["takes_cached"]) == (2, 2)
    assert summary["wall_s"] == 120.0 and summary["images_per_minute"] == pytest.approx(2.0)
    assert summary["gpu_busy_share"] == pytest.approx(30.0 / 240.0)
    assert summary["failures"] == ["ep01 sh030 t0-1 draft @gpu-b: ComfyUIExecutionError: boom"]
    assert len(summary["images"]) == 4 and summary["model_swaps"] == 3
