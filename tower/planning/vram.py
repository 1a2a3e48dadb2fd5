"""Peak-VRAM estimates for one render batch, and the VRAM budgets of the studio's GPUs.

The model, per checkpoint family, for a plain txt2img batch::

    peak_mb = (base + max(sampling * MP * batch, decode)) * (1 + margin)
    decode  = full_decode * MP * batch          (plain VAEDecode)
            = tiled_decode * tile_MP            (VAEDecodeTiled: one tile at a time,
                                                 one image at a time, whatever the size)

``MP`` is megapixels per image. Sampling and VAE decode run one after the other, so the
peak is the larger of the two on top of the resident weights.

A take with production parts (:mod:`tower.spec.parts`) adds weights and phases; one
entry point, :meth:`VramModel.estimate_take_mb`, sizes every batch (planner, OOM halves)::

    peak_mb  = (resident + max(sampling, decode, encode, upscale)) * (1 + margin)
    resident = base + lora * active LoRAs + controlnet [ControlNet] + upscale_weights [upscale]
    sampling = sampling * MP_s * batch * (1 + controlnet_share [ControlNet])
    decode   = as above, at MP_s
    encode   = full_decode * MP                 [img2img: the one layout frame, VAEEncode]
    upscale  = upscale_tile * scale + image * MP_s * batch          [upscale model]

``MP_s`` is the take's ``sample_size``: with a hires pass the second KSampler and the
decode run at the hires size, and the first pass at the smaller size is never the peak.
A plain take's estimate is exactly :meth:`VramModel.estimate_mb`'s.

Where the defaults come from:

* Weights (fp16, two bytes per parameter). SD1.5: UNet 860M + CLIP ViT-L/14 text
  encoder 123M + VAE 84M parameters (CompVis/Stability SD v1 model card) = 2.1 GB.
  SDXL: UNet 2.6B + CLIP ViT-L 123M + OpenCLIP ViT-bigG 695M + VAE 84M (Podell et al.,
  "SDXL", arXiv:2307.01952, table 1) = 6.9 GB. Both plus ~500-700 MB of CUDA context,
  cuDNN workspace and ComfyUI's own buffers.
* Activations. Community measurements of ComfyUI/diffusers fp16 peaks: SD1.5 at
  512x512 batch 1 peaks around 3 GB (so ~2.4 GB per extra output megapixel of
  sampling); SDXL at 1024x1024 batch 1 peaks at 8-10 GB, and "8 GB minimum" is
  Stability's own figure, reached only with the VAE decoded in tiles. The full-size VAE
  decode is the largest single step at high resolutions (the 128-channel decoder
  blocks run at output resolution): ~3 GB per output megapixel, which is why tiled
  decode (diffusers ``enable_vae_tiling``, ComfyUI ``VAEDecodeTiled``) exists.

Production parts (the CPU figures are ../shared/comfyui-contract/production/README.md,
a real ComfyUI 0.3.64 with real-layout files):

* LoRA (``lora_mb`` per LoRA whose strengths are not both 0; ComfyUI's LoraLoader
  returns the model untouched for those without reading the file). Patches are applied
  into the weights when the model loads (recorded: a strength change re-runs the
  loaders and CLIP); the original weights are backed up off the GPU, so what the GPU
  holds beyond the checkpoint is at most the LoRA's own tensors. The fixture's rank-4
  SD1.5 LoRA is 4.8 MB (1.2 MB per rank); studio character LoRAs are 10-150 MB, so
  SD1.5 counts 150 MB (rank 128). SDXL LoRAs of a rank are ~5.7x larger (sd-scripts'
  rank 32 is ~218 MB): 450 MB covers rank 64.
* ControlNet (``controlnet_mb``, loaded with the model for sampling, recorded
  ``Requested to load ControlNet``). SD1.5: the fixture's ``cldm`` ControlNet is
  361,279,120 parameters, 722 MB in fp16, plus the hint; 750 MB. SDXL: a full SDXL
  ControlNet (diffusers ``controlnet-*-sdxl-1.0``) is 2.5 GB in fp16; 2550 MB.
  ``controlnet_share`` of the sampling activations on top: the ControlNet runs the
  UNet's encoder half on the same latent before each UNet call, and its 13 residuals
  (~100 MB per megapixel for SD1.5 with cfg, computed from the block shapes: 4% of
  the sampling term) stay alive through the UNet's forward; 25% keeps room for the
  ControlNet's own transient buffers that the allocator has not handed back.
* img2img: VAEEncode of the one layout frame at the take's size (RepeatLatentBatch
  copies latents, not images). The encoder is the decoder's mirror with fewer blocks,
  so the full-decode coefficient bounds it.
* Upscale model (:class:`UpscaleCoefficients`): ImageUpscaleWithModel moves the model
  and the decoded batch (fp32 RGB: 12 MB per megapixel) to the GPU and runs 512 px
  tiles, writing the output to the CPU; ComfyUI itself frees ``512*512*3 px * 4 B *
  scale * 384`` (1208 MB per unit of scale) for the tile before it starts
  (``comfy_extras/nodes_upscale_model.py``), and we count the same. Weights: 70 MB,
  an RRDB ESRGAN x4 (RealESRGAN_x4plus: 16.7M parameters in fp32); the fixture's
  compact x2 is 2.4 MB.

These are deliberately on the safe side; :meth:`VramModel.calibrated` refits the
family coefficients to the peaks measured on our own servers (metrics store,
``vram_peak_mb``), from plain txt2img batches only (``parts`` null or empty), so a
heavier graph's peak never inflates what a plain take is given. The part constants are
not refitted.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, replace

import polars as pl

from tower.spec.takes import ResolvedTake

MEGAPIXEL = 1_000_000


@dataclass(frozen=True)
class GpuProfile:
    """A card and the VRAM (MB) the planner may fill on it."""

    name: str
    vram_total_mb: int
    budget_mb: int


DEFAULT_HEADROOM_MB = 2048


def budget_for(vram_total_mb: int, headroom_mb: int = DEFAULT_HEADROOM_MB) -> int:
    """A budget for a card without a profile: total minus headroom, down to 100 MB.

    The headroom covers the desktop, the driver and allocator fragmentation.
    """
    if vram_total_mb <= headroom_mb:
        raise ValueError(f"headroom {headroom_mb} MB leaves nothing of {vram_total_mb} MB")
    return (vram_total_mb - headroom_mb) // 100 * 100


# 8/10/12 GB targets are the studio optimisation guide's; larger cards keep 2 GB free.
GPU_PROFILES: dict[str, GpuProfile] = {
    "8gb": GpuProfile("8gb", 8192, 6500),
    "10gb": GpuProfile("10gb", 10240, 8500),
    "12gb": GpuProfile("12gb", 12288, 10000),
    "16gb": GpuProfile("16gb", 16384, budget_for(16384)),
    "24gb": GpuProfile("24gb", 24576, budget_for(24576)),
    "80gb": GpuProfile("80gb", 81920, budget_for(81920)),
}


@dataclass(frozen=True)
class FamilyCoefficients:
    """The VRAM model of one checkpoint family (MB and MB per megapixel).

    ``lora_mb``, ``controlnet_mb`` and ``controlnet_share`` size the production parts
    made for the family (see the module docstring); calibration leaves them as they are.
    """

    base_mb: float
    sampling_mb_per_mp: float
    full_decode_mb_per_mp: float
    tiled_decode_mb_per_mp: float
    margin: float = 0.0
    lora_mb: float = 150.0
    controlnet_mb: float = 750.0
    controlnet_share: float = 0.25


@dataclass(frozen=True)
class UpscaleCoefficients:
    """ImageUpscaleWithModel's VRAM: weights, one tile per unit of scale, the input batch."""

    weights_mb: float = 70.0
    tile_mb_per_scale: float = 512 * 512 * 3 * 4 * 384 / 1e6   # ComfyUI's own reservation
    image_mb_per_mp: float = 12.0                               # fp32 RGB


