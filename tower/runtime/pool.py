"""Which server gets the next render batch: the pool policy of one flow run.

The planner assigns every batch to a server up front. At run time the pool keeps each
server's ComfyUI queue at its depth (one batch sampling, the next one waiting, so the
GPU never idles between batches), lets a server that ran out of work take batches
from the busiest other one, and takes a server that keeps failing out of rotation for
the rest of the run, handing its waiting batches to the servers still in it.

A batch only ever moves to a server that has every model file it needs (its
``models``, checked against the server's inventory by the planner's own rule,
:func:`tower.planning.batches.missing_models`; a server without a known inventory is
taken to have everything). A batch that no server left in rotation can take fails,
saying which files each of them lacks.

A batch never goes back to a server it has been on (the rule Flamenco's job manager
keeps for a task and the worker that failed it): not when it is requeued after a
failure, not when the server it waits on leaves rotation, not by work stealing. A
batch keeps its id wherever it goes, and the halves of an out-of-memory split never
come back to the pool (they are rendered inside the attempt that split them, on the
same server), so the rule holds for every take of it. Every server therefore gets a
batch at most once, which is what bounds its attempts
(:func:`tower.runtime.failures.max_attempts`). A batch with no server left to try
fails with each server's last error, so a run whose servers all fail ends saying why
instead of retrying.

Pure and single-threaded by design: the flow calls :meth:`ServerPool.next_assignments`
and :meth:`ServerPool.finished` from its own loop, so the policy can be tested with
plain tables of events and no clock, threads or servers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from tower.planning.batches import Inventory, missing_models, model_paths

DEFAULT_QUEUE_DEPTH = 2
# Consecutive batch failures (after task retries) that take a server out of rotation.
DEFAULT_MAX_FAILURES = 2
NO_SERVER_LEFT = "no server left to render it"
# Each server's last error is quoted up to this length in a batch's failure.
LAST_ERROR_CHARS = 300


class Dispatchable(Protocol):
    """What the pool needs to know about a batch (``tower.planning.planner.RenderBatch`` fits)."""

    @property
    def batch_id(self) -> str: ...

    @property
    def server(self) -> str: ...

    @property
    def vram_estimate_mb(self) -> float: ...

    @property
    def models(self) -> tuple[tuple[str, str], ...]:
        """``(ComfyUI models folder, file name)`` of every model file it needs."""
        ...


@dataclass(frozen=True)
class Assignment:
    """Send ``batch`` to ``server`` now (``server`` may differ from the planned one)."""

    batch: Dispatchable
    server: str

    @property
    def moved(self) -> bool:
        return self.server != self.batch.server


@dataclass(frozen=True)
class FailedBatch:
    """A batch that finally failed: on ``server``, or before it ran anywhere (None)."""

    batch: Dispatchable
    server: str | None
    error: str


@dataclass
class ServerState:
    """One server's standing in the pool."""

    name: str
    depth: int
    vram_budget_mb: float | None = None
    models: Inventory | None = None
    waiting: deque[Dispatchable] = field(default_factory=deque)
    in_flight: set[str] = field(default_factory=set)
    finishing: set[str] = field(default_factory=set)
    consecutive_failures: int = 0
    in_rotation: bool = True
    reason: str | None = None
    last_error: str | None = None

    @property
    def free_slots(self) -> int:
        """Batches this server's queue can take now; a finishing batch (its prompt done,
        its images still downloading) no longer counts."""
        return max(0, self.depth - len(self.in_flight)) if self.in_rotation else 0

    def fits(self, batch: Dispatchable) -> bool:
        return self.vram_budget_mb is None or batch.vram_estimate_mb <= self.vram_budget_mb

    def lacks(self, batch: Dispatchable) -> tuple[tuple[str, str], ...]:
        """The model files of ``batch`` this server does not have."""
        return missing_models(self.models, batch.models)

    def can_take(self, batch: Dispatchable) -> bool:
        """Has every model file of ``batch`` and the VRAM for it: it may be moved here."""
        return self.fits(batch) and not self.lacks(batch)


