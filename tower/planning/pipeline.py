"""One way to plan a run: shot list -> takes -> decode -> dedup -> reuse -> batches.

``tower plan``, the nightly render and the preview all call :func:`plan_run`, so the
plan the command prints is the plan a flow renders, batch for batch:

1. read and validate the shot list (or take one already built, a preview's free prompt);
2. a preview with a time budget chooses its preset first
   (:func:`tower.planning.preview.choose_preset`);
3. resolve the takes (preset override, shot filter);
4. decide each take's VAE decode (:func:`tower.planning.planner.apply_decode_policy`),
   then give it its model identity (:func:`apply_model_identity`; refused when two
   servers hold different files under one name);
5. dedup against the output index (a forced run collapses duplicates only);
6. optionally stand in look-alike images already indexed (``reuse="similar"``);
7. plan the batches (a forced run's batches carry its :func:`force_token`).

Models. :func:`build_models` fits the models to the metrics history:

* VRAM: :meth:`VramModel.calibrated` with its own rule, ``VRAM_MIN_BATCHES`` measured
  peaks of a family with some spread in size. It fits a line, and an estimate too low
  is an out-of-memory batch.
* Batch caps: :func:`tower.planning.caps.batch_caps`, per (server, preset), from the
  batches that ran out of memory: the next plan uses the size the run halved to on that
  server, whatever the family-wide VRAM model says.
* Time: :meth:`TimeModel.calibrated` as soon as a family has ``TIME_MIN_BATCHES``
  measured batch(es). Its step cost is a ratio of sums, an average that a few batches
  already give, and a wrong time costs balance or a preview's preset, never a failed
  render; a preview can thus follow the farm's speed from its first measured batch.

Render keys. A take is decoded tiled only if it fits no server whole under the default
VRAM model; calibration changes batch sizes, never keys. The decode mode is part of the
render key and dedup compares keys with those of earlier nights: a model refitted to
each night's metrics would move keys with it, and the index would stop recognising
what it holds. So step 4 always uses ``VramModel()``, and step 7 plans with the
calibrated model, which never switches a decode: a take the calibrated model says fits
no server whole is planned alone on the largest server, with a warning, not re-tiled.

No clock, no environment, no Prefect: paths, presets, servers, the data root and the
metrics frame are arguments; :func:`recent_metrics` reads the frame for a given day.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Literal

import polars as pl

from tower.comfyui import (
    ComfyUIPreflightError,
    ServerModels,
    header_conflicts,
    model_fingerprint,
)
from tower.planning.caps import BatchCap, CapKey, batch_caps, cap_sizes
from tower.planning.planner import (
    Plan,
    PlanningError,
    ServerSpec,
    apply_decode_policy,
    force_token,
    plan_batches,
)
from tower.planning.preview import Preference, PresetChoice, choose_preset, reuse_similar
from tower.planning.timing import TimeModel
from tower.planning.vram import VramModel
from tower.shotlist.presets import Preset, model_revisions
from tower.shotlist.shots import ShotList, read_shot_list
from tower.spec.cropping import aspect_warnings
from tower.spec.takes import ResolvedTake, resolve_shot, resolve_takes
from tower.store.files import DataRoot
from tower.store.index import DedupResult, IndexRow, OutputIndex, collapse_duplicates
from tower.store.metrics import MetricsStore

Reuse = Literal["exact", "similar", "none"]
REUSE_MODES: tuple[Reuse, ...] = ("exact", "similar", "none")
HISTORY_DAYS = 30
VRAM_MIN_BATCHES = 20
TIME_MIN_BATCHES = 1

__all__ = [
    "HISTORY_DAYS", "PlanningModels", "PresetBudget", "Reuse", "RunPlan", "build_models",
    "plan_run", "recent_metrics",
]


@dataclass(frozen=True)
class PlanningModels:
    """The VRAM and time models a run was planned with, and its batch-size caps."""

    vram: VramModel = field(default_factory=VramModel)
    time: TimeModel = field(default_factory=TimeModel)
    caps: Mapping[CapKey, BatchCap] = field(default_factory=dict)

    def describe(self) -> list[str]:
        """One line per calibrated family, or what stayed at the defaults, and one per
        batch-size cap, for people."""
        lines = [f"VRAM model for {family} calibrated from {fit.points} measured batches"
                 for family, fit in sorted(self.vram.fits.items())]
        if not self.vram.fits:
            lines.append(f"default VRAM model (fewer than {VRAM_MIN_BATCHES} measured "
                         f"batches of any checkpoint family)")
        lines += [f"time model for {family} calibrated from {points} measured batches"
                  for family, points in sorted(self.time.fits.items())]
        if not self.time.fits:
            lines.append("default time model (no measured batches)")
        lines += [cap.describe() for _, cap in sorted(self.caps.items())]
        return lines


def recent_metrics(root: DataRoot, today: date, days: int = HISTORY_DAYS) -> pl.DataFrame:
    """The metrics rows the models are fitted to: the ``days`` days up to ``today``.

    Recent rows only, so the models follow the farm as cards and drivers change.
    """
    return MetricsStore(root.metrics).query(lambda frame: frame.collect(),
                                            since=today - timedelta(days=days))


def build_models(metrics: pl.LazyFrame | pl.DataFrame | None,
                 presets: Mapping[str, Preset]) -> PlanningModels:
    """The VRAM and time models fitted to ``metrics``, and the batch-size caps its
    out-of-memory batches set (the defaults, no caps, for None).

    Step counts come from ``presets``: the metrics rows name their preset, not its steps.
    """
    if metrics is None:
        return PlanningModels()
    vram = VramModel.calibrated(metrics, min_points=VRAM_MIN_BATCHES)
    steps = {name: preset.steps for name, preset in presets.items()}
    time = TimeModel().calibrated(metrics, steps, vram=vram, min_points=TIME_MIN_BATCHES)
    return PlanningModels(vram, time, batch_caps(metrics))


@dataclass(frozen=True)
class PresetBudget:
    """A preview's wish: the best preset expected within ``seconds`` (None: no budget)."""

    seconds: float | None = None
    preference: Preference = "balanced"


