"""The dispatch loop: batches go out to servers as slots free up, outcomes come back.

The pool (:mod:`tower.dispatch`) decides; this loop submits ``render_batch`` runs in
a thread pool sized to the sum of the servers' queue depths, feeds outcomes back into
the pool and the tally, updates the progress artifact, and watches the flow run's own
state so that a cancellation asked for in the UI stops it even when the flow runs in
the caller's process (a worker-run flow gets the ``on_cancellation`` hook as well).
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from prefect import Task, get_client, get_run_logger, tags
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.futures import PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner

from blocks.comfyui_server import ComfyUIServer
from tasks.render import flow_run_stopping
from tower.comfyui import (
    ComfyUIError,
    ComfyUIInterrupted,
    ComfyUIOutOfMemory,
    ComfyUIPreflightError,
    ComfyUIValidationError,
)
from tower.dispatch import Assignment, ServerPool, total_depth
from tower.render import BatchOutcome, RenderContext
from tower.run_summary import RunTally

PROMPT_TAG = "prompt:"
SERVER_TAG = "server:"
STATE_POLL_S = 0.5
# Failures another server would repeat, or that were asked for: never sent elsewhere.
# Anything else (unreachable, timeouts, a node raising on that machine) gets one try
# on each other server.
NOT_THE_SERVERS_FAULT = (ComfyUIValidationError, ComfyUIPreflightError, ComfyUIOutOfMemory,
                         ComfyUIInterrupted)


@dataclass
class DispatchResult:
    """How the loop ended."""

    cancelled: bool = False
    task_run_ids: list[UUID] = field(default_factory=list)


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip()


def run_batches(pool: ServerPool, servers: Mapping[str, ComfyUIServer], ctx: RenderContext,
                render: Task[..., list[BatchOutcome]], tally: RunTally, *,
                flow_run_id: UUID | None, progress_key: str | None,
                on_cancel: Callable[[Mapping[str, Iterable[str]]], Any]) -> DispatchResult:
    """Run every batch of ``pool``; return whether the run was cancelled meanwhile."""
    logger = get_run_logger()
    result = DispatchResult()
    total = pool.waiting
    progress_id = create_progress_artifact(0.0, key=progress_key,
                                           description=f"{total} batches") if total else None
    in_flight: dict[concurrent.futures.Future[Any], tuple[Assignment, PrefectFuture[Any]]] = {}
    workers = total_depth([s.depth for s in pool.servers.values()])
    last_poll = 0.0
    with ThreadPoolTaskRunner(max_workers=workers) as runner:
        while in_flight if result.cancelled else not pool.finished_all:
            if not result.cancelled:
                for assignment in pool.next_assignments():
                    server = servers[assignment.server]
                    if assignment.moved:
                        logger.info("%s moves from %s to %s", assignment.batch.label,
                                    assignment.batch.server, server.name)
                    with tags(f"{PROMPT_TAG}{assignment.batch.prompt_id}",
                              f"{SERVER_TAG}{server.name}"):
                        future = runner.submit(render, parameters={
                            "server": server, "batch": assignment.batch, "ctx": ctx})
                    result.task_run_ids.append(future.task_run_id)
                    in_flight[future.wrapped_future] = (assignment, future)
            done, _ = concurrent.futures.wait(list(in_flight), timeout=STATE_POLL_S,
                                              return_when=concurrent.futures.FIRST_COMPLETED)
            for wrapped in done:
                assignment, future = in_flight.pop(wrapped)
                _finish(pool, tally, assignment, future, logger)
            if progress_id is not None and done:
                finished = tally.batches_done + tally.batches_failed
                update_progress_artifact(progress_id, min(100.0, 100.0 * finished / total))
            if not result.cancelled and time.monotonic() - last_poll > STATE_POLL_S:
                last_poll = time.monotonic()
                if flow_run_stopping(flow_run_id):
                    result.cancelled = True
                    logger.warning("flow run is being cancelled: removing its prompts")
                    _drop_waiting(pool)
                    on_cancel(_prompts_in_flight(in_flight.values()))
    return result


def _finish(pool: ServerPool, tally: RunTally, assignment: Assignment,
            future: PrefectFuture[Any], logger: Any) -> None:
    batch, server = assignment.batch, assignment.server
    outcome = future.result(raise_on_failure=False)
    if not isinstance(outcome, BaseException):
        pool.finished(batch, server, ok=True)
        tally.add(outcome, server)
        return
    error = _error_text(outcome)
    server_fault = not isinstance(outcome, NOT_THE_SERVERS_FAULT)
    if pool.finished(batch, server, ok=False, server_fault=server_fault, error=error):
        logger.warning("%s failed on %s (%s); sending it to another server", batch.label,
                       server, error)
        return
    if server in pool.out_of_rotation:
        logger.error("%s is out of rotation: %s", server, pool.out_of_rotation[server])
    tally.fail(f"{batch.label} @{server}", batch.size, error)


def _drop_waiting(pool: ServerPool) -> None:
    for state in pool.servers.values():
        state.waiting.clear()


def _prompts_in_flight(items: Iterable[tuple[Assignment, Any]]) -> dict[str, list[str]]:
    prompts: dict[str, list[str]] = {}
    for assignment, _ in items:
        prompts.setdefault(assignment.server, []).append(assignment.batch.prompt_id)
    return prompts


def cancel_prompts(servers: Mapping[str, ComfyUIServer],
                   prompts: Mapping[str, Iterable[str]]) -> dict[str, str]:
    """Delete ``prompts`` pending on each server and interrupt the one running, if ours.

    Returns what was done per server (or why not), for the log.
    """
    report: dict[str, str] = {}
    for name, ids in prompts.items():
        wanted = set(ids)
        server = servers.get(name)
        if server is None or not wanted:
            continue
        try:
            with server.get_client() as client:
                queue = client.queue()
                pending = [pid for pid in queue.pending if pid in wanted]
                if pending:
                    client.cancel(pending)
                running = [pid for pid in queue.running if pid in wanted]
                for pid in running:
                    client.interrupt(pid)
        except ComfyUIError as err:
            report[name] = f"could not clean up: {err}"
            continue
        report[name] = f"deleted {len(pending)} pending, interrupted {len(running)}"
    return report


def prompts_of_flow_run(flow_run_id: UUID) -> dict[str, list[str]]:
    """The prompts of a flow run's unfinished render tasks, by server (from their tags)."""
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    prompts: dict[str, list[str]] = {}
    for run in runs:
        if run.state is not None and run.state.is_final():
            continue
        server = next((t[len(SERVER_TAG):] for t in run.tags if t.startswith(SERVER_TAG)), None)
        for tag in run.tags:
            if server and tag.startswith(PROMPT_TAG):
                prompts.setdefault(server, []).append(tag[len(PROMPT_TAG):])
    return prompts


def retries_of(task_run_ids: Iterable[UUID]) -> int:
    """Retries Prefect made across these task runs (run count beyond the first)."""
    ids = list(task_run_ids)
    if not ids:
        return 0
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(id=TaskRunFilterId(any_=ids)),
                                     limit=len(ids))
    return sum(max(0, run.run_count - 1) for run in runs)
