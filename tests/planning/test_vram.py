"""The VRAM model: families, estimates, GPU budgets, calibration from measured peaks."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from part_takes import CEL, REN, with_parts

from tower.planning.timing import TimeModel
from tower.planning.vram import GPU_PROFILES, SD15, SDXL, FamilyCoefficients, VramModel, budget_for
from tower.spec.parts import LoraSpec
from tower.spec.takes import ResolvedTake
from tower.store.metrics import BatchMetrics, MetricsStore

SD = "anime-final-sd15.safetensors"
XL = "animagine-xl-3.1.safetensors"


@pytest.mark.parametrize(("name", "family"), [
    ("anime-final-sd15.safetensors", SD15),
    ("v1-5-pruned-emaonly.safetensors", SD15),
    ("AnimagineXL-3.1.safetensors", SDXL),
    ("ponyDiffusionV6.safetensors", SDXL),
    ("sd_xl_base_1.0.safetensors", SDXL),
    ("mystery-model.safetensors", SDXL),          # unknown: the costlier family
])
def test_family_from_the_checkpoint_name(name: str, family: str) -> None:
    assert VramModel().family(name) == family


def test_the_checkpoint_table_is_extendable_and_checked() -> None:
    model = VramModel(checkpoints={"mystery-model.safetensors": SD15, "house-*": SD15})
    assert model.family("mystery-model.safetensors") == SD15
    assert model.family("House-Style-v2.safetensors") == SD15
    tiny = FamilyCoefficients(base_mb=900, sampling_mb_per_mp=100, full_decode_mb_per_mp=100,
                              tiled_decode_mb_per_mp=100)
    custom = VramModel(checkpoints={"tiny.ckpt": "tiny"}, families={"tiny": tiny})
    assert custom.estimate_mb("tiny.ckpt", 1000, 1000, 1) == pytest.approx(1000)
    with pytest.raises(ValueError, match="unknown checkpoint families"):
        VramModel(checkpoints={"x": "sd3"})


@pytest.mark.parametrize(("checkpoint", "size", "batch", "tiled", "fits_12gb"), [
    (SD, 768, 4, False, True),      # standard preset at max_batch on the studio's 12 GB card
    (SD, 1024, 2, False, True),     # high preset at max_batch
    (SD, 512, 8, False, True),      # draft preset at max_batch
    (SD, 1024, 4, False, False),
    (XL, 1024, 1, False, False),    # SDXL at 1024 needs tiled decode on 12 GB
    (XL, 1024, 1, True, True),
])
def test_estimates_against_the_12gb_budget(checkpoint: str, size: int, batch: int, tiled: bool,
                                           fits_12gb: bool) -> None:
    estimate = VramModel().estimate_mb(checkpoint, size, size, batch, vae_tiled=tiled)
    assert (estimate <= GPU_PROFILES["12gb"].budget_mb) is fits_12gb


def test_estimates_grow_with_size_and_batch_and_tiling_caps_the_decode() -> None:
    model = VramModel()
    by_batch = [model.estimate_mb(SD, 768, 768, b) for b in range(1, 6)]
    assert by_batch == sorted(by_batch) and len(set(by_batch)) == 5
    assert model.estimate_mb(SD, 1024, 1024, 1) > model.estimate_mb(SD, 512, 512, 1)
    assert model.estimate_mb(XL, 512, 512, 1) > model.estimate_mb(SD, 512, 512, 1)
    tiled = [model.estimate_mb(SD, 1024, 1024, b, vae_tiled=True) for b in (1, 2, 4)]
    full = [model.estimate_mb(SD, 1024, 1024, b) for b in (1, 2, 4)]
    assert all(t < f for t, f in zip(tiled, full, strict=True))
    # a tiled decode costs one tile, whatever the image size or batch
    decode_only = VramModel(checkpoints={"d": "d"}, families={"d": FamilyCoefficients(
        base_mb=0, sampling_mb_per_mp=0, full_decode_mb_per_mp=3000, tiled_decode_mb_per_mp=3000)})
    small_tile = [decode_only.estimate_mb("d", s, s, b, True, 256)
                  for s, b in ((1024, 1), (2048, 4))]
    assert small_tile == [pytest.approx(3000 * 256 * 256 / 1e6)] * 2
    assert decode_only.estimate_mb("d", 2048, 2048, 1, True, 512) < \
        decode_only.estimate_mb("d", 2048, 2048, 1)
    with pytest.raises(ValueError):
        model.estimate_mb(SD, 512, 512, 0)


def test_gpu_profiles_follow_the_studio_guide() -> None:
    assert {k: GPU_PROFILES[k].budget_mb for k in ("8gb", "10gb", "12gb")} == {
        "8gb": 6500, "10gb": 8500, "12gb": 10000}
    for profile in GPU_PROFILES.values():
        assert 0 < profile.budget_mb < profile.vram_total_mb
    assert budget_for(24576) == 22500
    assert budget_for(16384, headroom_mb=4096) == 12200
    with pytest.raises(ValueError):
        budget_for(1024)


T0 = datetime(2026, 11, 20, 22, 0, tzinfo=UTC)


def metrics_row(n: int, checkpoint: str, size: int, batch: int, peak: float | None,
                status: str = "ok", budget: float | None = 10000.0,
                parts: str | None = None) -> BatchMetrics:
    return BatchMetrics(
        run_id="run", batch_id=f"b{n:04d}", server="gpu-a", episode="ep01", preset="standard",
        checkpoint=checkpoint, width=size, height=size, takes=batch, batch_size=batch,
        vae_tiled=False, status=status, attempt=1, finished_at=T0 + timedelta(hours=n),
        vram_peak_mb=peak, vram_budget_mb=budget, sampling_s=0.3 * 15 * size * size / 1e6 * batch,
        parts=parts)


def measured(count: int, true_base: float, true_scale: float) -> list[BatchMetrics]:
    """Peaks of a card whose real behaviour differs from the defaults, with a little jitter."""
    prior = VramModel()
    rows = []
    for n in range(count):
        size, batch = (512, 768, 1024)[n % 3], 1 + n % 2
        act = prior.activation_mb(SD15, size, size, batch)
        jitter = (-60.0, 0.0, 45.0, 20.0)[n % 4]
        rows.append(metrics_row(n, SD, size, batch, true_base + true_scale * act + jitter))
    return rows


def test_calibration_fits_measured_peaks_with_a_margin(tmp_path: Path) -> None:
    store = MetricsStore(tmp_path / "metrics")
    rows = measured(30, true_base=1800.0, true_scale=0.7)
    store.append(rows)
    model = VramModel.calibrated(store.scan(), min_points=20, margin=0.15)
    fit = model.fits[SD15]
    assert fit.points == 30
    assert fit.scale == pytest.approx(0.7, rel=0.05)
    for row in rows:                           # never below what was measured
        estimate = model.estimate_mb(SD, row.width, row.height, row.batch_size)
        assert row.vram_peak_mb is not None
        assert row.vram_peak_mb * 1.15 <= estimate * 1.001
        assert estimate <= (row.vram_peak_mb + 150) * 1.15
    # tighter than the defaults, which were too pessimistic for this card
    assert model.estimate_mb(SD, 768, 768, 4) < VramModel().estimate_mb(SD, 768, 768, 4)
    assert model.families[SDXL] == VramModel().families[SDXL]   # nothing measured


def test_too_few_points_or_no_spread_keep_the_defaults(tmp_path: Path) -> None:
    empty = MetricsStore(tmp_path / "none").scan()
    assert VramModel.calibrated(empty).families == VramModel().families
    few = pl.DataFrame([r.__dict__ for r in measured(10, 1800.0, 0.7)])
    assert VramModel.calibrated(few, min_points=20).families == VramModel().families
    flat = [metrics_row(n, SD, 768, 2, 5000.0 + n % 3) for n in range(40)]
    frame = pl.DataFrame([r.__dict__ for r in flat])
    model = VramModel.calibrated(frame, min_points=20)
    assert model.fits == {} and model.families == VramModel().families


def test_an_oom_batch_pushes_its_estimate_above_the_budget(tmp_path: Path) -> None:
    rows = measured(30, true_base=1800.0, true_scale=0.7)
    oom = metrics_row(99, SD, 1024, 2, None, status="oom", budget=6500.0)
    frame = pl.DataFrame([r.__dict__ for r in [*rows, oom]])
    without = VramModel.calibrated(pl.DataFrame([r.__dict__ for r in rows]), margin=0.0)
    with_oom = VramModel.calibrated(frame, margin=0.0)
    assert without.estimate_mb(SD, 1024, 1024, 2) < 6500
    assert with_oom.estimate_mb(SD, 1024, 1024, 2) > 6500


def test_time_model_calibrates_step_cost_from_sampling_times(tmp_path: Path) -> None:
    rows = measured(30, 1800.0, 0.7)              # sampling_s = 0.3 s per step-megapixel
    frame = pl.DataFrame([r.__dict__ for r in rows])
    model = TimeModel().calibrated(frame, {"standard": 15})
    assert model.step_s_per_mp[SD15] == pytest.approx(0.3)
    assert model.fits == {SD15: 30}
    # SDXL was not measured: scaled like SD1.5, its ratio to SD1.5 stays the default's
    default = TimeModel().step_s_per_mp
    assert model.step_s_per_mp[SDXL] == pytest.approx(default[SDXL] * 0.3 / default[SD15])
    assert model.estimate_seconds(SD15, 1000, 1000, 2, 10) > \
        model.estimate_seconds(SD15, 1000, 1000, 1, 10)
    assert TimeModel().calibrated(frame.head(5), {"standard": 15}) == TimeModel()
    assert TimeModel().calibrated(frame, {"draft": 8}) == TimeModel()   # no such rows


def test_wall_seconds_loads_once_per_server_and_batches_the_share() -> None:
    model = TimeModel()
    one = model.estimate_seconds(SD15, 512, 512, 1, 8)
    four = model.estimate_seconds(SD15, 512, 512, 4, 8)
    load = model.load_seconds(SD15)
    assert model.wall_seconds(SD15, 512, 512, 8, 9, max_batch=4) == pytest.approx(
        load + 2 * four + one)
    assert model.wall_seconds(SD15, 512, 512, 8, 9, max_batch=4, servers=3) == pytest.approx(
        load + model.estimate_seconds(SD15, 512, 512, 3, 8))
    assert model.wall_seconds(SD15, 512, 512, 8, 0) == 0.0


# --- production parts ------------------------------------------------------------------


def plain(checkpoint: str = SD, width: int = 768, height: int = 768, steps: int = 20,
          tiled: bool = False, tile: int = 512) -> ResolvedTake:
    return ResolvedTake(
        episode="ep02", shot_id="sh010", take=0, prompt="ren on the bridge", negative="lowres",
        seed=1, preset="standard", checkpoint=checkpoint, sampler="euler", scheduler="normal",
        steps=steps, cfg=7.0, width=width, height=height, vae_tiled=tiled, vae_tile_size=tile)


@pytest.mark.parametrize(("checkpoint", "width", "height", "batch", "tiled", "tile"), [
    (SD, 512, 512, 1, False, 512), (SD, 768, 768, 4, False, 512), (SD, 1024, 576, 2, True, 256),
    (XL, 1024, 1024, 1, True, 512), (XL, 832, 1216, 3, False, 512),
])
def test_a_plain_take_is_estimated_exactly_as_before(checkpoint: str, width: int, height: int,
                                                      batch: int, tiled: bool, tile: int) -> None:
    take = plain(checkpoint, width, height, tiled=tiled, tile=tile)
    calibrated = VramModel.calibrated(pl.DataFrame([r.__dict__ for r in measured(30, 1800, 0.7)]))
    for vram in (VramModel(), calibrated):
        assert vram.estimate_take_mb(take, batch) == vram.estimate_mb(
            checkpoint, width, height, batch, tiled, tile)
    family = VramModel().family(checkpoint)
    time = TimeModel()
    assert time.estimate_take_seconds(take, batch, family) == time.estimate_seconds(
        family, width, height, batch, take.steps, tiled)


def test_each_part_adds_its_weights_and_its_phase() -> None:
    model = VramModel()
    c, up = model.families[SD15], model.upscale
    base, batch, mp = plain(), 2, 768 * 768 / 1e6
    sampling, decode = c.sampling_mb_per_mp * mp * batch, c.full_decode_mb_per_mp * mp * batch
    plain_est = model.estimate_take(base, batch)
    assert plain_est.resident_mb == c.base_mb
    assert dict(plain_est.phases) == {"sampling": sampling, "decode": decode}

    def est(*names: str, take: ResolvedTake = base, size: int = batch):
        return model.estimate_take(with_parts(take, names), size)

    assert est("lora").resident_mb == c.base_mb + 150 and est("lora").phases == plain_est.phases
    chain = replace(base, loras=(LoraSpec(REN), LoraSpec(CEL, 0.0, 0.0), LoraSpec("x", 0.5, 0)))
    assert model.estimate_take(chain, batch).resident_mb == c.base_mb + 2 * 150   # inert: free
    control = est("control")
    assert control.resident_mb == c.base_mb + 750
    assert dict(control.phases)["sampling"] == pytest.approx(1.25 * sampling)
    # hires: sampled and decoded at 1152x1152, the peak of the larger size
    assert est("hires").peak_mb == pytest.approx(model.estimate_mb(SD, 1152, 1152, batch))
    # img2img encodes one layout frame, never the batch: the batch's decode stays the peak
    assert dict(est("img2img").phases)["encode"] == pytest.approx(c.full_decode_mb_per_mp * mp)
    assert est("img2img").peak_mb == plain_est.peak_mb
    # ... but with a tiled decode at a large size the encode is the peak
    big = plain(width=2048, height=2048, tiled=True)
    assert est("img2img", take=big, size=1).peak_phase == "encode"
    upscale = est("upscale", size=1)
    assert upscale.resident_mb == c.base_mb + up.weights_mb
    assert dict(upscale.phases)["upscale"] == pytest.approx(2 * 1208 + 12 * mp, abs=1)
    assert upscale.peak_phase == "upscale"
    everything = est("lora", "img2img", "control", "hires", "upscale")
    assert everything.resident_mb == c.base_mb + 150 + 750 + up.weights_mb
    assert everything.peak_mb > max(est(n).peak_mb for n in ("lora", "control", "hires"))
    sdxl = VramModel().estimate_take(with_parts(plain(XL, 1024, 1024), ["lora", "control"]), 1)
    assert sdxl.resident_mb == VramModel().families[SDXL].base_mb + 450 + 2550
    with pytest.raises(ValueError):
        model.estimate_take_mb(base, 0)


def test_each_part_adds_its_time() -> None:
    time = TimeModel()
    base, batch = plain(steps=20), 2
    mp, hires_mp, step = 768 * 768 / 1e6, 1152 * 1152 / 1e6, time.step_s_per_mp[SD15]

    def extra(*names: str) -> float:
        take = with_parts(base, names)
        return (time.estimate_take_seconds(take, batch, SD15)
                - time.estimate_take_seconds(base, batch, SD15))

    assert extra("control") == pytest.approx(0.85 * 20 * step * mp * batch + 1.4)
    assert extra("hires") == pytest.approx(10 * step * hires_mp * batch
                                           + time.decode_s_per_mp * (hires_mp - mp) * batch)
    assert extra("lora") == pytest.approx(1.0)
    assert extra("img2img") == pytest.approx(time.decode_s_per_mp * mp)
    assert extra("upscale") == pytest.approx(0.3 + 0.2 * 1536 * 1536 / 1e6 * batch)
    # the ControlNet conditions both passes: the hires steps cost 1.85x too
    assert extra("control", "hires") == pytest.approx(
        1.85 * 20 * step * mp * batch + 1.4 + 1.85 * 10 * step * hires_mp * batch
        + time.decode_s_per_mp * (hires_mp - mp) * batch - 20 * step * mp * batch)
    assert TimeModel().estimate_take_seconds(with_parts(plain(XL), ["lora"]), 1, SDXL) == \
        pytest.approx(TimeModel().estimate_take_seconds(plain(XL), 1, SDXL) + 3.0)


def heavy_rows(count: int, parts: str) -> list[BatchMetrics]:
    """Batches of a heavier graph: far higher peaks and sampling times than plain ones."""
    return [replace(row, batch_id=f"heavy{n}", parts=parts,
                    vram_peak_mb=(row.vram_peak_mb or 0) + 4000,
                    sampling_s=(row.sampling_s or 0) * 5)
            for n, row in enumerate(measured(count, 1800.0, 0.7))]


def test_calibration_fits_plain_txt2img_rows_only(tmp_path: Path) -> None:
    plain_rows = measured(30, 1800.0, 0.7)
    plain_rows[:10] = [replace(r, parts="") for r in plain_rows[:10]]   # "" and null: plain
    store = MetricsStore(tmp_path / "metrics")
    store.append(plain_rows + heavy_rows(30, "lora+control") + heavy_rows(5, "hires"))
    alone = pl.DataFrame([r.__dict__ for r in plain_rows])
    vram = VramModel.calibrated(store.scan())
    assert vram.fits == VramModel.calibrated(alone).fits and vram.fits[SD15].points == 30
    assert vram.families == VramModel.calibrated(alone).families
    time = TimeModel().calibrated(store.scan(), {"standard": 15})
    assert time.step_s_per_mp[SD15] == pytest.approx(0.3) and time.fits == {SD15: 30}
    # a frame without the column (read before it existed) is all plain
    no_column = alone.drop("parts")
    assert VramModel.calibrated(no_column).fits == vram.fits
    assert TimeModel().calibrated(no_column, {"standard": 15}) == time
    # only heavy rows: nothing to fit, the defaults stay
    only_heavy = pl.DataFrame([r.__dict__ for r in heavy_rows(30, "upscale")])
    assert VramModel.calibrated(only_heavy).fits == {}
    assert TimeModel().calibrated(only_heavy, {"standard": 15}) == TimeModel()