@dataclass(frozen=True)
class RunPlan:
    """Everything a run's planning decided, for the flows and ``tower plan``.

    ``takes`` are every take asked for, decode decided; ``to_render`` what is left after
    dedup and look-alike reuse, exactly the takes of ``plan``.
    """

    shot_list: ShotList
    source: str | None
    takes: list[ResolvedTake]
    dedup: DedupResult
    reused: list[tuple[ResolvedTake, IndexRow]]
    to_render: list[ResolvedTake]
    plan: Plan
    models: PlanningModels
    warnings: list[str] = field(default_factory=list)
    choice: PresetChoice | None = None

    @property
    def episode(self) -> str:
        return self.shot_list.episode

    @property
    def takes_deduped(self) -> int:
        """Takes that need no render of their own: indexed, shared or a look-alike."""
        return self.dedup.deduplicated + len(self.reused)

    def served_paths(self) -> dict[str, str]:
        """Render key -> output path (under the render root) of every image not rendered."""
        return self.dedup.served_paths() | {t.key: row.output_path for t, row in self.reused}


def plan_run(shot_list: str | Path | ShotList, *, presets: Mapping[str, Preset],
             servers: Sequence[ServerSpec], data_root: DataRoot,
             metrics: pl.LazyFrame | pl.DataFrame | None = None, preset: str | None = None,
             shots: Collection[str] | None = None, force: bool = False,
             reuse: Reuse = "exact", run_id: str | None = None,
             budget: PresetBudget | None = None) -> RunPlan:
    """Plan one run (see the module docstring for the steps and the decode rule).

    Args:
        shot_list: a path (``-`` for stdin), or a list already built.
        metrics: the history the models are fitted to (:func:`recent_metrics`).
        preset: render every shot at this preset; ``budget`` chooses it instead.
        shots: only these shot ids.
        force: render every take again (``reuse="none"`` too); needs ``run_id``, the
            orchestrator's run id, for the batches' prompt ids.
        reuse: ``exact`` skips indexed takes; ``similar`` also takes look-alike images
            (not when forced); ``none`` renders everything, like ``force``.

    Raises:
        InputError: the shot list, with every problem's file, line and field.
        PlanningError: an unknown preset or shot id, or what the planner refuses.
        ValueError: a bad ``reuse``, budget or preference, or a forced run without id.
    """
    if reuse not in REUSE_MODES:
        raise ValueError(f"reuse must be one of {', '.join(REUSE_MODES)} (got {reuse!r})")
    listed, source, warnings = _read(shot_list, presets)
    models = build_models(metrics, presets)
    choice = None
    if budget is not None:
        if preset is not None:
            raise ValueError("give a preset or a time budget, not both")
        choice = _choose(listed, presets, shots, servers, models, budget)
        preset = choice.preset
    takes = apply_decode_policy(_resolve(listed, presets, preset, shots), servers, presets)
    takes = apply_model_identity(takes, servers, model_revisions(presets))
    forced = force or reuse == "none"
    index = OutputIndex(data_root.index)
    dedup = collapse_duplicates(takes) if forced else index.dedup(takes, data_root.renders)
    to_render, reused = dedup.to_render, []
    if reuse == "similar" and not forced:
        to_render, reused = reuse_similar(to_render, index.similar(to_render))
    fresh = force_token(run_id or "") if forced else None
    plan = plan_batches(to_render, servers, presets, models.vram, models.time, fresh=fresh,
                        caps=cap_sizes(models.caps))
    return RunPlan(listed, source, takes, dedup, reused, to_render, plan, models,
                   warnings + aspect_warnings(takes) + _over_budget(plan, servers), choice)


