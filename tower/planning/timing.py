"""The render-time model: how long a batch takes, a checkpoint load, a whole preview.

seconds(batch) = overhead + steps * step_cost * MP * batch + decode_cost * MP * batch

with step and load costs per checkpoint family. The defaults describe a 12 GB
RTX 3060-class card (SD1.5 at 512x512 runs at roughly 7 it/s there, SDXL at
1024x1024 at roughly 1.5 it/s); for balancing only ratios matter, so a faster card is a
``speed`` on its server rather than another model. :meth:`TimeModel.calibrated` rescales
the step costs to the sampling times measured in the metrics store, and then the
absolute seconds mean something too: the preview picks its preset with
:meth:`TimeModel.wall_seconds` (:func:`tower.planning.preview.choose_preset`). One model
answers "how long will this take" for the planner and the preview alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import polars as pl

from tower.planning.vram import SD15, SDXL, VramModel

MEGAPIXEL = 1_000_000


@dataclass(frozen=True)
class TimeModel:
    """Estimated seconds of a render batch, of loading a checkpoint and of a preview.

    ``fits`` says which families' step costs were measured (family -> batches used);
    empty for the defaults.
    """

    step_s_per_mp: Mapping[str, float] = field(
        default_factory=lambda: {SD15: 0.55, SDXL: 0.65})
    load_s: Mapping[str, float] = field(default_factory=lambda: {SD15: 4.0, SDXL: 10.0})
    decode_s_per_mp: float = 0.25
    tiled_decode_factor: float = 1.6
    batch_overhead_s: float = 0.5
    default_step_s_per_mp: float = 0.65
    default_load_s: float = 10.0
    fits: Mapping[str, int] = field(default_factory=dict)

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

    def wall_seconds(self, family: str, width: int, height: int, steps: int, images: int, *,
                     max_batch: int = 1, servers: int = 1, vae_tiled: bool = False) -> float:
        """Seconds until ``images`` images of one setting are done on ``servers`` servers.

        The images are shared out as evenly as possible; each server loads the
        checkpoint once (a preview cannot count on finding it loaded), then renders its
        share in batches of up to ``max_batch``. The busiest server's time is returned.
        """
        if images < 1:
            return 0.0
        share = -(-images // max(1, servers))
        size = max(1, min(max_batch, share))
        full, rest = divmod(share, size)
        seconds = full * self.estimate_seconds(family, width, height, size, steps, vae_tiled)
        if rest:
            seconds += self.estimate_seconds(family, width, height, rest, steps, vae_tiled)
        return self.load_seconds(family) + seconds

    def calibrated(self, metrics: pl.LazyFrame | pl.DataFrame, steps_by_preset: Mapping[str, int],
                   vram: VramModel | None = None, min_points: int = 20) -> TimeModel:
        """Step costs refitted per family to the measured ``sampling_s`` of ``ok`` batches.

        The metrics carry no step count, so ``steps_by_preset`` (preset name -> steps)
        supplies it; rows of other presets are ignored. Checkpoint families come from
        ``vram`` (its checkpoint table). A family with at least ``min_points`` rows gets
        its measured cost (seconds over step-megapixels, summed over its rows). The
        families left unmeasured are scaled by how the measured ones compare with this
        model (a farm twice as fast as the defaults on SD1.5 is taken to be twice as
        fast on SDXL), so their ratios to the measured families stay the defaults'.
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
        measured = {name: points for name, points in work.items() if len(points) >= min_points}
        if not measured:
            return self
        costs = {name: sum(s for _, s in points) / sum(u for u, _ in points)
                 for name, points in measured.items()}
        ratio = _speed_ratio(measured, self)
        scaled = {name: cost if name in self.fits else cost * ratio
                  for name, cost in self.step_s_per_mp.items()}
        return replace(self, step_s_per_mp={**scaled, **costs},
                       default_step_s_per_mp=self.default_step_s_per_mp * ratio,
                       fits={**self.fits, **{name: len(p) for name, p in measured.items()}})


def _speed_ratio(measured: Mapping[str, list[tuple[float, float]]], prior: TimeModel) -> float:
    """Measured sampling seconds over what ``prior`` predicted for the same work."""
    predicted = sum(units * prior.step_s_per_mp.get(name, prior.default_step_s_per_mp)
                    for name, points in measured.items() for units, _ in points)
    seconds = sum(s for points in measured.values() for _, s in points)
    return seconds / predicted if predicted > 0 else 1.0
