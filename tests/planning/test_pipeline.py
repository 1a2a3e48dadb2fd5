"""The one planning pipeline: keys never move with calibration; force, reuse, shot filter."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from paths import DEMO_SHOT_LIST

from tower.planning.batches import force_token
from tower.planning.pipeline import (
    TIME_MIN_BATCHES,
    VRAM_MIN_BATCHES,
    PresetBudget,
    build_models,
    plan_run,
    recent_metrics,
)
from tower.planning.planner import PlanningError, ServerSpec
from tower.planning.vram import GPU_PROFILES, SD15, SDXL, VramModel
from tower.shotlist.errors import InputError
from tower.shotlist.presets import BUILTIN_PRESETS, Preset
from tower.shotlist.shots import Shot, ShotList
from tower.spec.outputs import take_output_path
from tower.spec.takes import ResolvedTake, resolve_takes
from tower.store.files import DataRoot
from tower.store.index import IndexRow, OutputIndex
from tower.store.metrics import BatchMetrics, MetricsStore

T0 = datetime(2026, 11, 20, 22, 0, tzinfo=UTC)
SD = "anime-final-sd15.safetensors"
XL = "animagine-xl-3.1.safetensors"
PRESETS = {**BUILTIN_PRESETS,
           "xl": Preset(name="xl", steps=25, width=1024, height=1024, sampler="euler",
                        scheduler="normal", cfg=7.0, checkpoint=XL, max_batch=4)}
BUDGET = {name: float(p.budget_mb) for name, p in GPU_PROFILES.items()}


def measured(checkpoint: str, preset: str, base_factor: float, act_factor: float,
             count: int = 24, at: datetime = T0, step_s_per_mp: float = 0.2,
             ) -> list[BatchMetrics]:
    """Batches of a card whose peaks are ``base_factor`` x the default weights plus
    ``act_factor`` x the default activations, sampling at ``step_s_per_mp``."""
    prior = VramModel()
    family = prior.family(checkpoint)
    base = prior.families[family].base_mb
    steps = PRESETS[preset].steps
    rows = []
    for n in range(count):
        size, batch = (512, 768, 1024)[n % 3], 1 + n % 4
        act = prior.activation_mb(family, size, size, batch)
        rows.append(BatchMetrics(
            run_id="r", batch_id=f"{checkpoint}-{n}", server="a", episode="ep01",
            preset=preset, checkpoint=checkpoint, width=size, height=size, takes=batch,
            batch_size=batch, vae_tiled=False, status="ok", attempt=1,
            finished_at=at + timedelta(minutes=n),
            vram_peak_mb=base_factor * base + act_factor * act, vram_budget_mb=BUDGET["24gb"],
            sampling_s=step_s_per_mp * steps * size * size / 1e6 * batch))
    return rows


def frame(rows: list[BatchMetrics]) -> pl.DataFrame:
    return pl.DataFrame([r.__dict__ for r in rows])


def shot_list(*shots: Shot, episode: str = "ep01") -> ShotList:
    return ShotList(episode=episode, defaults={"negative": "lowres"}, shots=shots)


def keys(takes: list[ResolvedTake]) -> set[str]:
    return {t.key for t in takes}


def planned_keys(run) -> set[str]:
    return {t.key for b in run.plan.batches for t in b.takes}


def index_takes(root: DataRoot, takes: list[ResolvedTake]) -> None:
    """Record ``takes`` as rendered, each with a real file of the recorded size."""
    rows = []
    for take in takes:
        path = root.renders / take_output_path(take)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"png " + take.key.encode())
        rows.append(IndexRow.from_take(
            take, output_path=take_output_path(take),
            sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
            size_bytes=path.stat().st_size, rendered_at=T0, server="a", prompt_id="p",
            run_id="earlier"))
    OutputIndex(root.index).append(rows)


XL_SHOTS = shot_list(Shot(id="sh010", prompt="a lighthouse in a storm", preset="xl", takes=3))
HIGH_SHOTS = shot_list(Shot(id="sh010", prompt="a lantern festival", preset="high", takes=2))


@pytest.mark.parametrize(("name", "source", "servers", "metrics", "check"), [
    # a card needing half the default activations: bigger batches on the 8 GB card
    ("smaller", DEMO_SHOT_LIST, [ServerSpec("a", BUDGET["12gb"]), ServerSpec("b", BUDGET["8gb"])],
     measured(SD, "standard", 0.8, 0.5), "fewer batches"),
    # the default model tiles SDXL at 1024 on 12 GB; the calibrated one would decode it
    # whole, but the key stays tiled
    ("tiled stays tiled", XL_SHOTS, [ServerSpec("a", BUDGET["12gb"])],
     measured(XL, "xl", 0.8, 0.5), "tiled"),
    # a card needing more than the defaults: the high take no longer fits 8 GB whole
    # under the calibrated model; it stays full (same key), alone, with a warning
    ("bigger", HIGH_SHOTS, [ServerSpec("a", BUDGET["8gb"])],
     measured(SD, "high", 1.3, 1.0), "warning"),
])
def test_calibration_changes_batch_sizes_never_keys(tmp_path, name, source, servers, metrics,
                                                    check):
    root = DataRoot(tmp_path / "data")
    default = plan_run(source, presets=PRESETS, servers=servers, data_root=root)
    calibrated = plan_run(source, presets=PRESETS, servers=servers, data_root=root,
                          metrics=frame(metrics))
    assert calibrated.models.vram.fits and not default.models.vram.fits
    assert keys(calibrated.takes) == keys(default.takes)
    assert planned_keys(calibrated) == planned_keys(default) == keys(default.to_render)
    assert [t.vae_tiled for t in calibrated.takes] == [t.vae_tiled for t in default.takes]
    if check == "fewer batches":
        assert len(calibrated.plan.batches) < len(default.plan.batches)
        budgets = {s.name: s.vram_budget_mb for s in servers}
        assert any(VramModel().estimate_mb(b.checkpoint, b.first.width, b.first.height, b.size)
                   > budgets[b.server] for b in calibrated.plan.batches)   # too big by default
    elif check == "tiled":
        assert all(t.vae_tiled for t in calibrated.takes)
        whole = calibrated.models.vram.estimate_mb(XL, 1024, 1024, 1)
        assert whole < BUDGET["12gb"] < VramModel().estimate_mb(XL, 1024, 1024, 1)
    else:
        assert not any(t.vae_tiled for t in calibrated.takes)
        assert [b.size for b in calibrated.plan.batches] == [1, 1]
        assert len(calibrated.warnings) == 2 and not default.warnings
        assert "above every budget" in calibrated.warnings[0]
        assert "render key stays" in calibrated.warnings[0]


def test_the_models_say_where_they_come_from():
    models = build_models(frame(measured(SD, "standard", 0.8, 0.5, count=VRAM_MIN_BATCHES)),
                          PRESETS)
    assert models.vram.fits[SD15].points == VRAM_MIN_BATCHES
    assert models.time.fits == {SD15: VRAM_MIN_BATCHES}
    assert models.time.step_s_per_mp[SD15] == pytest.approx(0.2)
    assert models.describe() == [
        f"VRAM model for sd15 calibrated from {VRAM_MIN_BATCHES} measured batches",
        f"time model for sd15 calibrated from {VRAM_MIN_BATCHES} measured batches"]
    few = build_models(frame(measured(SD, "standard", 0.8, 0.5, count=TIME_MIN_BATCHES)),
                       PRESETS)
    assert not few.vram.fits and few.time.fits == {SD15: TIME_MIN_BATCHES}
    assert "default VRAM model" in few.describe()[0]
    assert build_models(None, PRESETS).describe()[1] == "default time model (no measured batches)"


def test_models_read_recent_metrics_from_a_real_store(tmp_path):
    root = DataRoot(tmp_path / "data")
    today = date(2026, 11, 27)
    recent = measured(SD, "standard", 0.8, 0.5, at=datetime(2026, 11, 25, tzinfo=UTC))
    old = measured(XL, "xl", 0.8, 0.5, at=datetime(2026, 10, 1, tzinfo=UTC))
    failed = [replace(r, batch_id=f"f{r.batch_id}", status="failed", sampling_s=100.0)
              for r in recent[:5]]
    MetricsStore(root.metrics).append([*recent, *old, *failed])
    models = build_models(recent_metrics(root, today), PRESETS)
    assert set(models.vram.fits) == {SD15} and models.time.fits == {SD15: len(recent)}
    assert models.time.step_s_per_mp[SD15] == pytest.approx(0.2)   # failed rows ignored
    assert SDXL not in models.vram.fits                             # older than 30 days


def test_force_renders_everything_under_the_runs_own_prompt_ids(tmp_path):
    root = DataRoot(tmp_path / "data")
    servers = [ServerSpec("a", BUDGET["12gb"])]
    takes = resolve_takes(HIGH_SHOTS, PRESETS)
    index_takes(root, takes)
    plain = plan_run(HIGH_SHOTS, presets=PRESETS, servers=servers, data_root=root)
    assert plain.plan.batches == () and plain.takes_deduped == 2
    assert set(plain.served_paths()) == keys(takes)
    for params in ({"force": True}, {"reuse": "none"}):
        forced = plan_run(HIGH_SHOTS, presets=PRESETS, servers=servers, data_root=root,
                          run_id="run-1", **params)
        assert keys(forced.to_render) == keys(takes) and forced.takes_deduped == 0
        assert {b.fresh for b in forced.plan.batches} == {force_token("run-1")}
    with pytest.raises(ValueError, match="run id"):
        plan_run(HIGH_SHOTS, presets=PRESETS, servers=servers, data_root=root, force=True)


def test_reuse_similar_stands_in_look_alike_images(tmp_path):
    root = DataRoot(tmp_path / "data")
    servers = [ServerSpec("a", BUDGET["12gb"])]
    seeded = shot_list(Shot(id="sh010", prompt="a lantern festival", preset="high", takes=2,
                            seed=1))
    index_takes(root, resolve_takes(seeded, PRESETS))
    other_seed = shot_list(Shot(id="sh010", prompt="a lantern festival", preset="high",
                                takes=3, seed=7))
    run = plan_run(other_seed, presets=PRESETS, servers=servers, data_root=root,
                   reuse="similar")
    assert len(run.reused) == 2 and [t.take for t in run.to_render] == [2]
    assert planned_keys(run) == keys(run.to_render)
    assert run.takes_deduped == 2 and len(run.served_paths()) == 2
    exact = plan_run(other_seed, presets=PRESETS, servers=servers, data_root=root)
    assert exact.reused == [] and len(exact.to_render) == 3
    forced = plan_run(other_seed, presets=PRESETS, servers=servers, data_root=root,
                      reuse="similar", force=True, run_id="run-2")
    assert forced.reused == [] and len(forced.to_render) == 3


def test_a_shot_filter_and_a_preset_override(tmp_path):
    root = DataRoot(tmp_path / "data")
    servers = [ServerSpec("a", BUDGET["12gb"])]
    run = plan_run(DEMO_SHOT_LIST, presets=PRESETS, servers=servers, data_root=root,
                   shots=["sh020", "sh040"], preset="draft")
    assert {t.shot_id for t in run.takes} == {"sh020", "sh040"} and len(run.takes) == 6
    assert {b.preset for b in run.plan.batches} == {"draft"}
    assert run.source is not None and run.source.endswith("ep01_demo.yaml")
    with pytest.raises(PlanningError, match="shots not in ep01: sh999"):
        plan_run(DEMO_SHOT_LIST, presets=PRESETS, servers=servers, data_root=root,
                 shots=["sh999"])
    with pytest.raises(PlanningError, match="unknown preset 'ultra'"):
        plan_run(DEMO_SHOT_LIST, presets=PRESETS, servers=servers, data_root=root,
                 preset="ultra")


def test_a_budget_chooses_the_preset_before_planning(tmp_path):
    root = DataRoot(tmp_path / "data")
    servers = [ServerSpec("a", BUDGET["12gb"])]
    prompt = shot_list(Shot(id="p1", prompt="a paper lantern", takes=2), episode="preview")
    history = frame(measured(SD, "standard", 0.8, 0.5, count=3, step_s_per_mp=0.01))
    run = plan_run(prompt, presets=BUILTIN_PRESETS, servers=servers, data_root=root,
                   metrics=history, budget=PresetBudget(3600, "quality"))
    assert run.choice is not None and run.choice.preset == "high"
    assert {t.preset for t in run.takes} == {"high"} and run.source is None
    unmeasured = plan_run(prompt, presets=BUILTIN_PRESETS, servers=servers, data_root=root,
                          budget=PresetBudget(3600, "quality"))
    assert unmeasured.choice is not None and unmeasured.choice.preset == "draft"
    assert unmeasured.choice.reason == "no render history to estimate from"
    with pytest.raises(ValueError, match="not both"):
        plan_run(prompt, presets=BUILTIN_PRESETS, servers=servers, data_root=root,
                 preset="high", budget=PresetBudget(60))


def test_a_bad_shot_list_names_file_line_and_field(tmp_path: Path):
    path = tmp_path / "broken.yaml"
    path.write_text("episode: ep01\nshots:\n  - id: sh010\n    prompt: x\n    takes: 100\n")
    with pytest.raises(InputError) as err:
        plan_run(path, presets=PRESETS, servers=[ServerSpec("a", BUDGET["12gb"])],
                 data_root=DataRoot(tmp_path / "data"))
    assert str(err.value) == f"{path}:5 shot sh010: takes: must be between 1 and 64 (got 100)"
