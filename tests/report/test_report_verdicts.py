"""Each bottleneck verdict and each recommendation, triggered by a crafted dataset.

Every case writes real Parquet through the metrics store and builds the report from
the files, so the whole path from rows to words is exercised.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from report_rows import NOW, T0, metric_row, run_row, sequential, write_metrics, write_runs

from tower.report.build import build_report
from tower.report.model import report_window
from tower.report.verdicts import (
    COMPUTE_BOUND,
    ERROR_BOUND,
    IO_BOUND,
    NO_BOTTLENECK,
    SWAP_BOUND,
    VRAM_BOUND,
)
from tower.store.files import DataRoot


def _failing() -> list[dict[str, Any]]:
    rows = sequential(10)
    for row in rows[:3]:
        row.update(status="failed", error_type="RuntimeError", images=0)
    rows.append(metric_row(20, at=rows[-1]["finished_at"], batch_id="b0", attempt=2))
    return rows


def _oom(tiled: bool) -> list[dict[str, Any]]:
    rows = sequential(8, preset="high", vae_tiled=tiled, takes=2, batch_size=2,
                      vram_peak_mb=9600.0, vram_estimated_mb=9000.0)
    rows[0].update(status="oom", images=0)
    return rows


CASES: list[tuple[str, list[dict[str, Any]], str, str, str]] = [
    ("errors", _failing(), ERROR_BOUND, "ComfyUIServer gpu-a",
     "check or disable gpu-a (its ComfyUIServer block) because 27% of attempts failed"
     " and 9% were retries (mostly RuntimeError)"),
    ("oom, VAE not tiled", _oom(False), VRAM_BOUND, "preset high vae_tiled",
     "enable tiled VAE for high (preset high vae_tiled) because 1 batches ran out of memory"),
    ("oom, VAE tiled", _oom(True), VRAM_BOUND, "preset high max_batch",
     "lower the high batch cap (preset high max_batch, now 2) because 1 batches ran out"
     " of memory even with tiled VAE"),
    ("peak near budget", sequential(6, vram_peak_mb=9500.0, vram_estimated_mb=9400.0),
     VRAM_BOUND, "preset draft vae_tiled", "because peak VRAM is 95% of budget"),
    ("model swaps", sequential(12, model_cache_hit=False, model_load_s=5.0, sampling_s=4.0,
                               vae_decode_s=1.0), SWAP_BOUND, "checkpoint order per server",
     "reorder or pin checkpoints per server (checkpoint order on gpu-a) because 12 swaps"
     " cost 1 minutes"),
    ("idle between batches", sequential(10, gap_s=5.0), IO_BOUND,
     "ComfyUIServer max_queue_depth",
     "raise queue depth on gpu-a (ComfyUIServer max_queue_depth) because the GPU idled 30%"
     " between batches"),
    ("slow downloads", sequential(10, download_s=6.0), IO_BOUND, "ComfyUIServer gpu-a base_url",
     "because downloads take 38% of batch time"),
    ("busy sampling", sequential(10), COMPUTE_BOUND, "ComfyUIServer servers",
     "add a ComfyUI server (another ComfyUIServer block) or use fewer steps because gpu-a"
     " was busy 100% of its active time, 80% of it sampling"),
    ("VRAM headroom", sequential(10, batch_size=8, takes=8, vram_peak_mb=4000.0,
                                 vram_estimated_mb=4000.0),
     COMPUTE_BOUND, "preset draft max_batch",
     "raise the draft batch cap (preset draft max_batch, now 8, try 16) because peak VRAM"
     " is 40% of budget"),
    ("VRAM model off", sequential(10, vram_estimated_mb=3000.0), COMPUTE_BOUND, "VRAM model",
     "recalibrate the VRAM model for draft (VramModel.calibrated on these metrics) because"
     " estimates"
     " miss the measured peak by 40% on average (mostly below it)"),
    ("seed target missed", sequential(4, preset="high", takes=2, batch_size=2,
                                      execution_s=300.0, sampling_s=280.0, vae_decode_s=20.0),
     COMPUTE_BOUND, "preset high steps",
     "bring high under its 120 s target (preset high steps, now 25) because p95 is 150.8 s"
     " per take"),
    ("quiet server", sequential(3, gap_s=1.0, sampling_s=5.0, vae_decode_s=5.0), NO_BOTTLENECK,
     "", ""),
]


@pytest.mark.parametrize(("rows", "bottleneck", "setting", "text"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_crafted_dataset_gives_verdict_and_recommendation(
        tmp_path: Path, rows: list[dict[str, Any]], bottleneck: str, setting: str,
        text: str) -> None:
    write_metrics(tmp_path, rows)
    write_runs(tmp_path, [run_row()])
    report = build_report(DataRoot(tmp_path), report_window(NOW))
    [verdict] = report.verdicts
    assert verdict.server == "gpu-a"
    assert verdict.bottleneck == bottleneck, verdict.evidence
    by_setting = {r.setting: r.text for r in report.recommendations}
    if not setting:
        assert by_setting == {}
        return
    assert setting in by_setting, by_setting
    assert text in by_setting[setting]


def test_verdict_lists_every_matching_rule_in_priority_order(tmp_path: Path) -> None:
    rows = sequential(10, gap_s=5.0, model_cache_hit=False, model_load_s=5.0, sampling_s=4.0)
    rows[0].update(status="oom", images=0)
    write_metrics(tmp_path, rows)
    [verdict] = build_report(DataRoot(tmp_path), report_window(NOW)).verdicts
    assert verdict.bottleneck == VRAM_BOUND
    assert verdict.also == (SWAP_BOUND, IO_BOUND)
    assert "1 OOM splits" in verdict.evidence


def test_each_server_gets_its_own_verdict(tmp_path: Path) -> None:
    busy = sequential(10, server="gpu-a")
    idle = sequential(10, server="gpu-b", gap_s=20.0, batch_id="c")
    write_metrics(tmp_path, busy + idle)
    report = build_report(DataRoot(tmp_path), report_window(NOW))
    assert {v.server: v.bottleneck for v in report.verdicts} == {
        "gpu-a": COMPUTE_BOUND, "gpu-b": IO_BOUND}
    queue = [r for r in report.recommendations if r.setting == "ComfyUIServer max_queue_depth"]
    assert [("gpu-b" in r.text) for r in queue] == [True]


def test_rows_outside_the_window_do_not_count(tmp_path: Path) -> None:
    write_metrics(tmp_path, sequential(10, start=T0 - timedelta(days=2), status="failed"))
    write_metrics(tmp_path, sequential(10, batch_id="c"))
    report = build_report(DataRoot(tmp_path), report_window(NOW))
    assert [v.bottleneck for v in report.verdicts] == [COMPUTE_BOUND]
    assert report.figures.volume.attempts_failed == 0
    assert report.previous.volume.attempts_failed == 10
