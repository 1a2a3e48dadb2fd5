"""Choosing a preview preset within a time budget, from the metrics history."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl
import pytest

from tower.planning.preview import choose_preset, estimate_seconds, seconds_per_image, work
from tower.shotlist.presets import BUILTIN_PRESETS
from tower.store.metrics import BatchMetrics, MetricsStore

# Seconds per image measured on this farm: draft 2 s, standard 8 s, high 20 s.
HISTORY = {"draft": 2.0, "standard": 8.0, "high": 20.0}


@pytest.mark.parametrize(("images", "budget", "preference", "servers", "expected"), [
    (4, None, "quality", 1, "draft"),        # no budget: the default
    (4, 100, "quality", 1, "high"),          # 80 s fits 100
    (4, 100, "balanced", 1, "high"),         # 80 s exactly fills 80% of 100 s
    (4, 90, "balanced", 1, "standard"),      # 80 s > 72 allowed; 32 s fits
    (4, 60, "balanced", 1, "standard"),      # 32 s <= 48
    (4, 60, "speed", 1, "draft"),            # only 8 s <= 30
    (4, 40, "speed", 2, "standard"),         # two servers: 16 s <= 20
    (4, 5, "quality", 1, "draft"),           # nothing fits: cheapest
    (1, 25, "quality", 1, "high"),
])
def test_choose_preset_table(images, budget, preference, servers, expected):
    choice = choose_preset(BUILTIN_PRESETS, images, HISTORY, budget_s=budget,
                           preference=preference, servers=servers)
    assert choice.preset == expected


def test_unmeasured_presets_are_scaled_from_the_closest_measured_one():
    est = estimate_seconds(BUILTIN_PRESETS["high"], 2, {"standard": 8.0}, BUILTIN_PRESETS)
    ratio = work(BUILTIN_PRESETS["high"]) / work(BUILTIN_PRESETS["standard"])
    assert est == pytest.approx(2 * 8.0 * ratio)
    choice = choose_preset(BUILTIN_PRESETS, 2, {"standard": 8.0}, budget_s=17,
                           preference="quality")
    assert choice.preset == "standard" and choice.expected_s == pytest.approx(16.0)


def test_without_history_the_default_is_kept_and_said_so():
    choice = choose_preset(BUILTIN_PRESETS, 3, {}, budget_s=30)
    assert choice.preset == "draft" and choice.expected_s is None
    assert "no render history" in choice.reason


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"budget_s": 0}, "time_budget_seconds must be positive"),
    ({"preference": "fast"}, "quality_preference must be one of speed, balanced, quality"),
    ({"default": "nope"}, "unknown default preset"),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        choose_preset(BUILTIN_PRESETS, 1, HISTORY, **kwargs)


def _row(preset: str, status: str, execution_s: float, batch: int) -> BatchMetrics:
    return BatchMetrics(run_id="r", batch_id=f"b-{preset}-{execution_s}", server="gpu-a",
                        episode="ep01", preset=preset, checkpoint="c.safetensors", width=512,
                        height=512, takes=batch, batch_size=batch, vae_tiled=False,
                        status=status, attempt=1, execution_s=execution_s,
                        finished_at=datetime(2026, 11, 26, 3, tzinfo=UTC))


def test_seconds_per_image_from_a_real_metrics_store(tmp_path):
    store = MetricsStore(tmp_path / "metrics")
    store.append([_row("draft", "ok", 4.0, 2), _row("draft", "ok", 9.0, 3),
                  _row("draft", "failed", 100.0, 1), _row("high", "ok", 40.0, 2),
                  _row("high", "oom", 1.0, 4)])
    spi = seconds_per_image(store.scan().collect())
    assert spi == {"draft": pytest.approx(2.5), "high": pytest.approx(20.0)}
    assert seconds_per_image(pl.DataFrame()) == {}
