"""The dispatch loop: batches go out to servers as slots free up, outcomes come back.

The pool (:mod:`tower.runtime.pool`) decides; this loop submits ``render_batch`` runs in
a thread pool, feeds outcomes back into the pool and the tally, updates the progress
artifact and the ETA table (:mod:`tower.runtime.progress`: the plan's calibrated
estimates, rescaled by each server's pace so far, with the batches where the pool has
them now), and watches the flow run's own state so that a cancellation asked for in the
UI stops it even when the flow runs in the caller's process (a worker-run flow gets the
``on_cancellation`` hook as well).

The loop wakes on events rather than on a clock: a batch whose prompt has finished
frees its server slot (:class:`tasks.slots.SlotBank` tells the loop) and the next batch
for that server starts at once, with the freed slot handed over, while the finished
batch's images are still downloading. The thread pool has room for a second batch per
slot for that reason. The loop itself makes no Prefect API call (:class:`tasks.watch.RunWatch`
does), and render task runs carry no tags: Prefect asks the API for tag concurrency slots
before every task run with tags, one uncached call per run when the tags name the batch,
which cost about a second per batch on a local server.
"""

from __future__ import annotations

import concurrent.futures
import json
import queue
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from prefect import Task, get_client, get_run_logger
from prefect.artifacts import create_progress_artifact, create_table_artifact
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterType,
)
from prefect.events import emit_event
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run as this_run
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import opaque

from blocks.comfyui_server import ComfyUIServer
from tasks.render import preflight_task, with_retry_policy
from tasks.setup import ensure_concurrency_limits
from tasks.slots import SlotBank
from tasks.watch import STATE_POLL_S, STOPPING, RunWatch
from tower.comfyui import ComfyUIError
from tower.planning.planner import Plan
from tower.runtime.adoption import adopt_in_place
from tower.runtime.execute import BatchOutcome, RenderContext
from tower.runtime.failures import classify
from tower.runtime.inputs import Inventory
from tower.runtime.notifications import out_of_rotation_event
from tower.runtime.pool import Assignment, ServerPool, total_depth
from tower.runtime.progress import Progress, ProgressTracker
from tower.runtime.runs import PLAN_KEY_PREFIXES
from tower.runtime.summary import RunTally

# The ETA table is shown every few seconds at most (tasks.watch); a snapshot a second is
# plenty, rather than one per finished batch.
ETA_EVERY_S = 1.0


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip()


InFlight = dict[concurrent.futures.Future[Any], tuple[Assignment, PrefectFuture[Any]]]
Event = tuple[str, Any]  # ("free", batch id) | ("done", wrapped future) | (STOPPING, None)


def _submit(runner: ThreadPoolTaskRunner, render: Task[..., list[BatchOutcome]],
            pool: ServerPool, servers: Mapping[str, ComfyUIServer], ctx: RenderContext,
            slots: SlotBank, in_flight: InFlight, events: queue.SimpleQueue[Event],
            ) -> list[str]:
    """Start a ``render`` task for every batch the pool hands out now; their prompt ids."""
    started = []
    for assignment in pool.next_assignments():
        server = servers[assignment.server]
        if assignment.moved:
            get_run_logger().info("%s moves from %s to %s", assignment.batch.label,
                                  assignment.batch.server, server.name)
        limit = server.slot_limit(ctx.front)
        slots.reserve(limit, assignment.batch.batch_id)
        # opaque: Prefect would otherwise walk every object in the parameters (the takes,
        # the stores, the run's shared attempt counts) for each batch it starts.
        future = runner.submit(render, parameters={
            "server": opaque(server), "batch": opaque(assignment.batch), "ctx": opaque(ctx),
            "slots": opaque(slots)})
        in_flight[future.wrapped_future] = (assignment, future)
        future.wrapped_future.add_done_callback(lambda done: events.put(("done", done)))
        started.append(assignment.batch.prompt_id)
    slots.trim()
    return started


def _next_events(events: queue.SimpleQueue[Event], timeout: float) -> list[Event]:
    """Every event there is, waiting up to ``timeout`` for the first."""
    try:
        batch = [events.get(timeout=timeout)]
    except queue.Empty:
        return []
    while True:
        try:
            batch.append(events.get_nowait())
        except queue.Empty:
            return batch


