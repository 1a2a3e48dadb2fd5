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

A take with production parts costs more; :meth:`TimeModel.estimate_take_seconds` is
the one estimate every batch is timed with (a plain take's equals
:meth:`TimeModel.estimate_seconds`)::

    seconds = overhead + steps * step * MP * batch * cn + decode * MP_s * batch
              + hires.steps * step * MP_s * batch * cn            [hires]
              + decode * MP                                       [img2img: VAEEncode]
              + lora_patch * active LoRAs + controlnet_load       [LoRA, ControlNet]
              + upscale_load + upscale * MP_out * batch           [upscale model]
    cn = 1 + controlnet_step_share with a ControlNet (both passes), else 1

``MP_s`` is the sampled size (the hires size with a hires pass), ``MP_out`` the stored
image's. Sources (CPU runs of a real ComfyUI 0.3.64 with real-layout files,
../shared/comfyui-contract/production/README.md "Timings", 2-step 64x64 renders):

* ControlNet: 3.2 s against 1.75 s without, so sampling with it costs about 1.85x per
  step (``controlnet_step_share`` 0.85; on a GPU it is likely less, the safe side).
  Its loader runs again after any other graph (ComfyUI keeps only the latest prompt's
  nodes; recorded 3.80-3.96 s reloaded against 3.21-3.25 s cached), so its load is
  counted per batch: 722 MB (SD1.5) or ~2.5 GB (SDXL) at this model's own checkpoint
  load rate (4 s for SD1.5's 2.1 GB): 1.4 s and 3.7 s.
* LoRA: a strength change re-ran the loaders, the patching and CLIP: 4.85 s against
  2.83 s; CLIP alone re-running costs ~0.5 s (2.87 s against 2.38 s without LoRAs),
  so two rank-4 LoRAs cost ~1.5 s, ~0.75 s each on two CPU cores. Patching touches
  every targeted weight, whatever the rank: 1 s per LoRA for SD1.5, 3 s for SDXL (3x
  the UNet weights), counted per batch like the ControlNet load.
* Hires: a second KSampler at the hires size. KSampler runs ``steps`` model calls
  whatever its denoise (recorded progress ``max`` equals steps at denoise 0.5 and 0.6).
  Its latent is decoded at the hires size.
* img2img: one VAEEncode of the layout at the take's size, costed like a decode.
* Upscale model: not measured on a GPU. On CPU the compact x2 ran to 192x192 in 0.09 s
  with its loader. ``upscale_s_per_mp`` 0.2 s per output megapixel is an estimate for an
  RRDB ESRGAN x4 on the reference card, the heavy end (compact models are far
  cheaper); ``upscale_load_s`` 0.3 s, as ComfyUI moves the model to the GPU and back
  for every batch.

Calibration reads plain txt2img rows only (``parts`` null or empty), so heavier graphs
do not inflate the step cost of plain ones; the part costs above are not refitted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import polars as pl

from tower.planning.vram import SD15, SDXL, VramModel, plain_rows
from tower.spec.takes import ResolvedTake

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
    controlnet_step_share: float = 0.85
    controlnet_load_s: Mapping[str, float] = field(
        default_factory=lambda: {SD15: 1.4, SDXL: 3.7})
    lora_patch_s: Mapping[str, float] = field(default_factory=lambda: {SD15: 1.0, SDXL: 3.0})
    upscale_s_per_mp: float = 0.2
    upscale_load_s: float = 0.3

    def estimate_seconds(self, family: str, width: int, height: int, batch_size: int,
                         steps: int, vae_tiled: bool = False) -> float:
        """Seconds to sample and decode one batch, the checkpoint already loaded."""
        pixels = width * height / MEGAPIXEL * batch_size
        return self._batch_seconds(family, steps, pixels, pixels, vae_tiled)

    def estimate_take_seconds(self, take: ResolvedTake, batch_size: int, family: str) -> float:
        """Seconds to render ``batch_size`` takes like ``take`` in one prompt, parts included.

        ``family`` is the take's checkpoint family (:meth:`VramModel.family`). The
        checkpoint itself is taken as loaded (:meth:`load_seconds` is the planner's to
        add); a ControlNet load and LoRA patching are counted in every batch.
        """
        control = 1.0 + self.controlnet_step_share if take.control is not None else 1.0
        pixels = take.width * take.height / MEGAPIXEL * batch_size
        sampled = take.sample_size[0] * take.sample_size[1] / MEGAPIXEL * batch_size
        seconds = self._batch_seconds(family, take.steps, pixels, sampled, take.vae_tiled,
                                      control)
        if take.hires is not None:
            seconds += take.hires.steps * self._step_s(family) * sampled * control
        if take.init_image is not None:
            seconds += self.decode_s_per_mp * take.width * take.height / MEGAPIXEL
        loras = sum(not lora.inert for lora in take.loras)
        seconds += loras * _by_family(self.lora_patch_s, family)
        if take.control is not None:
            seconds += _by_family(self.controlnet_load_s, family)
        if take.upscale is not None:
            width, height = take.output_size
            seconds += (self.upscale_load_s
                        + self.upscale_s_per_mp * width * height / MEGAPIXEL * batch_size)
        return seconds

    def _step_s(self, family: str) -> float:
        return self.step_s_per_mp.get(family, self.default_step_s_per_mp)

    def _batch_seconds(self, family: str, steps: int, pixels: float, decoded: float,
                       vae_tiled: bool, control: float = 1.0) -> float:
        """Overhead, ``steps`` over ``pixels`` (MP x batch, ``control`` times the step
        cost) and a decode of ``decoded``: the plain formula every estimate starts from."""
        decode = self.decode_s_per_mp * decoded * (self.tiled_decode_factor if vae_tiled else 1)
        return self.batch_overhead_s + steps * self._step_s(family) * pixels * control + decode

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
        return self._wall(lambda size: self.estimate_seconds(
            family, width, height, size, steps, vae_tiled), family, images, max_batch, servers)

    def wall_take_seconds(self, take: ResolvedTake, family: str, images: int, *,
                          max_batch: int = 1, servers: int = 1) -> float:
        """:meth:`wall_seconds` for ``images`` takes like ``take``, timed with its parts."""
        return self._wall(lambda size: self.estimate_take_seconds(take, size, family),
                          family, images, max_batch, servers)

    def _wall(self, batch_seconds: Callable[[int], float], family: str, images: int,
              max_batch: int, servers: int) -> float:
        if images < 1:
            return 0.0
        share = -(-images // max(1, servers))
        size = max(1, min(max_batch, share))
        full, rest = divmod(share, size)
        seconds = full * batch_seconds(size)
        if rest:
            seconds += batch_seconds(rest)
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
        Only plain txt2img rows count (:func:`tower.planning.vram.plain_rows`): a
        ControlNet or hires batch samples longer per step-megapixel of its take.
        """
        family = (vram or VramModel()).family
        frame = plain_rows(metrics).filter(
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


def _by_family(costs: Mapping[str, float], family: str) -> float:
    """``family``'s cost, or the largest one for a family the table does not name."""
    return costs.get(family, max(costs.values(), default=0.0))


def _speed_ratio(measured: Mapping[str, list[tuple[float, float]]], prior: TimeModel) -> float:
    """Measured sampling seconds over what ``prior`` predicted for the same work."""
    predicted = sum(units * prior.step_s_per_mp.get(name, prior.default_step_s_per_mp)
                    for name, points in measured.items() for units, _ in points)
    seconds = sum(s for points in measured.values() for _, s in points)
    return seconds / predicted if predicted > 0 else 1.0
