"""The steps the nightly render and the preview share, so the two flows cannot drift.

Both flows resolve their servers, data root and presets the same way, plan with the
same task, render the plan through the same dispatch loop, publish a summary with a
contact sheet under keys from :class:`tower.runtime.runs.RunArtifacts`, remove their
prompts from the ComfyUI queues when cancelled, and end in the same kind of state.
What differs (the preview's time budget, the front of the queue, the run names) stays
in each flow.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any
from uuid import UUID

from prefect import get_run_logger
from prefect.logging.loggers import flow_run_logger
from prefect.states import Cancelled, Completed, Failed, State

from blocks.comfyui_server import ComfyUIServer
from tasks.dispatch import RenderRun, cancel_prompts, prompts_of_flow_run, render_plan
from tasks.render import inventory_task
from tasks.reporting import publish_summary
from tasks.setup import (
    render_context,
    resolve_presets,
    resolve_servers,
    resolve_store,
    server_entries,
    server_specs,
)
from tower.planning.batches import ServerSpec
from tower.planning.pipeline import RunPlan
from tower.planning.planner import plan_batches
from tower.runtime.inputs import Inventory
from tower.runtime.pool import ServerPool
from tower.runtime.retakes import suspect_retakes
from tower.runtime.runs import RunArtifacts, RunKind
from tower.runtime.summary import RunInfo, RunTally, count_line, run_status
from tower.shotlist.presets import Preset
from tower.spec.outputs import sheet_items
from tower.spec.takes import ResolvedTake
from tower.store.files import DataRoot


@dataclass(frozen=True)
class Farm:
    """Where a run renders and writes, resolved from the flow's parameters."""

    servers: list[ComfyUIServer]
    root: DataRoot
    presets: dict[str, Preset]
    inventories: dict[str, Inventory | None] = field(default_factory=dict)
    data_url: str | None = None  # where the studio serves ``root`` (RenderStore.base_url)

    @property
    def specs(self) -> list[ServerSpec]:
        return server_specs(self.servers, self.inventories)


def resolve_farm(servers: list[str] | None, data_root: str | None, render_store: str | None,
                 presets_file: str | None, presets_block: str | None) -> Farm:
    """Servers (else ``TOWER_SERVERS``) with their model files, data root and presets."""
    resolved = resolve_servers(server_entries(servers))
    root, data_url = resolve_store(data_root, render_store)
    return Farm(resolved, root, resolve_presets(presets_file, presets_block),
                inventory_task(resolved), data_url=data_url)


@dataclass(frozen=True)
class Rendering:
    """How a planned run is rendered: retries, who is taken out, where in the queue."""

    kind: RunKind
    flow: str
    label: str
    retries: int
    retry_backoff_s: float
    max_server_failures: int
    front: bool = False


def render_and_publish(farm: Farm, planned: RunPlan, how: Rendering, *, started: datetime,
                       flow_run_id: UUID | str | None, preset: str | None,
                       ) -> tuple[RunTally, dict[str, Any], bool]:
    """Render every batch of ``planned``, then the contact sheet, summary and run log.

    Returns the tally, the summary and whether the run was cancelled meanwhile.
    """
    plan, keys = planned.plan, RunArtifacts(how.kind, planned.episode)
    tally = RunTally(takes_requested=len(planned.takes), takes_deduped=planned.takes_deduped)
    run_uuid = str(flow_run_id) if flow_run_id else None
    ctx = render_context(farm.root, how.label, started, run_uuid, front=how.front)
    run = RenderRun(farm.servers, ctx, how.retries, how.retry_backoff_s,
                    how.max_server_failures, progress_key=keys.progress,
                    table_key=keys.progress_table, label=planned.episode,
                    inventories=farm.inventories)
    pool, cancelled = render_plan(plan, run, tally)
    out_of_rotation = dict(pool.out_of_rotation)
    retakes = [] if cancelled else suspect_retakes(planned.takes, tally.suspect,
                                                   farm.root.renders, farm.presets)
    if retakes:
        retake_pool, cancelled = render_retakes(retakes, farm, run, out_of_rotation, tally)
        out_of_rotation |= retake_pool.out_of_rotation if retake_pool else {}
    tally.images = sheet_items([*planned.takes, *retakes], farm.root.renders,
                               planned.served_paths(),
                               missing="cancelled" if cancelled else "failed")
    info = RunInfo(run_id=ctx.run_id, flow_run_id=run_uuid, flow=how.flow,
                   episode=planned.episode, preset=preset,
                   servers=tuple(s.name for s in farm.servers), started=started,
                   batches=len(plan.batches), model_swaps=plan.model_swaps)
    summary = publish_summary(tally, info, root=farm.root,
                              out_of_rotation=out_of_rotation,
                              status=run_status(tally, cancelled), key=keys.summary,
                              title=f"{planned.episode} {how.kind}", base_url=farm.data_url)
    return tally, summary, cancelled


def render_retakes(retakes: list[ResolvedTake], farm: Farm, run: RenderRun,
                   out_of_rotation: dict[str, str], tally: RunTally,
                   ) -> tuple[ServerPool | None, bool]:
    """Render the retakes of suspect images (:mod:`tower.runtime.retakes`) as a second
    round of the same run, on the servers still in rotation; ``(pool, cancelled)``."""
    logger = get_run_logger()
    servers = [s for s in run.servers if s.name not in out_of_rotation]
    if not servers:
        logger.warning("%d suspect takes not re-rendered: no server left in rotation",
                       len(retakes))
        return None, False
    logger.info("re-rendering %d suspect takes once, at their shot's next noise index: %s",
                len(retakes), ", ".join(t.label for t in retakes))
    plan = plan_batches(retakes, server_specs(servers, farm.inventories), farm.presets)
    return render_plan(plan, replace(run, servers=servers), tally)


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


def final_state(what: str, tally: RunTally, summary: dict, cancelled: bool) -> State:
    """Cancelled, Failed when any batch finally failed, else Completed; all carry the summary.

    The message counts every image the night stored in the summary artifact's words
    (:func:`tower.runtime.summary.count_line`), e.g. ``ep01: 43 images stored (41
    rendered, 2 from ComfyUI's cache), 2 from the index, 0 failed``; a failed run adds
    its first failed batches as the summary shows them (no local paths). Returning the
    summary alone would end the run Completed even with failed batches.
    """
    counts = count_line(tally)
    if cancelled:
        return Cancelled(message=f"{what}: cancelled; {counts}", data=summary)
    if tally.batches_failed:
        failures = summary.get("failures", tally.failures)
        noun = "batch" if tally.batches_failed == 1 else "batches"
        return Failed(message=f"{what}: {counts}; {tally.batches_failed} {noun} failed: "
                              + "; ".join(failures[:3]), data=summary)
    return Completed(message=f"{what}: {counts}", data=summary)
