"""Which preset a preview can afford: the best one expected to finish within a budget.

A director asking for a preview in "five minutes" wants the best-looking images that
will actually arrive in five minutes. The estimate is the planner's own
:class:`~tower.planning.timing.TimeModel`, calibrated from the metrics history
(:func:`tower.planning.pipeline.build_models`): the images shared out over the servers,
a checkpoint load on each, then batches of up to the preset's ``max_batch``. A preset
never rendered here is estimated from the families that were (the calibration scales
them all). The quality preference sets how much of the budget the estimate may use:
``speed`` keeps half of it in reserve, ``balanced`` a fifth, ``quality`` none.

A preset's own parts (style LoRAs, hires pass, upscale model) and the shots' (characters,
layouts, line art) cost time: given a sample take resolved at each preset, the estimate
is :meth:`TimeModel.estimate_take_seconds`'s, parts included; without one it is the
preset's plain txt2img time.

The time model's defaults describe a reference card, not this farm: until it has been
calibrated from at least one measured batch, a budget cannot be judged and the default
preset is kept ("no render history to estimate from").

Pure: the time model arrives as an argument.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from tower.planning.timing import TimeModel
from tower.planning.vram import VramModel
from tower.shotlist.presets import Preset
from tower.spec.takes import ResolvedTake
from tower.store.index import IndexRow

Preference = Literal["speed", "balanced", "quality"]
PREFERENCES: tuple[Preference, ...] = ("speed", "balanced", "quality")
# Share of the time budget an estimate may fill, per preference.
BUDGET_SHARE: dict[str, float] = {"speed": 0.5, "balanced": 0.8, "quality": 1.0}
DEFAULT_PRESET = "draft"


@dataclass(frozen=True)
class PresetChoice:
    """The chosen preset, its expected wall time (None if unknown) and why."""

    preset: str
    expected_s: float | None
    reason: str


def work(preset: Preset) -> float:
    """Relative cost of one image: sampler steps times megapixels."""
    return preset.steps * preset.width * preset.height / 1e6


def estimate_seconds(preset: Preset, images: int, time_model: TimeModel, servers: int = 1,
                     vram: VramModel | None = None,
                     sample: ResolvedTake | None = None) -> float | None:
    """Expected wall seconds to render ``images`` at ``preset`` on ``servers`` servers.

    None while ``time_model`` has measured nothing. ``vram`` supplies the checkpoint
    table that names the preset checkpoint's family. ``sample``, a take resolved at
    ``preset``, is timed with its parts (every image taken to be like it).
    """
    if not time_model.fits:
        return None
    family = (vram or VramModel()).family(preset.checkpoint)
    if sample is not None:
        return time_model.wall_take_seconds(sample, family, images,
                                            max_batch=preset.max_batch, servers=servers)
    return time_model.wall_seconds(family, preset.width, preset.height, preset.steps, images,
                                   max_batch=preset.max_batch, servers=servers,
                                   vae_tiled=preset.vae_tiled)


def choose_preset(presets: Mapping[str, Preset], images: int, time_model: TimeModel, *,
                  budget_s: float | None = None, preference: Preference = "balanced",
                  servers: int = 1, default: str = DEFAULT_PRESET,
                  vram: VramModel | None = None,
                  samples: Mapping[str, ResolvedTake] | None = None) -> PresetChoice:
    """The most expensive preset whose estimate fits the preference's share of the budget.

    Without a budget, or without any history to estimate from, the default preset.
    When nothing fits, the cheapest preset (the preview still arrives as soon as it can).
    ``samples`` (preset name -> a take resolved at it) time the presets with their
    parts and the shots'; a preset without a sample is timed as plain txt2img.

    Raises:
        ValueError: unknown preference or default preset, or a budget that is not positive.
    """
    def estimate(name: str) -> float | None:
        return estimate_seconds(presets[name], images, time_model, servers, vram,
                                (samples or {}).get(name))

    if preference not in BUDGET_SHARE:
        raise ValueError(f"quality_preference must be one of {', '.join(PREFERENCES)} "
                         f"(got {preference!r})")
    if default not in presets:
        raise ValueError(f"unknown default preset {default!r}")
    if budget_s is None:
        return PresetChoice(default, estimate(default), "no time budget")
    if budget_s <= 0:
        raise ValueError(f"time_budget_seconds must be positive (got {budget_s})")
    allowed = budget_s * BUDGET_SHARE[preference]
    known = {name: est for name in presets if (est := estimate(name)) is not None}
    if not known:
        return PresetChoice(default, None, "no render history to estimate from")
    fitting = [name for name, est in known.items() if est <= allowed]
    if not fitting:
        cheapest = min(known, key=lambda name: known[name])
        return PresetChoice(cheapest, known[cheapest],
                            f"nothing fits {allowed:.0f}s; cheapest preset")
    best = max(fitting, key=lambda name: (work(presets[name]), -known[name]))
    return PresetChoice(best, known[best],
                        f"best preset expected within {allowed:.0f}s ({preference})")


def reuse_similar(takes: Sequence[ResolvedTake],
                  similar: Mapping[tuple[str, str], Sequence[IndexRow]],
                  ) -> tuple[list[ResolvedTake], list[tuple[ResolvedTake, IndexRow]]]:
    """Stand in existing look-alike images for takes: ``(still to render, reused)``.

    A shot's takes take its look-alike images in order, one image each (never the same
    image twice); takes left over are rendered.
    """
    to_render: list[ResolvedTake] = []
    reused: list[tuple[ResolvedTake, IndexRow]] = []
    used: dict[tuple[str, str], int] = {}
    for take in takes:
        shot = (take.episode, take.shot_id)
        rows = similar.get(shot, ())
        index = used.get(shot, 0)
        if index < len(rows):
            reused.append((take, rows[index]))
            used[shot] = index + 1
        else:
            to_render.append(take)
    return to_render, reused
