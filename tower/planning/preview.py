"""Which preset a preview can afford: the best one expected to finish within a budget.

A director asking for a preview in "five minutes" wants the best-looking images that
will actually arrive in five minutes. The estimate comes from the metrics history
(seconds of execution per image, per preset); a preset never rendered here is scaled
from one that was, by its share of work (steps x pixels). The quality preference sets
how much of the budget the estimate may use: ``speed`` keeps half of it in reserve,
``balanced`` a fifth, ``quality`` none.

Pure: the history arrives as a mapping computed by :func:`seconds_per_image`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import polars as pl

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


def seconds_per_image(history: pl.DataFrame) -> dict[str, float]:
    """Median execution seconds per image, per preset, over successful batches.

    ``history`` has METRICS_SCHEMA's columns (``MetricsStore.scan(...).collect()``).
    """
    if history.is_empty():
        return {}
    rows = (history.filter((pl.col("status") == "ok") & (pl.col("execution_s") > 0)
                           & (pl.col("batch_size") > 0))
            .group_by("preset")
            .agg((pl.col("execution_s") / pl.col("batch_size")).median().alias("spi")))
    return {row["preset"]: float(row["spi"]) for row in rows.iter_rows(named=True)}


def estimate_seconds(preset: Preset, images: int, history: Mapping[str, float],
                     presets: Mapping[str, Preset], servers: int = 1) -> float | None:
    """Expected wall seconds to render ``images`` at ``preset`` on ``servers`` servers."""
    if preset.name in history:
        per_image = history[preset.name]
    else:
        known = [(name, spi) for name, spi in history.items() if name in presets]
        if not known:
            return None
        # Scale from the measured preset closest in cost.
        name, spi = min(known, key=lambda item: abs(work(presets[item[0]]) - work(preset)))
        per_image = spi * work(preset) / work(presets[name])
    rounds = -(-images // max(1, servers))
    return per_image * rounds


def choose_preset(presets: Mapping[str, Preset], images: int, history: Mapping[str, float],
                  *, budget_s: float | None = None, preference: Preference = "balanced",
                  servers: int = 1, default: str = DEFAULT_PRESET) -> PresetChoice:
    """The most expensive preset whose estimate fits the preference's share of the budget.

    Without a budget, or without any history to estimate from, the default preset.
    When nothing fits, the cheapest preset (the preview still arrives as soon as it can).

    Raises:
        ValueError: unknown preference or default preset, or a budget that is not positive.
    """
    if preference not in BUDGET_SHARE:
        raise ValueError(f"quality_preference must be one of {', '.join(PREFERENCES)} "
                         f"(got {preference!r})")
    if default not in presets:
        raise ValueError(f"unknown default preset {default!r}")
    if budget_s is None:
        return PresetChoice(default, estimate_seconds(presets[default], images, history,
                                                      presets, servers), "no time budget")
    if budget_s <= 0:
        raise ValueError(f"time_budget_seconds must be positive (got {budget_s})")
    allowed = budget_s * BUDGET_SHARE[preference]
    estimates = {name: estimate_seconds(p, images, history, presets, servers)
                 for name, p in presets.items()}
    known = {name: est for name, est in estimates.items() if est is not None}
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