SD15 = "sd15"
SDXL = "sdxl"

DEFAULT_FAMILIES: dict[str, FamilyCoefficients] = {
    SD15: FamilyCoefficients(base_mb=2550, sampling_mb_per_mp=2400,
                             full_decode_mb_per_mp=3000, tiled_decode_mb_per_mp=3000,
                             lora_mb=150, controlnet_mb=750),
    SDXL: FamilyCoefficients(base_mb=7300, sampling_mb_per_mp=2000,
                             full_decode_mb_per_mp=3000, tiled_decode_mb_per_mp=3000,
                             lora_mb=450, controlnet_mb=2550),
}

# The phases of a render, in graph order; a batch's peak is in one of them.
SAMPLING, DECODE, ENCODE, UPSCALE = "sampling", "decode", "encode", "upscale"

# Name patterns (lower case, fnmatch) tried in order after the user's table.
DEFAULT_PATTERNS: tuple[tuple[str, str], ...] = (
    ("*sd15*", SD15), ("*sd1.5*", SD15), ("*sd_1.5*", SD15), ("*sd-1.5*", SD15),
    ("*v1-5*", SD15), ("*sd1*", SD15),
    ("*sdxl*", SDXL), ("*xl*", SDXL), ("*pony*", SDXL), ("*illustrious*", SDXL),
    ("*noob*", SDXL),
)


