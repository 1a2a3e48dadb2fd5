"""The nightly render: an episode's shot list becomes images on the ComfyUI servers.

Reads top to bottom like the night it runs: plan the run (validate the shot list,
resolve its takes, skip those the output index already holds, batch the rest across
servers with the models fitted to the metrics history: the same planning as
``tower plan``), check every server has what the plan needs (failing before anything
is queued), keep each server's queue full until every batch is done, then publish a
summary with a contact sheet and write the run log. A re-run renders only what is still missing.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from prefect import flow
from prefect.runtime import flow_run as current_flow_run
from prefect.states import State

from flows.common import Rendering, cancel_hook, final_state, render_and_publish, resolve_farm
from tasks.planning import plan_run_task
from tasks.render import preflight_task
from tower.runtime.pool import DEFAULT_MAX_FAILURES
from tower.shotlist.shots import episode_of

Reuse = Literal["exact", "similar", "none"]


def _episode_of(path: str) -> str:
    try:
        return episode_of(path) or Path(path).stem
    except (OSError, ValueError):
        return Path(path).stem


def nightly_run_name() -> str:
    """``ep01-nightly-2026-11-27``, or ``ep01-high-2026-11-27`` with a preset override."""
    params = current_flow_run.parameters
    episode = _episode_of(str(params.get("shot_list", "")))
    return f"{episode}-{params.get('preset') or 'nightly'}-{datetime.now(UTC):%Y-%m-%d}"


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
            A batch gets at most ``servers x (1 + retries)`` attempts in all, never two
            rounds on one server (:func:`tower.runtime.failures.max_attempts`).
        max_server_failures: consecutive failed batches that take a server out; with
            none left in rotation the run fails, quoting each server's last error.

    Returns:
        The run summary; a Failed state carrying it when any batch finally failed.
    """
    started = datetime.now(UTC)
    farm = resolve_farm(servers, data_root, render_store, presets_file, presets_block)
    flow_run_id = current_flow_run.id
    planned = plan_run_task(shot_list, farm.presets, farm.specs, farm.root,
                            today=started.date(), kind="render", preset=preset, shots=shots,
                            force=force, reuse=reuse,
                            run_id=str(flow_run_id) if flow_run_id else None)
    episode, plan = planned.episode, planned.plan
    if dry_run:
        if plan.batches:
            preflight_task(farm.servers, planned.to_render, farm.inventories)
        return {"episode": episode, "dry_run": True, "batches": len(plan.batches),
                "takes_to_render": plan.takes, "takes_deduped": planned.takes_deduped,
                "plan": plan.rows(), "status": "completed"}

    how = Rendering("render", "render_episode", episode, retries, retry_backoff_s,
                    max_server_failures)
    tally, summary, cancelled = render_and_publish(farm, planned, how, started=started,
                                                   flow_run_id=flow_run_id, preset=preset)
    return final_state(episode, tally, summary, cancelled)