class ServerPool:
    """Hands out batches to servers and reacts to their outcomes.

    Args:
        batches: the plan's batches, in the order each server should run them.
        depths: max batches in flight per server (its ComfyUI queue depth).
        vram_budgets: per-server VRAM budget; a batch only moves to a server it fits.
        inventories: per-server model files (ComfyUI models folder -> file names, as
            :attr:`tower.planning.batches.ServerSpec.models`); a batch never moves to a
            server lacking one of its models. A server left out, or None, is taken to
            have everything.
        max_failures: consecutive final failures that take a server out of rotation.

    Raises:
        ValueError: a batch is planned for a server not in ``depths``, or a depth < 1.
    """

    def __init__(self, batches: Iterable[Dispatchable], depths: Mapping[str, int], *,
                 vram_budgets: Mapping[str, float | None] | None = None,
                 inventories: Mapping[str, Inventory | None] | None = None,
                 max_failures: int = DEFAULT_MAX_FAILURES) -> None:
        budgets = vram_budgets or {}
        models = inventories or {}
        bad = {name: depth for name, depth in depths.items() if depth < 1}
        if bad:
            raise ValueError(f"queue depth must be at least 1: {bad}")
        self.servers = {name: ServerState(name, depth, budgets.get(name), models.get(name))
                        for name, depth in depths.items()}
        self.max_failures = max_failures
        self.failed_batches: dict[str, str] = {}
        self._tried: dict[str, set[str]] = {}
        self._unreported: list[FailedBatch] = []
        for batch in batches:
            if batch.server not in self.servers:
                raise ValueError(f"batch {batch.batch_id} is planned for unknown server "
                                 f"{batch.server!r}; servers: {', '.join(self.servers)}")
            self.servers[batch.server].waiting.append(batch)

    @property
    def active(self) -> list[ServerState]:
        return [s for s in self.servers.values() if s.in_rotation]

    @property
    def out_of_rotation(self) -> dict[str, str]:
        """Servers taken out, with why."""
        return {s.name: s.reason or "" for s in self.servers.values() if not s.in_rotation}

    @property
    def in_flight(self) -> int:
        """Batches handed out and not yet finished, on a server or finishing."""
        return sum(len(s.in_flight) + len(s.finishing) for s in self.servers.values())

    @property
    def waiting(self) -> int:
        return sum(len(s.waiting) for s in self.servers.values())

    @property
    def finished_all(self) -> bool:
        """Nothing waiting and nothing in flight: the run's rendering is over."""
        return self.waiting == 0 and self.in_flight == 0

    def tried(self, batch_id: str) -> frozenset[str]:
        """The servers ``batch_id`` has been sent to in this run."""
        return frozenset(self._tried.get(batch_id, ()))

    def take_failed(self) -> list[FailedBatch]:
        """Batches that finally failed since the last call, each once.

        Includes batches that never ran: those stranded when the last server able to take
        them left rotation, so the caller's tally counts every batch of the plan.
        """
        failed, self._unreported = self._unreported, []
        return failed

    def last_errors(self) -> dict[str, str]:
        """Each server's standing for people: its last error, and whether it is out."""
        report = {}
        for state in self.servers.values():
            error = (state.last_error or "no error")[:LAST_ERROR_CHARS]
            report[state.name] = (error if state.in_rotation
                                  else f"out of rotation, last error: {error}")
        return report

    def _fail(self, batch: Dispatchable, server: str | None, error: str) -> None:
        self.failed_batches[batch.batch_id] = error
        self._unreported.append(FailedBatch(batch, server, error))

    def _nowhere_left(self) -> str:
        """Why a batch could go nowhere: every server's last error."""
        errors = "; ".join(f"{name}: {why}" for name, why in self.last_errors().items())
        return f"{NO_SERVER_LEFT} ({errors})"

    def next_assignments(self) -> list[Assignment]:
        """Fill every free slot: own queue first, else work taken from the busiest server."""
        assignments: list[Assignment] = []
        progress = True
        while progress:
            progress = False
            for server in self.active:
                if server.free_slots == 0:
                    continue
                batch = server.waiting.popleft() if server.waiting else self._steal_for(server)
                if batch is None:
                    continue
                server.in_flight.add(batch.batch_id)
                self._tried.setdefault(batch.batch_id, set()).add(server.name)
                assignments.append(Assignment(batch, server.name))
                progress = True
        return assignments

    def _steal_for(self, thief: ServerState) -> Dispatchable | None:
        """The last waiting batch of the longest backlog that ``thief`` can take.

        Only batches the victim cannot start right away are taken, so stealing never
        leaves the victim idle, and never one that has been on ``thief`` already.
        """
        victims = sorted((s for s in self.servers.values()
                          if s is not thief and len(s.waiting) > s.free_slots),
                         key=lambda s: len(s.waiting), reverse=True)
        for victim in victims:
            for batch in reversed(victim.waiting):
                if thief.can_take(batch) and thief.name not in self.tried(batch.batch_id):
                    victim.waiting.remove(batch)
                    return batch
        return None

    def left_server(self, batch_id: str) -> None:
        """The batch's prompt is no longer on its server (done, failed or never queued):
        its slot takes the next batch while its images are still being stored."""
        for state in self.servers.values():
            if batch_id in state.in_flight:
                state.in_flight.discard(batch_id)
                state.finishing.add(batch_id)

    def finished(self, batch: Dispatchable, server: str, *, ok: bool,
                 server_fault: bool = False, local: bool = False, error: str = "") -> bool:
        """Record how ``batch`` ended on ``server``; return True if it was requeued.

        Args:
            ok: the batch rendered.
            server_fault: it failed in a way another server may not (unreachable,
                timed out, protocol trouble), so it is worth sending elsewhere.
            local: it failed on this machine (its disk), not on the server: the
                batch fails, the server keeps its standing.
            error: a short description, kept for the batches that finally failed.
        """
        state = self.servers[server]
        state.in_flight.discard(batch.batch_id)
        state.finishing.discard(batch.batch_id)
        if ok:
            state.consecutive_failures = 0
            return False
        if local:
            self._fail(batch, server, error)
            return False
        state.consecutive_failures += 1
        state.last_error = error or "failed"
        if state.in_rotation and state.consecutive_failures >= self.max_failures:
            self.take_out(server, f"{state.consecutive_failures} batches failed in a row: "
                                  f"{error}".rstrip(": "))
        if not server_fault:
            self._fail(batch, server, error)
            return False
        why = self._requeue(batch)
        if why is None:
            return True
        if why == NO_SERVER_LEFT:
            why = self._nowhere_left()
        self._fail(batch, server, f"{error}; not retried elsewhere: {why}" if error else why)
        return False

    def take_out(self, server: str, reason: str) -> None:
        """Stop sending work to ``server``; its waiting batches go to the others.

        A waiting batch that no server left in rotation may take (every one of them
        has had it, or lacks its model files) fails at once, saying why.
        """
        state = self.servers[server]
        state.in_rotation = False
        state.reason = reason
        orphans = list(state.waiting)
        state.waiting.clear()
        for batch in orphans:
            why = self._requeue(batch)
            if why == NO_SERVER_LEFT:
                self._fail(batch, None, self._nowhere_left())
            elif why is not None:
                self._fail(batch, None, f"{why} ({server} left rotation: {reason})")

    def _requeue(self, batch: Dispatchable) -> str | None:
        """Queue ``batch`` on the least busy server that may take it; else say why not.

        Only servers in rotation that the batch has not been on, with every model file of
        the batch, qualify; among them the ones its VRAM estimate fits are preferred (an
        estimate may be pessimistic; a missing file is certain failure).
        """
        tried = self.tried(batch.batch_id)
        candidates = [s for s in self.active if s.name not in tried]
        if not candidates:
            return NO_SERVER_LEFT
        able = [s for s in candidates if not s.lacks(batch)]
        if not able:
            lacks = "; ".join(f"{s.name} lacks {model_paths(s.lacks(batch))}"
                              for s in candidates)
            return f"no server left in rotation has its model files: {lacks}"
        fitting = [s for s in able if s.fits(batch)] or able
        target = min(fitting, key=lambda s: (len(s.waiting) + len(s.in_flight)) / s.depth)
        target.waiting.append(batch)
        return None


def total_depth(depths: Sequence[int]) -> int:
    """Batches that may be on the servers at once."""
    return max(1, sum(depths))