@dataclass(frozen=True)
class TakeVram:
    """A batch's estimated peak and where it comes from.

    ``resident_mb``: the weights held throughout (checkpoint, LoRAs, ControlNet, upscale
    model); ``phases``: what each step of the graph needs on top, in graph order.
    """

    resident_mb: float
    phases: tuple[tuple[str, float], ...]
    margin: float = 0.0

    @property
    def peak_phase(self) -> str:
        """The phase the peak falls in (the first of equals)."""
        return max(self.phases, key=lambda phase: phase[1])[0]

    @property
    def peak_mb(self) -> float:
        return (self.resident_mb + max(mb for _, mb in self.phases)) * (1.0 + self.margin)


@dataclass(frozen=True)
class FamilyFit:
    """How one family was calibrated: points used, fitted line, shift to cover outliers."""

    points: int
    base_mb: float
    scale: float
    shift_mb: float


class VramModel:
    """Estimates peak VRAM of a render batch from its checkpoint, size and decode.

    Args:
        checkpoints: checkpoint name (exact) or fnmatch pattern -> family; checked
            before the built-in patterns.
        families: coefficients per family, merged over :data:`DEFAULT_FAMILIES`.
        default_family: for names nothing matches; SDXL by default, the costlier.
        upscale: the upscale-model coefficients (any family).
    """

    def __init__(self, checkpoints: Mapping[str, str] | None = None,
                 families: Mapping[str, FamilyCoefficients] | None = None,
                 default_family: str = SDXL, upscale: UpscaleCoefficients | None = None):
        self.families = {**DEFAULT_FAMILIES, **(families or {})}
        self.checkpoints = dict(checkpoints or {})
        self.default_family = default_family
        self.upscale = upscale or UpscaleCoefficients()
        self.fits: dict[str, FamilyFit] = {}
        unknown = {*self.checkpoints.values(), default_family} - set(self.families)
        if unknown:
            raise ValueError(f"unknown checkpoint families {sorted(unknown)};"
                             f" known: {sorted(self.families)}")

    def family(self, checkpoint: str) -> str:
        """The family of ``checkpoint``: exact table entry, table pattern, built-in pattern."""
        if checkpoint in self.checkpoints:
            return self.checkpoints[checkpoint]
        name = checkpoint.lower()
        for pattern, family in (*self.checkpoints.items(), *DEFAULT_PATTERNS):
            if fnmatch.fnmatchcase(name, pattern.lower()):
                return family
        return self.default_family

    def activation_mb(self, family: str, width: int, height: int, batch_size: int,
                      vae_tiled: bool = False, tile_size: int = 512) -> float:
        """The part of the peak above the resident weights, before the margin."""
        c = self.families[family]
        phases = _phases(c, width * height / MEGAPIXEL, batch_size, vae_tiled, tile_size)
        return max(mb for _, mb in phases)

    def estimate_mb(self, checkpoint: str, width: int, height: int, batch_size: int,
                    vae_tiled: bool = False, tile_size: int = 512) -> float:
        """Estimated peak VRAM (MB) of rendering ``batch_size`` images in one prompt.

        A plain txt2img batch: :meth:`estimate_take_mb` of a take without parts.
        """
        if batch_size < 1 or width < 1 or height < 1:
            raise ValueError("width, height and batch_size must be positive")
        c = self.families[self.family(checkpoint)]
        phases = _phases(c, width * height / MEGAPIXEL, batch_size, vae_tiled, tile_size)
        return TakeVram(c.base_mb, tuple(phases), c.margin).peak_mb

    def estimate_take_mb(self, take: ResolvedTake, batch_size: int) -> float:
        """Estimated peak VRAM (MB) of ``batch_size`` takes like ``take`` in one prompt.

        The one estimate every batch is sized with: parts included, and for a plain
        txt2img take exactly :meth:`estimate_mb`.
        """
        return self.estimate_take(take, batch_size).peak_mb

    def estimate_take(self, take: ResolvedTake, batch_size: int) -> TakeVram:
        """:meth:`estimate_take_mb` with its resident weights and phases, for messages."""
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        c = self.families[self.family(take.checkpoint)]
        width, height = take.sample_size
        mp = width * height / MEGAPIXEL
        control = take.control is not None
        phases = _phases(c, mp, batch_size, take.vae_tiled, take.vae_tile_size, control)
        resident = (c.base_mb + c.lora_mb * sum(not lora.inert for lora in take.loras)
                    + (c.controlnet_mb if control else 0.0))
        if take.init_image is not None:
            phases.append((ENCODE, c.full_decode_mb_per_mp * take.width * take.height
                           / MEGAPIXEL))
        if take.upscale is not None:
            u = self.upscale
            resident += u.weights_mb
            phases.append((UPSCALE, u.tile_mb_per_scale * take.upscale.scale
                           + u.image_mb_per_mp * mp * batch_size))
        return TakeVram(resident, tuple(phases), c.margin)

    @classmethod
    def calibrated(cls, metrics: pl.LazyFrame | pl.DataFrame, min_points: int = 20,
                   margin: float = 0.15, prior: VramModel | None = None) -> VramModel:
        """A model refitted to measured peaks (``vram_peak_mb`` of ``ok`` batches).

        Per family: least squares of peak = base + scale * activation (the prior's
        activation term), then the base is raised until no measured peak and no
        out-of-memory batch (``status == "oom"``, whose need exceeded its budget) lies
        above the line, then ``margin`` is added. A family with fewer than
        ``min_points`` measured batches, or too little spread in size to fit a slope,
        keeps the prior's coefficients. Metrics carry no tile size: 512 is assumed.
        Only plain txt2img rows count (:func:`plain_rows`): a LoRA, ControlNet, hires or
        upscale batch peaks higher for reasons the plain coefficients do not model.
        """
        prior = prior or cls()
        model = cls(prior.checkpoints, prior.families, prior.default_family, prior.upscale)
        frame = _calibration_rows(metrics, prior)
        for family in sorted(set(frame["family"].to_list())):
            rows = frame.filter(pl.col("family") == family)
            fit = _fit_family(rows, min_points)
            if fit is None:
                continue
            c = model.families[family]
            model.families[family] = replace(
                c, base_mb=fit.base_mb + fit.shift_mb,
                sampling_mb_per_mp=c.sampling_mb_per_mp * fit.scale,
                full_decode_mb_per_mp=c.full_decode_mb_per_mp * fit.scale,
                tiled_decode_mb_per_mp=c.tiled_decode_mb_per_mp * fit.scale, margin=margin)
            model.fits[family] = fit
        return model


