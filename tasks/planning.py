"""The task that turns a shot list into the batches still to render.

One task around :func:`tower.planning.pipeline.plan_run`, the same planning that
``tower plan`` prints: it reads the metrics history, plans, logs what was decided and
publishes the plan table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, timedelta
from logging import Logger, LoggerAdapter
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from tower.planning.batches import Plan, ServerSpec
from tower.planning.pipeline import (
    HISTORY_DAYS,
    PresetBudget,
    Reuse,
    RunPlan,
    plan_run,
    recent_metrics,
)
from tower.runtime.runs import RunArtifacts, RunKind
from tower.shotlist.presets import Preset
from tower.shotlist.shots import ShotList
from tower.store.files import DataRoot
from tower.store.index import OutputIndex
from tower.store.metrics import MetricsStore


@task(name="plan-run", cache_policy=NO_CACHE)
def plan_run_task(shot_list: str | Path | ShotList, presets: Mapping[str, Preset],
                  servers: Sequence[ServerSpec], root: DataRoot, *, today: date,
                  kind: RunKind, preset: str | None = None,
                  shots: Sequence[str] | None = None, force: bool = False,
                  reuse: Reuse = "exact", run_id: str | None = None,
                  budget: PresetBudget | None = None) -> RunPlan:
    """Plan the run against the output index and the last days' metrics; publish the plan.

    ``today`` is the flow's start day (the metrics window ends there); ``kind`` names
    the plan artifact (:class:`tower.runtime.runs.RunArtifacts`). ``run_id``, the flow
    run id, gives a forced run's batches prompt ids and graphs of their own, so ComfyUI
    renders them again (:mod:`tower.spec.graph`). The table lists each batch's ComfyUI
    prompt id, forced ones included: a cancellation hook running in another process
    reads it back (:func:`tasks.dispatch.prompts_of_flow_run`).

    Raises:
        InputError: the shot list, every problem with file, line and field.
        ValueError: an unknown preset or shot id, a bad budget, or a plan that cannot be
            made (named in the message).
    """
    run = plan_run(shot_list, presets=presets, servers=servers, data_root=root,
                   metrics=recent_metrics(root, today), preset=preset, shots=shots,
                   force=force, reuse=reuse, run_id=run_id, budget=budget)
    logger = get_run_logger()
    if run.dedup.adopted:
        OutputIndex(root.index).append(run.dedup.adopted)
        logger.info("%d images indexed before model identity now carry it",
                    len(run.dedup.adopted))
    log_unreadable_parts(logger, root, today - timedelta(days=HISTORY_DAYS))
    log_run_plan(logger, run)
    publish_plan(run.plan, RunArtifacts(kind, run.episode).plan)
    return run


def log_unreadable_parts(logger: Logger | LoggerAdapter, root: DataRoot, since: date) -> None:
    """A warning naming each index or metrics part planning read around.

    The stores skip a damaged part rather than fail the night; its rows are simply not
    there (its takes render again, its batches do not calibrate the models). The
    warning says so and names the file, so it is repaired, not silently lost.
    """
    parts = OutputIndex(root.index).unreadable() + MetricsStore(root.metrics).unreadable(since)
    for bad in parts:
        logger.warning("skipped unreadable part %s; its rows were not read"
                       " (tower index check / tower index repair)", bad)


def log_run_plan(logger: Logger | LoggerAdapter, run: RunPlan) -> None:
    """What planning decided, in the order it decided it."""
    for warning in run.warnings:
        logger.warning("%s", warning)
    logger.info("%s: episode %s, %d shots", run.source or "built shot list", run.episode,
                len(run.shot_list.shots))
    if run.choice is not None:
        expected = run.choice.expected_s
        logger.info("preset %s (%s; expected %s s)", run.choice.preset, run.choice.reason,
                    "?" if expected is None else f"{expected:.0f}")
    for line in run.models.describe():
        logger.info("%s", line)
    dedup = run.dedup
    logger.info("%d takes: %d already rendered, %d share another take's image, "
                "%d to render (%d files missing)", len(run.takes), len(dedup.rendered),
                len(dedup.same_as), len(dedup.to_render), len(dedup.missing_files))
    if run.reused:
        logger.info("reusing %d look-alike images, %d takes to render", len(run.reused),
                    len(run.to_render))
    logger.info("plan:\n%s", run.plan.table())


def publish_plan(plan: Plan, key: str) -> None:
    """The plan as a table artifact with each batch's prompt id (nothing for no batches)."""
    if plan.batches:
        rows = [{**row, "prompt_id": batch.prompt_id}
                for row, batch in zip(plan.rows(), plan.batches, strict=True)]
        create_table_artifact(rows, key=key,
                              description=f"{len(plan.batches)} batches, {plan.takes} takes")