def apply_model_identity(takes: Sequence[ResolvedTake], servers: Sequence[ServerSpec],
                         revisions: Mapping[str, str]) -> list[ResolvedTake]:
    """The takes with the fingerprints of their model files (see :mod:`tower.spec.keys`).

    A file's fingerprint is what the servers' inventories read from its header
    (:class:`tower.comfyui.ServerModels`), with the presets file's revision for its name.
    A file no server was asked about (``tower plan``, an unreachable farm) gets none, so
    its takes keep name-based keys, whatever its revision.

    Raises:
        ComfyUIPreflightError: two servers hold different files under one name, naming
            the file and the servers; a render key could not say which model it used.
    """
    headers = {s.name: s.models.headers for s in servers if isinstance(s.models, ServerModels)}
    if not headers:
        return list(takes)
    needed = {name for take in takes for name in take.model_names}
    conflicts = header_conflicts(headers, needed)
    if conflicts:
        raise ComfyUIPreflightError(
            "the servers of this run disagree about model files, nothing was queued (a"
            " render key would stand for two models):\n"
            + "\n".join(f"- {line}" for line in conflicts))
    fingerprints: dict[str, str] = {}
    for name in needed:
        answers = [digests[name] for digests in headers.values() if name in digests]
        if answers:
            revision = revisions.get(name.split("/", 1)[1])
            fingerprints[name] = model_fingerprint(answers[0], revision)
    return [take.with_model_identity(fingerprints) for take in takes]


def _read(shot_list: str | Path | ShotList, presets: Mapping[str, Preset],
          ) -> tuple[ShotList, str | None, list[str]]:
    """The validated list, where it came from, and its warnings as text."""
    if isinstance(shot_list, ShotList):
        return shot_list, None, []
    loaded = read_shot_list(shot_list, presets)
    return loaded.shot_list, loaded.source, [str(w) for w in loaded.warnings]


def _resolve(shot_list: ShotList, presets: Mapping[str, Preset], preset: str | None,
             shots: Collection[str] | None) -> list[ResolvedTake]:
    try:
        return resolve_takes(shot_list, presets, preset, set(shots) if shots else None)
    except KeyError as err:
        raise PlanningError(err.args[0]) from None


def _choose(shot_list: ShotList, presets: Mapping[str, Preset], shots: Collection[str] | None,
            servers: Sequence[ServerSpec], models: PlanningModels,
            budget: PresetBudget) -> PresetChoice:
    """The preview's preset, from the images it asks for and the calibrated time model.

    The images are counted by resolving the takes as the shot list asks, so the count
    follows the same rules (defaults, shot filter) as the takes finally rendered; each
    preset is timed on the list's first take resolved at it, with its parts (LoRAs,
    layout, hires...) and the preset's own. Only that first shot is resolved per preset.
    """
    images = len(_resolve(shot_list, presets, None, shots))
    first = next(s for s in shot_list.shots if not shots or s.id in shots)
    samples = {name: resolve_shot(shot_list, first, p)[0] for name, p in presets.items()}
    return choose_preset(presets, images, models.time, budget_s=budget.seconds,
                         preference=budget.preference, servers=len(servers),
                         vram=models.vram, samples=samples)


def _over_budget(plan: Plan, servers: Sequence[ServerSpec]) -> list[str]:
    """A warning per batch whose calibrated estimate exceeds its server's budget."""
    budgets = {s.name: s.vram_budget_mb for s in servers}
    return [f"{b.label}: the calibrated VRAM model estimates {b.vram_estimate_mb:.0f} MB for"
            f" one take, above every budget; planned alone on {b.server}"
            f" ({budgets[b.server]:.0f} MB) with the {_decode(b.vae_tiled)} VAE decode the"
            f" default model chose, so its render key stays; {_remedy(b.vae_tiled)}"
            for b in plan.batches if b.vram_estimate_mb > budgets[b.server]]


def _decode(tiled: bool) -> str:
    return "tiled" if tiled else "full"


def _remedy(tiled: bool) -> str:
    if tiled:
        return "lower the preset's vae_tile_size or the resolution if it runs out of memory"
    return "set the preset's vae_tiled to decode it tiled if it runs out of memory"
