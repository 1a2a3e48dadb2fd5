"""Choosing a preview preset within a time budget, with the planner's calibrated time model."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from part_takes import with_parts

from tower.planning.preview import choose_preset, estimate_seconds
from tower.planning.timing import TimeModel
from tower.planning.vram import SD15, SDXL
from tower.shotlist.presets import BUILTIN_PRESETS, Preset
from tower.spec.takes import ResolvedTake
from tower.store.metrics import BatchMetrics

T0 = datetime(2026, 11, 20, 22, 0, tzinfo=UTC)
STEPS = {name: p.steps for name, p in BUILTIN_PRESETS.items()}


def history(step_s_per_mp: float, batches: int = 6) -> pl.DataFrame:
    """Measured standard batches of a farm sampling at ``step_s_per_mp`` s per step-megapixel."""
    rows = []
    for n in range(batches):
        size = 1 + n % 4
        rows.append(BatchMetrics(
            run_id="r", batch_id=f"b{n}", server="gpu-a", episode="ep01", preset="standard",
            checkpoint="anime-final-sd15.safetensors", width=768, height=768, takes=size,
            batch_size=size, vae_tiled=False, status="ok", attempt=1,
            finished_at=T0 + timedelta(minutes=n),
            sampling_s=step_s_per_mp * 15 * 768 * 768 / 1e6 * size))
    return pl.DataFrame([r.__dict__ for r in rows])


def farm(step_s_per_mp: float) -> TimeModel:
    return TimeModel().calibrated(history(step_s_per_mp), STEPS, min_points=1)


# A farm at 1 s per step-megapixel. Four images on one server: draft ~13 s, standard
# ~40 s, high ~111 s (a model load, then batches of max_batch); on two servers ~9, ~22,
# ~57 s; one image ~7, ~13, ~31 s.
SLOW = farm(1.0)


@pytest.mark.parametrize(("images", "budget", "preference", "servers", "expected"), [
    (4, None, "quality", 1, "draft"),        # no budget: the default
    (4, 120, "quality", 1, "high"),          # 111 s fits 120
    (4, 120, "balanced", 1, "standard"),     # 111 s > 96 allowed; 40 s fits
    (4, 60, "balanced", 1, "standard"),      # 40 s <= 48
    (4, 60, "speed", 1, "draft"),            # only 13 s <= 30
    (4, 60, "speed", 2, "standard"),         # two servers: 22 s <= 30
    (4, 5, "quality", 1, "draft"),           # nothing fits: cheapest
    (1, 35, "quality", 1, "high"),           # 31 s
])
def test_choose_preset_table(images, budget, preference, servers, expected):
    choice = choose_preset(BUILTIN_PRESETS, images, SLOW, budget_s=budget,
                           preference=preference, servers=servers)
    assert choice.preset == expected
    assert choice.expected_s == pytest.approx(
        estimate_seconds(BUILTIN_PRESETS[expected], images, SLOW, servers))


def test_the_same_budget_buys_more_on_a_faster_farm():
    fast, slow = farm(0.05), farm(1.0)
    assert choose_preset(BUILTIN_PRESETS, 4, fast, budget_s=20).preset == "high"
    assert choose_preset(BUILTIN_PRESETS, 4, slow, budget_s=20).preset == "draft"


def test_the_estimate_is_the_time_models_own():
    high = BUILTIN_PRESETS["high"]
    est = estimate_seconds(high, 5, SLOW, servers=2)
    # three images on the busier server: a load, a batch of 2, a batch of 1
    assert est == pytest.approx(
        SLOW.load_seconds(SD15) + SLOW.estimate_seconds(SD15, 1024, 1024, 2, 25)
        + SLOW.estimate_seconds(SD15, 1024, 1024, 1, 25))
    assert est == SLOW.wall_seconds(SD15, 1024, 1024, 25, 5, max_batch=2, servers=2)


def test_a_preset_of_an_unmeasured_family_is_estimated_from_the_measured_one():
    xl = Preset(name="xl", steps=25, width=1024, height=1024, sampler="euler",
                scheduler="normal", cfg=7.0, checkpoint="animagine-xl-3.1.safetensors",
                max_batch=2)
    twice_as_slow = farm(2 * TimeModel().step_s_per_mp[SD15])
    assert SDXL not in twice_as_slow.fits
    est = estimate_seconds(xl, 2, twice_as_slow)
    assert est == pytest.approx(TimeModel(step_s_per_mp={SDXL: 2 * 0.65}).wall_seconds(
        SDXL, 1024, 1024, 25, 2, max_batch=2))


def test_without_history_the_default_is_kept_and_said_so():
    choice = choose_preset(BUILTIN_PRESETS, 3, TimeModel(), budget_s=30)
    assert choice.preset == "draft" and choice.expected_s is None
    assert "no render history" in choice.reason
    assert estimate_seconds(BUILTIN_PRESETS["high"], 3, TimeModel()) is None


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"budget_s": 0}, "time_budget_seconds must be positive"),
    ({"preference": "fast"}, "quality_preference must be one of speed, balanced, quality"),
    ({"default": "nope"}, "unknown default preset"),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        choose_preset(BUILTIN_PRESETS, 1, SLOW, **kwargs)


def sample(preset: Preset, *parts: str) -> ResolvedTake:
    """A take resolved at ``preset``, with production parts."""
    take = ResolvedTake(
        episode="ep02", shot_id="sh010", take=0, prompt="p", negative="n", seed=1,
        preset=preset.name, checkpoint=preset.checkpoint, sampler=preset.sampler,
        scheduler=preset.scheduler, steps=preset.steps, cfg=preset.cfg, width=preset.width,
        height=preset.height, vae_tiled=preset.vae_tiled, vae_tile_size=preset.vae_tile_size)
    return with_parts(take, parts)


def test_a_sample_take_times_the_preset_with_its_parts():
    high = BUILTIN_PRESETS["high"]
    plain = estimate_seconds(high, 4, SLOW)
    assert estimate_seconds(high, 4, SLOW, sample=sample(high)) == plain
    heavy = sample(high, "hires", "upscale", "lora")
    assert estimate_seconds(high, 4, SLOW, sample=heavy) == pytest.approx(
        SLOW.load_seconds(SD15) + 2 * SLOW.estimate_take_seconds(heavy, 2, SD15))
    assert estimate_seconds(high, 4, SLOW, sample=heavy) > plain
    # 111 s fits 120 as plain txt2img; with a hires pass and an upscale it does not
    samples = {name: sample(p, "hires", "upscale") for name, p in BUILTIN_PRESETS.items()}
    assert choose_preset(BUILTIN_PRESETS, 4, SLOW, budget_s=120, preference="quality").preset \
        == "high"
    choice = choose_preset(BUILTIN_PRESETS, 4, SLOW, budget_s=120, preference="quality",
                           samples=samples)
    assert choice.preset != "high"
    assert choice.expected_s == pytest.approx(estimate_seconds(
        BUILTIN_PRESETS[choice.preset], 4, SLOW, sample=samples[choice.preset]))