def _where(pool: ServerPool) -> dict[str, str]:
    """Every unfinished batch id and the server it waits for or runs on now."""
    return {batch_id: name for name, state in pool.servers.items()
            for batch_id in (*(b.batch_id for b in state.waiting), *state.in_flight,
                             *state.finishing)}


def _snapshot(tracker: ProgressTracker, pool: ServerPool) -> Progress:
    """The run's progress now (the loop is the edge that reads the clock)."""
    return tracker.snapshot(datetime.now(UTC), _where(pool), pool.out_of_rotation)


def run_batches(pool: ServerPool, servers: Mapping[str, ComfyUIServer], ctx: RenderContext,
                render: Task[..., list[BatchOutcome]], tally: RunTally, *,
                progress_key: str | None, on_cancel: Callable[[list[str]], Any],
                table_key: str | None = None, label: str = "run") -> bool:
    """Run every batch of ``pool``; return True if the flow run was cancelled meanwhile.

    On cancellation nothing new is submitted, ``on_cancel`` gets the prompt ids in
    flight, and again, once they have all ended, every prompt id this run submitted
    (a task that was waiting for a slot may have submitted in between). The ETA table
    (key ``table_key``) and the log lines name the run ``label``.
    """
    total = pool.waiting
    progress_id = create_progress_artifact(0.0, key=progress_key,
                                           description=f"{total} batches") if total else None
    batches = [b for state in pool.servers.values() for b in state.waiting]
    tracker = ProgressTracker.of(label, batches, datetime.now(UTC))  # type: ignore[arg-type]
    first = _snapshot(tracker, pool)
    table_id = create_table_artifact(first.rows(), key=table_key, description=first.line()) \
        if total and table_key else None
    in_flight: InFlight = {}
    submitted: set[str] = set()
    events: queue.SimpleQueue[Event] = queue.SimpleQueue()
    cancelled = False
    logger = get_run_logger()
    slots = SlotBank(ctx.flow_run_id, on_free=lambda batch_id: events.put(("free", batch_id)),
                     log=logger.info)
    workers = 2 * total_depth([s.depth for s in pool.servers.values()])
    with (RunWatch(ctx.flow_run_id, progress_id, events, table_id=table_id,
                   log=logger.info if total else None) as watch, slots,
          ThreadPoolTaskRunner(max_workers=workers) as runner):
        watch.eta(first)
        eta_at = time.monotonic()
        while in_flight if cancelled else not pool.finished_all:
            if not cancelled:
                submitted.update(_submit(runner, render, pool, servers, ctx, slots,
                                         in_flight, events))
            for kind, item in _next_events(events, STATE_POLL_S):
                if kind == "free":
                    pool.left_server(item)
                elif kind == STOPPING and not cancelled:
                    cancelled = True
                    logger.warning("flow run is being cancelled: removing its prompts")
                    _drop_waiting(pool)
                    on_cancel([a.batch.prompt_id for a, _ in in_flight.values()])
                elif item in in_flight:
                    assignment, future = in_flight.pop(item)
                    slots.unreserve(assignment.batch.batch_id)
                    _finish(pool, tally, assignment, future, tracker)
                    done = tally.batches_done + tally.batches_failed
                    watch.progress(min(100.0, 100.0 * done / total))
                    if pool.finished_all or time.monotonic() - eta_at >= ETA_EVERY_S:
                        watch.eta(_snapshot(tracker, pool))
                        eta_at = time.monotonic()
    if cancelled:
        on_cancel(sorted(submitted))
    return cancelled


