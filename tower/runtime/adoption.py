"""Batches another run already put on the farm: rendered where they are, not again.

A batch's prompt id is fixed by its takes (:attr:`tower.planning.batches.RenderBatch.prompt_id`),
so a re-run after a crash plans the dead run's unfinished batches under the same ids.
The client adopts such a prompt instead of queueing it twice, but only on the server it
asks. A re-run plans fewer takes than the dead run did, so the planner may well put a
batch on another server than the one still rendering (or holding the result of) that
prompt; the GPU would then render it a second time. So before dispatching, every server
is asked which of the plan's prompts it is running, holding in its queue or finished
recently, and each such batch is pinned to that server: its slot there is the place the
prompt already takes in the queue, and its images are fetched from there.

"Recently" is the last :func:`history_window` entries of a server's history (ComfyUI's
``/history?max_items=``): reading a whole history (up to 10,000 entries with their graphs)
once per run and server would cost more than the rare batch it saves.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Protocol

from tower.comfyui import ComfyUIClient, ComfyUIError
from tower.planning.batches import RenderBatch

logger = logging.getLogger(__name__)

MIN_HISTORY_WINDOW = 256
MAX_HISTORY_WINDOW = 10_000  # ComfyUI's MAXIMUM_HISTORY_SIZE


class ClientSource(Protocol):
    name: str

    def get_client(self) -> ComfyUIClient: ...


def history_window(batches: int) -> int:
    """History entries to read per server: the plan twice over, within ComfyUI's bounds."""
    return max(MIN_HISTORY_WINDOW, min(MAX_HISTORY_WINDOW, 2 * batches))


def prompts_on(client: ComfyUIClient, wanted: set[str], window: int) -> set[str]:
    """Which of ``wanted`` the server runs, queues or finished within ``window`` entries."""
    queue = client.queue()
    found = wanted & {*queue.running, *queue.pending}
    if wanted - found:
        found |= wanted & client.recent_prompts(window)
    return found


def locate(servers: Iterable[ClientSource], prompt_ids: Sequence[str]) -> dict[str, str]:
    """``prompt id -> server name`` for the prompts some server already has.

    A server that cannot be asked is skipped (the run's own failover deals with it); a
    prompt found on two servers (two dead runs planned differently) stays where found first.
    """
    wanted, where = set(prompt_ids), {}
    window = history_window(len(wanted))
    for server in servers:
        try:
            with server.get_client() as client:
                found = prompts_on(client, wanted - where.keys(), window)
        except ComfyUIError as err:
            logger.warning("%s: could not look for prompts left by earlier runs: %s",
                           server.name, err)
            continue
        where |= {prompt_id: server.name for prompt_id in found}
    return where


def pin_found(batches: Sequence[RenderBatch], where: Mapping[str, str],
              ) -> tuple[tuple[RenderBatch, ...], list[str]]:
    """The batches with each found one moved to its server; and a line per move."""
    pinned, moves = [], []
    for batch in batches:
        server = where.get(batch.prompt_id)
        if server is not None and server != batch.server:
            moves.append(f"{batch.label}: prompt {batch.prompt_id} is already on {server} "
                         f"(planned for {batch.server}); rendered there")
            batch = replace(batch, server=server)
        pinned.append(batch)
    return tuple(pinned), moves


def adopt_in_place(batches: Sequence[RenderBatch], servers: Sequence[ClientSource],
                   ) -> tuple[tuple[RenderBatch, ...], list[str]]:
    """:func:`pin_found` over what :func:`locate` finds; nothing to ask with one server."""
    if len(servers) < 2 or not batches:
        return tuple(batches), []
    return pin_found(batches, locate(servers, [b.prompt_id for b in batches]))
