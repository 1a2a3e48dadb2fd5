"""Bottleneck verdicts per server and the recommendations that follow from the figures.

Each verdict is a rule over one server's figures with a named threshold, and carries
the numbers that triggered it. Each recommendation names the setting to change and
the figure that argues for it, so a supervisor can check the reasoning in the report.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from tower.report.model import Figures, PresetVram, ServerLoad
from tower.shotlist.presets import Preset

# VRAM-bound: a peak this close to the budget, or any OOM split.
VRAM_NEAR_BUDGET = 0.90
# Headroom: presets whose peak stays under this share of the budget can batch more.
VRAM_LOW_SHARE = 0.50
# Aim for this share of the budget when suggesting a larger batch cap.
VRAM_TARGET_SHARE = 0.80
# Compute-bound: the GPU is busy this much of the active time and sampling dominates.
COMPUTE_BUSY_SHARE = 0.85
COMPUTE_SAMPLING_SHARE = 0.60
# Model-swap-bound: model loading takes this share of GPU execution time.
SWAP_LOAD_SHARE = 0.20
# Pipeline/I-O-bound: the GPU idles this share of the active time, or downloads take this
# share of batch time.
IDLE_SHARE = 0.15
DOWNLOAD_SHARE = 0.25
# Error-bound: this share of attempts failed, or were retries.
ERROR_SHARE = 0.10
RETRY_SHARE = 0.10
# The VRAM model is off when estimates miss measured peaks by this much on average.
VRAM_ESTIMATE_ERROR = 0.25

ERROR_BOUND = "error-bound"
VRAM_BOUND = "VRAM-bound"
SWAP_BOUND = "model-swap-bound"
IO_BOUND = "pipeline/I-O-bound"
COMPUTE_BOUND = "compute-bound"
NO_BOTTLENECK = "no clear bottleneck"


@dataclass(frozen=True)
class Verdict:
    """What limits one server, with the evidence; ``also`` lists other matching verdicts."""

    server: str
    bottleneck: str
    evidence: str
    also: tuple[str, ...] = ()


@dataclass(frozen=True)
class Recommendation:
    """One change to make: the setting, what to do, and the numbers behind it."""

    setting: str
    text: str


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0%}"


def _error_bound(s: ServerLoad) -> str | None:
    if s.failure_share >= ERROR_SHARE or s.retry_share >= RETRY_SHARE:
        return (f"{s.failures} of {s.attempts} attempts failed ({_pct(s.failure_share)}), "
                f"{s.retries} retries ({_pct(s.retry_share)})")
    return None


def _vram_bound(s: ServerLoad) -> str | None:
    near = s.vram_peak_share is not None and s.vram_peak_share >= VRAM_NEAR_BUDGET
    if s.ooms or near:
        return (f"peak VRAM {_mb(s.vram_peak_mb)} of {_mb(s.vram_budget_mb)} budget "
                f"({_pct(s.vram_peak_share)}), {s.ooms} OOM splits")
    return None


def _swap_bound(s: ServerLoad) -> str | None:
    if s.load_share is not None and s.load_share >= SWAP_LOAD_SHARE:
        return (f"{s.model_swaps} model swaps cost {s.model_load_s / 60:.1f} min, "
                f"{_pct(s.load_share)} of GPU time")
    return None


def _io_bound(s: ServerLoad) -> str | None:
    idle = s.idle_share is not None and s.idle_share >= IDLE_SHARE
    slow = s.download_share is not None and s.download_share >= DOWNLOAD_SHARE
    if idle or slow:
        return (f"GPU idle {_pct(s.idle_share)} of its active time between batches, "
                f"downloads {_pct(s.download_share)} of batch time")
    return None


def _compute_bound(s: ServerLoad) -> str | None:
    busy = s.busy_share is not None and s.busy_share >= COMPUTE_BUSY_SHARE
    if busy and s.sampling_share is not None and s.sampling_share >= COMPUTE_SAMPLING_SHARE:
        return f"GPU busy {_pct(s.busy_share)}, sampling {_pct(s.sampling_share)} of GPU time"
    return None


# In priority order: failures hide everything else, and OOMs distort every timing.
RULES: tuple[tuple[str, Callable[[ServerLoad], str | None]], ...] = (
    (ERROR_BOUND, _error_bound), (VRAM_BOUND, _vram_bound), (SWAP_BOUND, _swap_bound),
    (IO_BOUND, _io_bound), (COMPUTE_BOUND, _compute_bound),
)


def _mb(x: float | None) -> str:
    return "n/a" if x is None else f"{x:,.0f} MB"


def verdict(load: ServerLoad) -> Verdict:
    """The bottleneck of one server: the first rule that matches, with its evidence."""
    matched = [(name, ev) for name, rule in RULES if (ev := rule(load)) is not None]
    if not matched:
        return Verdict(load.server, NO_BOTTLENECK,
                       f"GPU busy {_pct(load.busy_share)}, no threshold crossed")
    (name, evidence), rest = matched[0], matched[1:]
    return Verdict(load.server, name, evidence, tuple(n for n, _ in rest))


def verdicts(figures: Figures) -> tuple[Verdict, ...]:
    """One verdict per server that ran in the window."""
    return tuple(verdict(load) for load in figures.loads)


def _vram_recommendation(v: PresetVram, preset: Preset | None) -> Recommendation | None:
    name = v.preset
    pressure = v.ooms > 0 or (v.peak_share is not None and v.peak_share >= VRAM_NEAR_BUDGET)
    why = (f"{v.ooms} batches ran out of memory" if v.ooms
           else f"peak VRAM is {_pct(v.peak_share)} of budget")
    if pressure and not v.vae_tiled:
        return Recommendation(f"preset {name} vae_tiled",
                              f"enable tiled VAE for {name} (preset {name} vae_tiled) "
                              f"because {why}")
    if pressure:
        cap = preset.max_batch if preset else v.max_batch_used
        return Recommendation(f"preset {name} max_batch",
                              f"lower the {name} batch cap (preset {name} max_batch, now {cap}) "
                              f"because {why} even with tiled VAE")
    capped = preset is None or v.max_batch_used >= preset.max_batch
    if v.peak_share is not None and v.peak_share < VRAM_LOW_SHARE and capped and v.ooms == 0:
        cap = preset.max_batch if preset else v.max_batch_used
        suggested = min(64, max(cap + 1, math.floor(cap * VRAM_TARGET_SHARE / v.peak_share)))
        return Recommendation(f"preset {name} max_batch",
                              f"raise the {name} batch cap (preset {name} max_batch, now {cap}, "
                              f"try {suggested}) because peak VRAM is {_pct(v.peak_share)} "
                              f"of budget")
    return None


def _estimate_recommendation(v: PresetVram) -> Recommendation | None:
    if v.estimate_error is None or v.estimate_error < VRAM_ESTIMATE_ERROR:
        return None
    side = "above" if (v.estimate_bias or 0.0) > 0 else "below"
    return Recommendation("VRAM model",
                          f"recalibrate the VRAM model for {v.preset} (VramModel.calibrated "
                          f"on these metrics) because estimates miss the measured peak by "
                          f"{_pct(v.estimate_error)} on average (mostly {side} it)")


def _server_recommendations(s: ServerLoad) -> list[Recommendation]:
    out = []
    if _error_bound(s):
        top = next(iter(s.error_types), "unknown errors")
        out.append(Recommendation(
            f"ComfyUIServer {s.server}",
            f"check or disable {s.server} (its ComfyUIServer block) because "
            f"{_pct(s.failure_share)} of attempts failed and {_pct(s.retry_share)} were "
            f"retries (mostly {top})"))
    if _swap_bound(s):
        out.append(Recommendation(
            "checkpoint order per server",
            f"reorder or pin checkpoints per server (checkpoint order on {s.server}) because "
            f"{s.model_swaps} swaps cost {s.model_load_s / 60:.0f} minutes"))
    if s.idle_share is not None and s.idle_share >= IDLE_SHARE:
        out.append(Recommendation(
            "ComfyUIServer max_queue_depth",
            f"raise queue depth on {s.server} (ComfyUIServer max_queue_depth) because the GPU "
            f"idled {_pct(s.idle_share)} between batches"))
    if s.download_share is not None and s.download_share >= DOWNLOAD_SHARE:
        out.append(Recommendation(
            f"ComfyUIServer {s.server} base_url",
            f"run the flow closer to {s.server} or reach it over a faster link (ComfyUIServer "
            f"base_url) "
            f"because downloads take {_pct(s.download_share)} of batch time"))
    if _compute_bound(s) and not _vram_bound(s):
        out.append(Recommendation(
            "ComfyUIServer servers",
            f"add a ComfyUI server (another ComfyUIServer block) or use fewer steps because "
            f"{s.server} was busy {_pct(s.busy_share)} of its active time, "
            f"{_pct(s.sampling_share)} of it sampling"))
    return out


def recommendations(figures: Figures,
                    presets: Mapping[str, Preset]) -> tuple[Recommendation, ...]:
    """Settings to change, derived only from ``figures``; empty for an empty window."""
    out: list[Recommendation] = []
    for v in figures.vram:
        out.extend(r for r in (_vram_recommendation(v, presets.get(v.preset)),
                               _estimate_recommendation(v)) if r)
    for t in figures.presets:
        if t.target_met is False and t.target_s is not None:
            steps = presets[t.name].steps if t.name in presets else "?"
            out.append(Recommendation(
                f"preset {t.name} steps",
                f"bring {t.name} under its {t.target_s:.0f} s target (preset {t.name} steps, "
                f"now {steps}) because p95 is {t.per_take.p95:.1f} s per take"))
    for s in figures.loads:
        out.extend(_server_recommendations(s))
    return tuple(out)