def _finish(pool: ServerPool, tally: RunTally, assignment: Assignment,
            future: PrefectFuture[Any], tracker: ProgressTracker | None = None) -> None:
    """Feed one ended task into the pool (which may requeue it), the tally and ``tracker``.

    Every batch the pool gives up on goes into the tally, the ended one and any it
    stranded (waiting on a server that left rotation, with no other server to take it).
    """
    logger = get_run_logger()
    batch, server = assignment.batch, assignment.server
    outcome = future.result(raise_on_failure=False)
    if not isinstance(outcome, BaseException):
        pool.finished(batch, server, ok=True)
        tally.add(outcome, server)
        if tracker:
            tracker.finished(batch.batch_id, server, ok=True, at=datetime.now(UTC))
        return
    error = _error_text(outcome)
    failure = classify(outcome)
    was_in = server not in pool.out_of_rotation
    if pool.finished(batch, server, ok=False, server_fault=failure.elsewhere,
                     local=failure.local, error=error):
        logger.warning("%s failed on %s (%s); sending it to another server", batch.label,
                       server, error)
    if was_in and server in pool.out_of_rotation:
        logger.error("%s is out of rotation: %s", server, pool.out_of_rotation[server])
        # for `tower notify`: the Prefect server's automation tells the supervisor
        emit_event(**out_of_rotation_event(server, pool.out_of_rotation[server],
                                           this_run.name, this_run.id))
        if not pool.active:
            logger.error("no server left in rotation; the batches still to render fail: %s",
                         "; ".join(f"{name}: {why}" for name, why in pool.last_errors().items()))
    for failed in pool.take_failed():
        where = f" @{failed.server}" if failed.server else ""
        tally.fail(f"{failed.batch.label}{where}", failed.batch.size, failed.error)
        if tracker:
            tracker.finished(failed.batch.batch_id, failed.server, ok=False,
                             at=datetime.now(UTC))


def _drop_waiting(pool: ServerPool) -> None:
    for state in pool.servers.values():
        state.waiting.clear()


def cancel_prompts(servers: Iterable[ComfyUIServer], prompt_ids: Collection[str],
                   ) -> dict[str, str]:
    """Delete ``prompt_ids`` waiting on each server and interrupt the running one, if ours.

    Returns what was done per server (or why not), for the log.
    """
    report: dict[str, str] = {}
    for server in servers:
        try:
            with server.get_client() as client:
                deleted, interrupted = client.withdraw(prompt_ids)
        except ComfyUIError as err:
            report[server.name] = f"could not clean up: {err}"
            continue
        report[server.name] = f"deleted {len(deleted)} waiting, interrupted {len(interrupted)}"
    return report


def prompts_of_flow_run(flow_run_id: UUID | str) -> list[str]:
    """The prompt ids of every batch a flow run planned, read back from its plan artifact.

    Artifacts are written straight to the API (task-run records arrive later, through
    events), so a cancellation hook in another process sees the whole plan at once.
    A forced run's table holds its forced prompt ids (``plan_run_task``), so those are found
    too. OOM-split halves have ids of their own that the plan does not list.
    """
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(str(flow_run_id))]),
            type=ArtifactFilterType(any_=["table"])))
    prompts: list[str] = []
    for artifact in artifacts:
        if not (artifact.key or "").startswith(PLAN_KEY_PREFIXES):
            continue
        rows = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
        prompts += [row["prompt_id"] for row in rows or [] if "prompt_id" in row]
    return prompts


@dataclass
class RenderRun:
    """What a flow asks of :func:`render_plan`."""

    servers: list[ComfyUIServer]
    ctx: RenderContext
    retries: int
    retry_backoff_s: float
    max_failures: int
    progress_key: str | None = None
    table_key: str | None = None      # the ETA table (RunArtifacts.progress_table)
    label: str = "run"                # how the ETA table and log lines name the run
    inventories: Mapping[str, Inventory | None] = field(default_factory=dict)


def render_plan(plan: Plan, run: RenderRun, tally: RunTally) -> tuple[ServerPool, bool]:
    """Preflight, create the servers' limits, render every batch; ``(pool, cancelled)``.

    Raises:
        ComfyUIPreflightError: a server lacks something the plan needs (nothing queued).
    """
    by_name = {s.name: s for s in run.servers}
    batches, moves = adopt_in_place(plan.batches, run.servers)
    for move in moves:
        get_run_logger().info(move)
    pool = ServerPool(batches, {s.name: s.max_queue_depth for s in run.servers},
                      vram_budgets={s.name: s.budget_mb for s in run.servers},
                      max_failures=run.max_failures, inventories=run.inventories)
    if not plan.batches:
        return pool, False
    preflight_task(run.servers, [t for b in batches for t in b.takes], run.inventories)
    ensure_concurrency_limits(run.servers)
    cancelled = run_batches(pool, by_name, run.ctx,
                            with_retry_policy(run.retries, run.retry_backoff_s), tally,
                            progress_key=run.progress_key, table_key=run.table_key,
                            label=run.label,
                            on_cancel=lambda prompts: cancel_prompts(run.servers, prompts))
    tally.retries = run.ctx.retries([b.batch_id for b in plan.batches])
    return pool, cancelled
