"""A simple render-time model, for balancing work across servers.

seconds(batch) = overhead + steps * step_cost * MP * batch + decode_cost * MP * batch

with step and load costs per checkpoint family. The defaults describe a 12 GB
RTX 3060-class card (SD1.5 at 512x512 runs at roughly 7 it/s there, SDXL at
1024x1024 at roughly 1.5 it/s); only ratios matter for balancing, so a faster card is a
``speed`` on its server rather than another model. :meth:`TimeModel.calibrated` rescales
the step costs to the sampling times measured in the metrics store.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import polars as pl

from tower.planning.vram import SD15, SDXL, VramModel

MEGAPIXEL = 1_000_000


@dataclass(frozen=True)
class TimeModel:
    """Estimated seconds of a render batch and of loading a checkpoint."""

    step_s_per_mp: Mapping[str, float] = field(
        default_factory=lambda: {SD15: 0.55, SDXL: 0.65})
    load_s: Mapping[str, float] = field(default_factory=lambda: {SD15: 4.0, SDXL: 10.0})
    decode_s_per_mp: float = 0.25
    tiled_decode_factor: float = 1.6
    batch_overhead_s: float = 0.5
    default_step_s_per_mp: float = 0.65
    default_load_s: float = 10.0

    def estimate_seconds(self, family: str, width: int, height: int, batch_size: int,
                         steps: int, vae_tiled: bool = False) -> float:
        """Seconds to sample and decode one batch, the checkpoint already loaded."""
        pixels = width * height / MEGAPIXEL * batch_size
        step = self.step_s_per_mp.get(family, self.default_step_s_per_mp)
        decode = self.decode_s_per_mp * pixels * (self.tiled_decode_factor if vae_tiled else 1)
        return self.batch_overhead_s + steps * step * pixels + decode

    def load_seconds(self, family: str) -> float:
        """Seconds to load a checkpoint of ``family`` (a model swap)."""
        return self.load_s.get(family, self.default_load_s)

    def calibrated(self, metrics: pl.LazyFrame | pl.DataFrame, steps_by_preset: Mapping[str, int],
                   vram: VramModel | None = None, min_points: int = 20) -> TimeModel:
        """Step costs refitted per family to the measured ``sampling_s`` of ``ok`` batches.

        The metrics carry no step count, so ``steps_by_preset`` (preset name -> steps)
        supplies it; rows of other presets are ignored. Checkpoint families come from
        ``vram`` (its checkpoint table). A family with fewer than ``min_points`` rows
        keeps its cost.
        """
        family = (vram or VramModel()).family
        frame = metrics.lazy().filter(
            (pl.col("status") == "ok") & pl.col("sampling_s").is_not_null()
            & pl.col("preset").is_in(list(steps_by_preset))
        ).select("checkpoint", "preset", "width", "height", "batch_size", "sampling_s").collect()
        work: dict[str, list[tuple[float, float]]] = {}
        for ck, preset, w, h, b, seconds in frame.iter_rows():
            units = steps_by_preset[preset] * w * h / MEGAPIXEL * b
            work.setdefault(family(ck), []).append((units, seconds))
        costs = dict(self.step_s_per_mp)
        for name, points in work.items():
            if len(points) >= min_points:
                costs[name] = sum(s for _, s in points) / sum(u for u, _ in points)
        return replace(self, step_s_per_mp=costs)
