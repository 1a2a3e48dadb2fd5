"""The nightly render: an episode's shot list becomes images on the ComfyUI servers.

Reads top to bottom like the night it runs: plan the run (validate the shot list,
resolve its takes, skip those the output index already holds, batch the rest across
servers with the models fitted to the metrics history: the same planning as
``tower plan``), check every server has what the plan needs (failing before anything
is queued), keep each server's queue full until every batch is done, then publish a
summary with a contact sheet and write the run log. A re-run renders only what is still missing.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from prefect import flow
from prefect.logging.loggers import flow_run_logger
from prefect.runtime import flow_run as current_flow_run
from prefect.states import Cancelled, Completed, Failed, State

from tasks.dispatch import RenderRun, cancel_prompts, prompts_of_flow_run, render_plan
from tasks.planning import plan_run_task
from tasks.render import preflight_task
from tasks.reporting import publish_summary
from tasks.setup import (
    render_context,
    resolve_data_root,
    resolve_presets,
    resolve_servers,
    server_entries,
    server_specs,
)
from tower.runtime.pool import DEFAULT_MAX_FAILURES
from tower.runtime.summary import RunTally, run_status
from tower.shotlist.shots import load_shot_list
from tower.spec.graph import preflight_graphs
from tower.spec.outputs import sheet_items

Reuse = Literal["exact", "similar", "none"]


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key: lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-")


def _episode_of(path: str) -> str:
    try:
        return load_shot_list(path).episode
    except (OSError, ValueError):
        return Path(path).stem


def nightly_run_name() -> str:
    """``ep01-nightly-2026-11-27``, or ``ep01-high-2026-11-27`` with a preset override."""
    params = current_flow_run.parameters
    episode = _episode_of(str(params.get("shot_list", "")))
    return f"{episode}-{params.get('preset') or 'nightly'}-{datetime.now(UTC):%Y-%m-%d}"


def cancel_hook(flow: object, flow_run: object, state: State) -> None:
    """on_cancellation: remove this run's prompts from the ComfyUI queues.

    Runs in the worker/runner process too, so it needs nothing but the flow run: its
    servers come from its parameters, its prompt ids from its plan artifact.
    """
    params = dict(getattr(flow_run, "parameters", {}) or {})
    servers = resolve_servers(server_entries(params.get("servers")))
    prompts = prompts_of_flow_run(flow_run.id)  # type: ignore[attr-defined]
    report = cancel_prompts(servers, prompts)
    flow_run_logger(flow_run).info("cancelled prompts: %s", report or "none in flight")  # type: ignore[arg-type]


@flow(name="render-episode", flow_run_name=nightly_run_name, on_cancellation=[cancel_hook],
      log_prints=True)
def render_episode(shot_list: str, shots: list[str] | None = None, preset: str | None = None,
                   servers: list[str] | None = None, dry_run: bool = False,
                   force: bool = False, reuse: Reuse = "exact",
                   data_root: str | None = None, render_store: str | None = None,
                   presets_file: str | None = None, presets_block: str | None = None,
                   retries: int = 3, retry_backoff_s: float = 10.0,
                   max_server_failures: int = DEFAULT_MAX_FAILURES) -> dict | State:
    """Render every missing take of ``shot_list`` across ``servers``.

    Args:
        shot_list: YAML/CSV/JSON shot list path.
        shots: only these shot ids.
        preset: render every shot at this preset instead of its own.
        servers: ComfyUIServer block names or URLs (``name=URL`` names one);
            default ``TOWER_SERVERS`` (comma-separated), else http://127.0.0.1:8188.
        dry_run: plan and preflight only; nothing is queued.
        force: render every take again even if the index holds it, every ComfyUI node
            executed anew (nothing from the server's history or node cache).
        reuse: ``exact`` skips takes whose image exists; ``similar`` also takes any
            existing image of a shot with the same look; ``none`` renders everything,
            like ``force``.
        data_root / render_store: a folder, or a saved RenderStore block; default
            ``TOWER_DATA_ROOT``, else ``data``.
        retries, retry_backoff_s: Prefect retries of a batch after a transient failure.
        max_server_failures: consecutive failed batches that take a server out.

    Returns:
        The run summary; a Failed state carrying it when any batch finally failed.
    """
    started = datetime.now(UTC)
    pool_servers = resolve_servers(server_entries(servers))
    root = resolve_data_root(data_root, render_store)
    presets = resolve_presets(presets_file, presets_block)
    specs = server_specs(pool_servers)

    flow_run_id = current_flow_run.id
    planned = plan_run_task(shot_list, presets, specs, root, today=started.date(),
                            kind="render", preset=preset, shots=shots, force=force,
                            reuse=reuse, run_id=str(flow_run_id) if flow_run_id else None)
    episode, plan, to_render = planned.episode, planned.plan, planned.to_render
    tally = RunTally(takes_requested=len(planned.takes), takes_deduped=planned.takes_deduped)
    if dry_run:
        if plan.batches:
            preflight_task(pool_servers, preflight_graphs(to_render))
        return {"episode": episode, "dry_run": True, "batches": len(plan.batches),
                "takes_to_render": plan.takes, "takes_deduped": tally.takes_deduped,
                "plan": plan.rows(), "status": "completed"}

    ctx = render_context(root, episode, started, flow_run_id)
    run_id = ctx.run_id
    pool, cancelled = render_plan(plan, RenderRun(
        pool_servers, ctx, retries, retry_backoff_s, max_server_failures,
        progress_key=artifact_key("progress", episode)), tally)
    tally.images = sheet_items(planned.takes, root.renders, planned.served_paths())

    summary = publish_summary(
        tally, root=root, run_id=run_id, flow_run_id=flow_run_id, flow="render_episode",
        episode=episode, preset=preset, servers=[s.name for s in pool_servers],
        started=started, batches=len(plan.batches), model_swaps=plan.model_swaps,
        out_of_rotation=pool.out_of_rotation, status=run_status(tally, cancelled),
        key=artifact_key("render", episode), title=f"{episode} render")
    return final_state(episode, tally, summary, cancelled)


def final_state(what: str, tally: RunTally, summary: dict, cancelled: bool) -> State:
    """Cancelled, Failed when any batch finally failed, else Completed; all carry the summary.

    Returning the summary alone would end the run Completed even with failed batches.
    """
    if cancelled:
        return Cancelled(message=f"{what}: cancelled", data=summary)
    if tally.batches_failed:
        return Failed(message=f"{what}: {tally.batches_failed} batches failed "
                              f"({tally.takes_failed} takes): "
                              + "; ".join(tally.failures[:3]), data=summary)
    return Completed(message=f"{what}: {tally.takes_rendered} rendered, "
                             f"{tally.takes_deduped} skipped", data=summary)
