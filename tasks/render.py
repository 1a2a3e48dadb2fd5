"""Tasks that talk to ComfyUI: model inventories, the preflight check (and input
uploads), and rendering one batch.

``render_batch`` holds one slot of the server's global concurrency limit while its
batch is on the server, so every flow run together keeps at most ``max_queue_depth``
batches there; the slot is free again (:mod:`tasks.slots`) as soon as the prompt has
finished, before its images are downloaded and recorded. Prefect retries it, with
exponential backoff and jitter, only for failures
:func:`tower.runtime.failures.classify` calls transient (unreachable server, timeouts);
that module also says how many attempts a batch gets in all. Out-of-memory splits the
batch inside the runtime, and everything else (validation, execution
errors) fails at once with ComfyUI's own message.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any
from uuid import UUID

from prefect import Task, get_client, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.runtime import task_run as current_task_run
from prefect.states import State
from prefect.tasks import exponential_backoff

from blocks.comfyui_server import ComfyUIServer
from tasks.slots import SlotBank
from tower.comfyui import ComfyUIError, ComfyUIPreflightError, ServerModels, read_headers
from tower.planning.planner import RenderBatch
from tower.runtime.execute import BatchOutcome, RenderContext, execute_with_oom_split
from tower.runtime.failures import RunStopping, classify
from tower.runtime.inputs import (
    Inventory,
    input_images,
    preflight_scope,
    server_inventory,
    upload_inputs,
)
from tower.spec.graph import preflight_graphs
from tower.spec.takes import ResolvedTake

RENDER_RETRIES = 3
RETRY_BACKOFF_S = 10.0
RETRY_JITTER = 0.5


def retry_if_transient(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Retry only what may work later (unreachable servers, timeouts), and never once
    the flow run is being cancelled: its prompts were deleted on purpose."""
    try:
        state.result()
    except Exception as exc:
        return classify(exc).transient and not flow_run_stopping(task_run.flow_run_id)
    return False


def flow_run_stopping(flow_run_id: UUID | str | None) -> bool:
    """Is the flow run being (or already) cancelled?"""
    if flow_run_id is None:
        return False
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run_id).state
    return state is not None and (state.is_cancelling() or state.is_cancelled())


@task(name="model-inventory", cache_policy=NO_CACHE)
def inventory_task(servers: Sequence[ComfyUIServer]) -> dict[str, Inventory | None]:
    """Each server's model files, for placement; None for a server that cannot be asked.

    Each file's metadata header is read too (:class:`tower.comfyui.ServerModels`), once
    per server per run: planning turns them into the takes' model identity and refuses
    a farm whose servers hold different files under one name.

    An unknown inventory plans as if the server had everything: the preflight then
    names what it lacks, or finds it unreachable, before anything is queued.
    """
    found: dict[str, Inventory | None] = {}
    for server in servers:
        try:
            with server.get_client() as client:
                folders = server_inventory(client)
                files = [(folder, name) for folder, names in folders.items() for name in names]
                found[server.name] = ServerModels(folders, read_headers(client, files))
        except ComfyUIError as err:
            get_run_logger().warning("%s: model folders not listed (%s); planned as if it "
                                     "had every model", server.name, err)
            found[server.name] = None
    return found


@task(name="preflight", cache_policy=NO_CACHE)
def preflight_task(servers: Sequence[ComfyUIServer], takes: Sequence[ResolvedTake],
                   inventories: Mapping[str, Inventory | None] | None = None) -> None:
    """Check each server has what the takes it may render need, then upload their inputs.

    A server is checked for the takes its model files allow (all of them when its
    inventory is unknown): nodes, checkpoints, LoRAs, ControlNets, upscale models,
    samplers, schedulers. Input images go up only once every server passed, under
    content-addressed names, and only where missing.

    Raises:
        ComfyUIPreflightError: one message naming every unreachable server and everything
            missing on each of the others; nothing has been queued anywhere.
        ComfyUIError: an upload failed or an input image changed since planning.
    """
    own, skipped = preflight_scope(takes, [s.name for s in servers], inventories or {})
    problems: list[str] = []
    graphs = 0
    for server in servers:
        if not own[server.name]:
            continue
        server_graphs = preflight_graphs(own[server.name])
        graphs = max(graphs, len(server_graphs))
        try:
            with server.get_client() as client:
                client.preflight(server_graphs)
        except ComfyUIPreflightError as err:
            problems.append(str(err))
        except ComfyUIError as err:
            problems.append(f"{server.name} ({server.base_url}) is not usable: {err}")
    if problems:
        raise ComfyUIPreflightError("preflight failed, nothing was queued:\n"
                                    + "\n".join(f"- {p}" for p in problems + skipped))
    logger = get_run_logger()
    for line in skipped:
        logger.info("%s", line)
    logger.info("preflight ok: %d servers, up to %d distinct graphs each", len(servers), graphs)
    for server in servers:
        images = input_images(own[server.name])
        if images:
            with server.get_client() as client:
                uploaded = upload_inputs(client, images)
            logger.info("%s: %d input images, %d uploaded", server.name, len(images),
                        len(uploaded))


@task(name="render-batch", task_run_name="{batch.label} @{server.name}",
      retries=RENDER_RETRIES, retry_delay_seconds=exponential_backoff(RETRY_BACKOFF_S),
      retry_jitter_factor=RETRY_JITTER, retry_condition_fn=retry_if_transient,
      cache_policy=NO_CACHE)
def render_batch(server: ComfyUIServer, batch: RenderBatch, ctx: RenderContext,
                 slots: SlotBank) -> list[BatchOutcome]:
    """Render ``batch`` on ``server`` (halving it on out-of-memory); index and metrics included.

    Raises:
        ComfyUIError: the batch failed; its metrics row is already written.
    """
    ctx = replace(ctx, vram_budget_mb=server.budget_mb,
                  timeout_s=ctx.timeout_s or server.render_timeout_s)
    attempt = current_task_run.run_count or 1
    ctx.note_attempt(batch.batch_id, attempt)
    limit = server.slot_limit(ctx.front)
    with server.get_client() as client:
        outcomes = execute_with_oom_split(client, batch, ctx, attempt=attempt,
                                          queue_place=_slot(slots, limit, batch, ctx))
    get_run_logger().info("%s @%s: %s", batch.label, server.name,
                          ", ".join(f"{o.batch.take_range} {o.status}" for o in outcomes))
    return outcomes


@contextmanager
def _slot(slots: SlotBank, limit: str, batch: RenderBatch, ctx: RenderContext) -> Iterator[None]:
    """A slot of ``limit`` for ``batch``, refused once the run is being cancelled.

    A slot from Prefect may have taken a while, so the run's state is read again; a slot
    handed over within the run comes straight from the dispatch loop, which stops
    starting batches once it sees the cancellation.
    """
    with slots.slot(limit, batch.batch_id) as handed_over:
        if not handed_over and flow_run_stopping(ctx.flow_run_id):
            raise RunStopping(f"{batch.label}: flow run is being cancelled; not submitted")
        yield


def with_retry_policy(retries: int, backoff_s: float) -> Task[..., list[BatchOutcome]]:
    """``render_batch`` with another retry count and base backoff (tests use tiny ones)."""
    return render_batch.with_options(retries=retries,
                                     retry_delay_seconds=exponential_backoff(backoff_s)
                                     if retries else 0)