def _phases(c: FamilyCoefficients, mp: float, batch_size: int, vae_tiled: bool,
            tile_size: int, control: bool = False) -> list[tuple[str, float]]:
    """Sampling (``controlnet_share`` more with a ControlNet) and VAE decode activations.

    The decode is the whole batch, or with a tiled decode one tile of one image. Every
    estimate, plain or with parts, starts from these.
    """
    sampling = c.sampling_mb_per_mp * mp * batch_size
    if control:
        sampling *= 1.0 + c.controlnet_share
    if vae_tiled:
        decode = c.tiled_decode_mb_per_mp * min(tile_size * tile_size / MEGAPIXEL, mp)
    else:
        decode = c.full_decode_mb_per_mp * mp * batch_size
    return [(SAMPLING, sampling), (DECODE, decode)]


def plain_rows(metrics: pl.LazyFrame | pl.DataFrame) -> pl.LazyFrame:
    """The metrics rows of plain txt2img batches, which the planning models are fitted to.

    ``parts`` is empty for those, and null in rows written before the column existed
    (all plain); a frame without the column at all is taken as plain throughout.
    """
    frame = metrics.lazy()
    if "parts" not in frame.collect_schema().names():
        return frame
    return frame.filter(pl.col("parts").is_null() | (pl.col("parts") == ""))


