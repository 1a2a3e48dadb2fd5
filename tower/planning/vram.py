"""Peak-VRAM estimates for one render batch, and the VRAM budgets of the studio's GPUs.

The model, per checkpoint family::

    peak_mb = (base + max(sampling * MP * batch, decode)) * (1 + margin)
    decode  = full_decode * MP * batch          (plain VAEDecode)
            = tiled_decode * tile_MP            (VAEDecodeTiled: one tile at a time,
                                                 one image at a time, whatever the size)

``MP`` is output megapixels per image. Sampling and VAE decode run one after the other,
so the peak is the larger of the two on top of the resident weights.

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

These are deliberately on the safe side; :meth:`VramModel.calibrated` refits them to
the peaks measured on our own servers (metrics store, ``vram_peak_mb``).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, replace

import polars as pl

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
    """The VRAM model of one checkpoint family (MB and MB per megapixel)."""

    base_mb: float
    sampling_mb_per_mp: float
    full_decode_mb_per_mp: float
    tiled_decode_mb_per_mp: float
    margin: float = 0.0


SD15 = "sd15"
SDXL = "sdxl"

DEFAULT_FAMILIES: dict[str, FamilyCoefficients] = {
    SD15: FamilyCoefficients(base_mb=2550, sampling_mb_per_mp=2400,
                             full_decode_mb_per_mp=3000, tiled_decode_mb_per_mp=3000),
    SDXL: FamilyCoefficients(base_mb=7300, sampling_mb_per_mp=2000,
                             full_decode_mb_per_mp=3000, tiled_decode_mb_per_mp=3000),
}

# Name patterns (lower case, fnmatch) tried in order after the user's table.
DEFAULT_PATTERNS: tuple[tuple[str, str], ...] = (
    ("*sd15*", SD15), ("*sd1.5*", SD15), ("*sd_1.5*", SD15), ("*sd-1.5*", SD15),
    ("*v1-5*", SD15), ("*sd1*", SD15),
    ("*sdxl*", SDXL), ("*xl*", SDXL), ("*pony*", SDXL), ("*illustrious*", SDXL),
    ("*noob*", SDXL),
)


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
    """

    def __init__(self, checkpoints: Mapping[str, str] | None = None,
                 families: Mapping[str, FamilyCoefficients] | None = None,
                 default_family: str = SDXL):
        self.families = {**DEFAULT_FAMILIES, **(families or {})}
        self.checkpoints = dict(checkpoints or {})
        self.default_family = default_family
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
        mp = width * height / MEGAPIXEL
        sampling = c.sampling_mb_per_mp * mp * batch_size
        if vae_tiled:
            decode = c.tiled_decode_mb_per_mp * min(tile_size * tile_size / MEGAPIXEL, mp)
        else:
            decode = c.full_decode_mb_per_mp * mp * batch_size
        return max(sampling, decode)

    def estimate_mb(self, checkpoint: str, width: int, height: int, batch_size: int,
                    vae_tiled: bool = False, tile_size: int = 512) -> float:
        """Estimated peak VRAM (MB) of rendering ``batch_size`` images in one prompt."""
        if batch_size < 1 or width < 1 or height < 1:
            raise ValueError("width, height and batch_size must be positive")
        family = self.family(checkpoint)
        c = self.families[family]
        act = self.activation_mb(family, width, height, batch_size, vae_tiled, tile_size)
        return (c.base_mb + act) * (1.0 + c.margin)

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
        """
        prior = prior or cls()
        model = cls(prior.checkpoints, prior.families, prior.default_family)
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


def _calibration_rows(metrics: pl.LazyFrame | pl.DataFrame, prior: VramModel) -> pl.DataFrame:
    """ok rows with a measured peak and oom rows with a budget, with family and activation."""
    frame = metrics.lazy().filter(
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
