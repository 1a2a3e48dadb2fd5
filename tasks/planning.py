"""Tasks that turn a shot list into the batches still to render."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from tower.planning.planner import Plan, ServerSpec, apply_decode_policy, force_token, plan_batches
from tower.shotlist.presets import Preset
from tower.shotlist.shots import ShotList, read_shot_list
from tower.spec.takes import ResolvedTake, resolve_takes
from tower.store.files import DataRoot
from tower.store.index import DedupResult, OutputIndex, collapse_duplicates


@task(name="load-shot-list", task_run_name="load {path}", cache_policy=NO_CACHE)
def load_shot_list_task(path: str, presets: Mapping[str, Preset]) -> ShotList:
    """Validate the shot list; an InputError lists every problem with file, line and field."""
    loaded = read_shot_list(path, presets)
    logger = get_run_logger()
    for warning in loaded.warnings:
        logger.warning("%s", warning)
    logger.info("%s: episode %s, %d shots", loaded.source, loaded.shot_list.episode,
                len(loaded.shot_list.shots))
    return loaded.shot_list


@task(name="resolve-takes", cache_policy=NO_CACHE)
def resolve_takes_task(shot_list: ShotList, presets: Mapping[str, Preset],
                       preset_override: str | None, shots: Sequence[str] | None,
                       servers: Sequence[ServerSpec]) -> list[ResolvedTake]:
    """Every take to render, with tiled decode where no server can decode it whole.

    Raises:
        ValueError: an unknown preset override or shot id (named in the message).
    """
    try:
        takes = resolve_takes(shot_list, presets, preset_override,
                              set(shots) if shots else None)
    except KeyError as err:
        raise ValueError(err.args[0]) from None
    return apply_decode_policy(takes, servers, presets)


@task(name="dedup-takes", cache_policy=NO_CACHE)
def dedup_task(takes: Sequence[ResolvedTake], data_root: DataRoot,
               force: bool = False) -> DedupResult:
    """Split takes into already rendered (skipped) and to render; ``force`` renders all.

    Takes that share an image with another take of the run are rendered once either way.
    """
    if force:
        result = collapse_duplicates(takes)
    else:
        result = OutputIndex(data_root.index).dedup(takes, data_root.renders)
    get_run_logger().info("%d takes: %d already rendered, %d share another take's image, "
                          "%d to render (%d files missing)", len(takes), len(result.rendered),
                          len(result.same_as), len(result.to_render),
                          len(result.missing_files))
    return result


@task(name="plan-batches", cache_policy=NO_CACHE)
def plan_task(takes: Sequence[ResolvedTake], servers: Sequence[ServerSpec],
              presets: Mapping[str, Preset], artifact_key: str | None = None,
              force_run_id: str | None = None) -> Plan:
    """Plan the batches and publish the plan as a table artifact.

    ``force_run_id``, the flow run id of a forced run, gives every batch prompt ids and
    graphs of that run's own, so ComfyUI renders them again (:mod:`tower.spec.graph`). The
    table lists each batch's ComfyUI prompt id, forced ones included: a cancellation
    hook running in another process reads it back to find the run's prompts.
    """
    fresh = force_token(str(force_run_id)) if force_run_id is not None else None
    plan = plan_batches(takes, servers, presets, fresh=fresh)
    get_run_logger().info("plan:\n%s", plan.table())
    if plan.batches:
        rows = [{**row, "prompt_id": batch.prompt_id}
                for row, batch in zip(plan.rows(), plan.batches, strict=True)]
        create_table_artifact(rows, key=artifact_key,
                              description=f"{len(plan.batches)} batches, {plan.takes} takes")
    return plan