def _calibration_rows(metrics: pl.LazyFrame | pl.DataFrame, prior: VramModel) -> pl.DataFrame:
    """ok rows with a measured peak and oom rows with a budget, with family and activation."""
    frame = plain_rows(metrics).filter(
        ((pl.col("status") == "ok") & pl.col("vram_peak_mb").is_not_null())
        | ((pl.col("status") == "oom") & pl.col("vram_budget_mb").is_not_null())
    ).select("checkpoint", "width", "height", "batch_size", "vae_tiled", "status",
             "vram_peak_mb", "vram_budget_mb").collect()
    families = [prior.family(name) for name in frame["checkpoint"].to_list()]
    acts = [prior.activation_mb(f, w, h, b, t)
            for f, w, h, b, t in zip(families, frame["width"], frame["height"],
                                     frame["batch_size"], frame["vae_tiled"], strict=True)]
    return frame.with_columns(pl.Series("family", families, dtype=pl.String),
                              pl.Series("act", acts, dtype=pl.Float64))


def _fit_family(rows: pl.DataFrame, min_points: int) -> FamilyFit | None:
    measured = rows.filter(pl.col("status") == "ok")
    if measured.height < max(min_points, 2):
        return None
    x, y = measured["act"], measured["vram_peak_mb"]
    mean_x, mean_y = float(x.mean()), float(y.mean())  # type: ignore[arg-type]
    var = float(((x - mean_x) ** 2).sum())
    if var <= 1e-9 * max(mean_x * mean_x, 1.0) * measured.height:
        return None
    scale = float(((x - mean_x) * (y - mean_y)).sum()) / var
    if scale <= 0:
        return None
    base = mean_y - scale * mean_x
    shift = max(0.0, float((y - (base + scale * x)).max()))  # type: ignore[arg-type]
    ooms = rows.filter(pl.col("status") == "oom")
    if ooms.height:
        short = ooms["vram_budget_mb"] - (base + shift + scale * ooms["act"])
        shift += max(0.0, float(short.max()) + 1.0)  # type: ignore[arg-type]
    return FamilyFit(points=measured.height, base_mb=base, scale=scale, shift_mb=shift)
