"""The server slots a flow run holds, handed from a batch that left its server to the next.

Every batch queued on a ComfyUI server holds one slot of that server's Prefect global
concurrency limit, so all runs together keep at most ``max_queue_depth`` batches there.
Taking a slot from Prefect is an API call, and on a busy Prefect server one that can take
seconds: SQLite answers concurrent writes with 503, and the Prefect client then backs off
for about two seconds (the bank retries a 503 of its own after 50 ms). Paid between two
batches, that left the GPU idle: with 0.3 s batches, slots alone capped a server at one
batch every 1.5-2.5 s. So a run keeps the slot of a batch whose prompt has finished when
its next batch for the same server is about to start, and hands it over in memory; a
slot the run has no work for goes back to Prefect at once (:meth:`SlotBank.trim`).

A run therefore keeps a server's slots while it has batches waiting for that server.
Another run's batches for the same server start when the first run's queue there
drains, which also spares the GPU a checkpoint swap per batch. A preview has a limit of
its own (:attr:`blocks.comfyui_server.ComfyUIServer.preview_limit_name`) and never waits
behind a nightly run.

Slots are leases: the bank renews them while it holds them, and a lease whose flow
process died runs out after :data:`LEASE_S` (the Prefect server's repossessor then frees
it within its loop, 15 s by default; an ephemeral Prefect API runs no repossessor). Prefect
refuses leases shorter than 60 s, and a lease only has to outlast a Prefect API hiccup
(it is renewed while the process lives, whatever the batch length), so 120 s it is.

A killed run's slots come back much sooner when another run needs them: each bank
publishes its leases in a Prefect variable of its own (its *register*,
``tower-slots-<hex>``: lease ids and limits, the flow run, host, boot id, PID namespace,
PID and the PID's start time). A batch that finds its server's limit full reads the
registers (at once, then every :data:`RECLAIM_EVERY_S`) and gives back the leases of a
holder that is provably gone:

- its flow run is in a final state (Completed, Failed, Cancelled, Crashed) or deleted:
  sound from any machine;
- or it ran on this very machine (same host name, boot id and PID namespace) and its
  PID is gone or now belongs to a younger process: sound because all three match. Its
  flow run, which a killed process never finishes, is then set Crashed with that reason,
  so the UI stops showing it Running.

A holder on another machine whose flow run still says Running (a SIGKILLed process
never reports) cannot be proven dead from here; its slots free when its leases run out
(:data:`LEASE_S` plus the repossessor's loop, about 135 s). Marking that flow run Crashed
in the UI frees them at the next reclaim round. A lease given back this way that was in
fact still used is answered 410 at its holder's next renewal, which then drops it
(:meth:`SlotBank._forget`), so a mistake costs one batch over the limit, never a
deadlock. Registers are rewritten at every renewal; one not rewritten for
:data:`STALE_REGISTER_S` belongs to a holder whose leases have run out and is deleted.

The registers also show slots that no lease holds any more: a Prefect server keeps its
leases in memory by default and forgets them when it restarts, while the limit's count
lives in its database. Such slots would never come back; a waiting batch gives back
what the count holds beyond every listed lease once that has lasted
:data:`ORPHAN_CONFIRM_S` (:meth:`SlotBank._free_orphans`).
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any
from uuid import UUID, uuid4

import httpx
from prefect import get_client
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.actions import VariableCreate, VariableUpdate
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
from prefect.states import Crashed

from tower.runtime.processes import Process

LEASE_S = 120.0
RENEW_EVERY_S = LEASE_S / 4
WAIT_LOG_EVERY_S = 60.0
MAX_RETRY_AFTER_S = 5.0
LOCKED = 423
GONE = 410
UNAVAILABLE = 503
QUICK_RETRY_S = (0.05, 0.1, 0.2, 0.4, 0.8)
INCREMENT = "/v2/concurrency_limits/increment-with-lease"
REGISTER_PREFIX = "tower-slots-"
RECLAIM_EVERY_S = 15.0
STALE_REGISTER_S = 3 * LEASE_S
ORPHAN_CONFIRM_S = 2 * RENEW_EVERY_S  # a living bank rewrites its register this often
MAX_REGISTERS = 200


@dataclass(frozen=True)
class Gone:
    """Why a slot holder is provably gone; ``process_gone``: its process died while its
    flow run still says it runs."""

    reason: str
    process_gone: bool = False


class SlotLimitMissing(RuntimeError):
    """The server's concurrency limit does not exist (it is created before rendering)."""


@dataclass(frozen=True)
class Lease:
    """One slot of ``limit``, held by this run."""

    id: UUID
    limit: str


class SlotBank:
    """The leases of one flow run, shared by its render tasks.

    Args:
        flow_run_id: recorded as the leases' holder, so the UI and a later run can tell
            whose slots they are.
        on_free: called with a batch id each time that batch's slot is free again (its
            prompt finished or failed); the dispatch loop queues the next batch then.
        log: where "waiting for a slot" lines go (the flow run's logger).
        renew_every_s: how often held leases are renewed (each lasts :data:`LEASE_S`)
            and the bank's register rewritten.
        orphan_confirm_s: how long slots must stay counted without a lease in any
            register before they are given back (:meth:`_free_orphans`).
    """

    def __init__(self, flow_run_id: str | None = None, *,
                 on_free: Callable[[str], object] = lambda batch_id: None,
                 log: Callable[[str], object] = lambda line: None,
                 renew_every_s: float = RENEW_EVERY_S,
                 orphan_confirm_s: float = ORPHAN_CONFIRM_S) -> None:
        self._holder = (ConcurrencyLeaseHolder(type="flow_run", id=UUID(flow_run_id))
                        if flow_run_id else None)
        self._on_free = on_free
        self._renew_every_s = renew_every_s
        self._log = log
        self._lock = threading.Condition()
        self._idle: dict[str, list[Lease]] = defaultdict(list)
        self._reserved: dict[str, Lease] = {}
        self._held: dict[UUID, Lease] = {}
        self._waiters: dict[str, int] = defaultdict(int)
        self._client: SyncPrefectClient | None = None
        # One API call at a time: two writes at once on a SQLite-backed Prefect server
        # make one of them a 503, which the client retries only after ~2 s.
        self._api = threading.Lock()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self._releaser = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="slot-release")
        self._flow_run_id = flow_run_id
        self._process = Process.this()
        self._register = f"{REGISTER_PREFIX}{uuid4().hex}"
        self._registered = False
        self._register_due = threading.Event()
        self._reclaiming = threading.Lock()
        self._reclaimed_at = float("-inf")
        self._orphan_confirm_s = orphan_confirm_s
        self._orphans_seen: dict[str, tuple[float, int]] = {}

    def __enter__(self) -> SlotBank:
        self._client = get_client(sync_client=True)
        self._client.__enter__()
        self._renewer = threading.Thread(target=self._renew_loop, name="slot-renewal",
                                         daemon=True)
        self._renewer.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Give every lease back to Prefect and stop renewing."""
        with self._lock:
            leftovers = list(self._held.values())
            self._idle.clear()
            self._reserved.clear()
        self._releaser.shutdown(wait=True)
        for lease in leftovers:
            self._release(lease)
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=5)
        self._unregister()
        if self._client is not None:
            self._client.__exit__(None, None, None)
            self._client = None

    @property
    def leases(self) -> tuple[Lease, ...]:
        """The leases this run holds now, in use or idle."""
        with self._lock:
            return tuple(self._held.values())

    @property
    def held(self) -> int:
        return len(self.leases)

    def reserve(self, limit: str, batch_id: str) -> bool:
        """Promise an idle lease of ``limit`` to ``batch_id``, about to be started.

        Returns False when there is none (the batch will ask Prefect). A batch of this
        run waiting in :meth:`slot` for the same limit comes first.
        """
        with self._lock:
            idle = self._idle[limit]
            if not idle or self._waiters[limit]:
                return False
            self._reserved[batch_id] = idle.pop()
            return True

    def unreserve(self, batch_id: str) -> None:
        """A batch ended without using its promised lease (it failed before asking):
        the lease is idle again."""
        with self._lock:
            lease = self._reserved.pop(batch_id, None)
            if lease is not None:
                self._idle[lease.limit].append(lease)
                self._lock.notify_all()

    def trim(self) -> None:
        """Give idle leases (nobody reserved them) back to Prefect, in the background."""
        with self._lock:
            spare = []
            for limit, idle in self._idle.items():
                if not self._waiters[limit]:
                    spare += idle
                    idle.clear()
        for lease in spare:
            self._releaser.submit(self._release, lease)

    @contextmanager
    def slot(self, limit: str, batch_id: str) -> Iterator[bool]:
        """Hold a slot of ``limit`` for ``batch_id``; yields whether it was handed over
        from this run (True) or taken from Prefect (False, possibly after a wait)."""
        lease, handed = self._claim(limit, batch_id)
        try:
            yield handed
        finally:
            with self._lock:
                if lease.id in self._held:
                    self._idle[limit].append(lease)
                    self._lock.notify_all()
            self._on_free(batch_id)

    def _claim(self, limit: str, batch_id: str) -> tuple[Lease, bool]:
        with self._lock:
            lease = self._reserved.pop(batch_id, None)
            if lease is None and self._idle[limit]:
                lease = self._idle[limit].pop()
            if lease is not None:
                return lease, True
            self._waiters[limit] += 1
        try:
            return self._acquire(limit)
        finally:
            with self._lock:
                self._waiters[limit] -= 1

    def _acquire(self, limit: str) -> tuple[Lease, bool]:
        """A lease from Prefect, or one this run frees meanwhile, whichever comes first."""
        client = self._require_client()
        logged_at: float | None = None
        body = {"names": [limit], "slots": 1, "mode": "concurrency", "lease_duration": LEASE_S}
        if self._holder is not None:
            body["holder"] = self._holder.model_dump(mode="json")
        while True:
            response = self._increment(client, body)
            if response.status_code != LOCKED:
                response.raise_for_status()
                granted = response.json()
                if not granted.get("limits"):
                    raise SlotLimitMissing(f"concurrency limit {limit!r} does not exist; "
                                           "it is created before rendering")
                lease = Lease(UUID(granted["lease_id"]), limit)
                with self._lock:
                    self._held[lease.id] = lease
                self._publish_soon()
                return lease, False
            retry_after = float(response.headers.get("Retry-After", 1.0))
            if logged_at is None or time.monotonic() - logged_at > WAIT_LOG_EVERY_S:
                logged_at = time.monotonic()
                self._log(self._waiting_line(client, limit))
            if self._reclaim(limit):
                continue
            with self._lock:
                self._lock.wait_for(lambda: bool(self._idle[limit]),
                                    timeout=min(retry_after, MAX_RETRY_AFTER_S))
                if self._idle[limit]:
                    return self._idle[limit].pop(), True

    def _increment(self, client: SyncPrefectClient, body: dict[str, object]) -> httpx.Response:
        """POST the increment through the Prefect client's own connection (its URL, auth
        and TLS), retrying a 503 or a dropped connection after 50 ms, 100 ms, ... rather
        than the client's 2 s: a slot is what the GPU waits for. Anything else, and a
        call that keeps failing, goes through the client and its own retries."""
        http = getattr(client, "_client", None)
        if not isinstance(http, httpx.Client):
            return self._increment_slowly(client, body)
        response: httpx.Response | None = None
        for delay in (*QUICK_RETRY_S, None):
            try:
                with self._api:
                    response = httpx.Client.send(http, http.build_request("POST", INCREMENT,
                                                                          json=body))
            except httpx.TransportError:  # e.g. a kept-alive connection the server closed
                response = None
            if response is not None and response.status_code != UNAVAILABLE:
                break
            if delay is not None:
                time.sleep(delay)
        if response is not None and response.status_code in (LOCKED, 200, 201):
            return response
        return self._increment_slowly(client, body)

    def _increment_slowly(self, client: SyncPrefectClient,
                          body: dict[str, object]) -> httpx.Response:
        try:
            with self._api:
                return client.request("POST", INCREMENT, json=body)
        except PrefectHTTPStatusError as err:
            if err.response.status_code != LOCKED:
                raise
            return err.response

    def _waiting_line(self, client: SyncPrefectClient, limit: str) -> str:
        with self._lock:
            mine = sum(1 for lease in self._held.values() if lease.limit == limit)
        try:
            state = client.read_global_concurrency_limit_by_name(limit)
            taken = f"{state.active_slots} of {state.limit} slots taken"
        except Exception as err:  # the line is for people; never fail the batch over it
            taken = f"slots unknown ({type(err).__name__})"
        return (f"waiting for a slot of {limit}: {taken}, {mine} of them by this run; "
                "the rest belong to other runs and free up as their batches finish")

    def _release(self, lease: Lease) -> None:
        with self._lock:
            if self._held.pop(lease.id, None) is None:
                return
        try:
            with self._api:
                self._require_client().release_concurrency_slots_with_lease(lease.id)
        except Exception as err:  # an unreleased lease still expires after LEASE_S
            self._log(f"could not give back a slot of {lease.limit} ({err}); it frees "
                      f"itself within {LEASE_S:.0f} s")
        self._publish_soon()

    # The register: this bank's leases, where a later run can find them.

    def _register_value(self) -> dict[str, Any]:
        with self._lock:
            leases = {str(lease.id): lease.limit for lease in self._held.values()}
        process = asdict(self._process) if self._process is not None else {}
        return {"flow_run": self._flow_run_id, **process, "leases": leases}

    def _publish_soon(self) -> None:
        """Rewrite the register in the background (off the batch's path); requests made
        while one is pending are served by it."""
        if self._register_due.is_set():
            return
        self._register_due.set()
        try:
            self._releaser.submit(self._publish)
        except RuntimeError:  # closing: the register is deleted anyway
            self._register_due.clear()

    def _publish(self) -> None:
        self._register_due.clear()
        client = self._client
        if client is None:
            return
        value = self._register_value()
        if not value["leases"] and not self._registered:
            return
        try:
            with self._api:
                if self._registered:
                    client.update_variable(VariableUpdate(name=self._register, value=value))
                else:
                    client.create_variable(VariableCreate(name=self._register, value=value))
                    self._registered = True
        except Exception as err:  # the leases still expire by themselves
            self._log(f"could not record this run's slots in {self._register}: {err}")

    def _unregister(self) -> None:
        if not self._registered or self._client is None:
            return
        try:
            with self._api:
                self._client.delete_variable_by_name(self._register)
        except ObjectNotFound:
            pass
        except Exception as err:  # a left-over register is deleted once stale
            self._log(f"could not delete {self._register}: {err}")
        self._registered = False

    def _reclaim(self, limit: str) -> bool:
        """Give back the slots of ``limit`` whose holders are provably gone (see the
        module docstring), at most every :data:`RECLAIM_EVERY_S` and one batch at a time.

        Returns whether any slot of ``limit`` was given back.
        """
        now = time.monotonic()
        if now - self._reclaimed_at < RECLAIM_EVERY_S or not self._reclaiming.acquire(
                blocking=False):
            return False
        try:
            self._reclaimed_at = now
            freed, accounted = 0, 0
            registers = self._registers()
            for name, value, updated in registers:
                leases = value.get("leases") or {}
                if not isinstance(leases, dict):
                    continue
                if updated is not None and (datetime.now(UTC) - updated).total_seconds() \
                        > STALE_REGISTER_S:
                    self._drop_register(name)  # its leases ran out long ago
                    continue
                if limit not in leases.values():
                    continue
                mine = sum(1 for held in leases.values() if held == limit)
                why = self._gone(value)
                if why is None:
                    accounted += mine
                    continue
                for lease_id in leases:
                    self._release_theirs(lease_id)
                self._drop_register(name)
                if why.process_gone:
                    self._mark_crashed(value.get("flow_run"), why.reason)
                freed += mine
                self._log(f"gave back {mine} slots of {limit} held by flow run "
                          f"{value.get('flow_run') or 'unknown'}: {why.reason}")
            if not freed and len(registers) < MAX_REGISTERS - 1:
                freed = self._free_orphans(limit, accounted)
            return freed > 0
        except Exception as err:  # reclaiming is a shortcut; the leases still expire
            self._log(f"could not check who holds the slots of {limit}: {err}")
            return False
        finally:
            self._reclaiming.release()

    def _free_orphans(self, limit: str, accounted: int) -> int:
        """Give back slots Prefect counts although no living bank holds a lease on them.

        A Prefect server keeps leases in memory unless told otherwise
        (``PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE``): after a restart the leases are
        gone but the limit still counts their slots, and nothing would ever free them,
        so every run would wait for a slot for ever. Every bank lists its leases in its
        register (rewritten at least every :data:`ORPHAN_CONFIRM_S`), so slots counted
        beyond those listed (``accounted``) and this bank's own, seen so for
        ``orphan_confirm_s``, belong to nobody: the smaller excess of the two looks is
        given back. A bank whose register could not be written meanwhile may lose a
        slot this way; like a wrong reclaim, that costs one batch over the limit, not a
        deadlock.
        """
        client = self._require_client()
        with self._lock:
            mine = sum(1 for lease in self._held.values() if lease.limit == limit)
        with self._api:
            active = client.read_global_concurrency_limit_by_name(limit).active_slots
        excess, now = active - accounted - mine, time.monotonic()
        if excess <= 0:
            self._orphans_seen.pop(limit, None)
            return 0
        since, first = self._orphans_seen.setdefault(limit, (now, excess))
        if now - since < self._orphan_confirm_s:
            return 0
        slots = min(first, excess)
        with self._api:
            client.request("POST", "/v2/concurrency_limits/decrement",
                           json={"names": [limit], "slots": slots})
        self._orphans_seen.pop(limit, None)
        self._log(f"gave back {slots} slots of {limit} that Prefect counted but no running "
                  "flow held a lease on (leases lost, e.g. a Prefect server restarted with "
                  "in-memory lease storage)")
        return slots

    def _registers(self) -> list[tuple[str, dict[str, Any], datetime | None]]:
        """Every other bank's register: (name, value, last written)."""
        client = self._require_client()
        with self._api:
            response = client.request("POST", "/variables/filter", json={
                "variables": {"name": {"like_": REGISTER_PREFIX}}, "limit": MAX_REGISTERS})
        found = []
        for item in response.json():
            name, value = item.get("name", ""), item.get("value")
            if name == self._register or not name.startswith(REGISTER_PREFIX) \
                    or not isinstance(value, dict):
                continue
            updated = item.get("updated")
            found.append((name, value,
                          datetime.fromisoformat(updated) if isinstance(updated, str) else None))
        return found

    def _gone(self, value: Mapping[str, Any]) -> Gone | None:
        """Why the holder of a register is provably gone, or None if it may be alive."""
        flow_run = value.get("flow_run")
        if flow_run:
            try:
                with self._api:
                    state = self._require_client().read_flow_run(UUID(str(flow_run))).state
            except ObjectNotFound:
                return Gone("its flow run no longer exists")
            if state is not None and state.is_final():
                return Gone(f"its flow run is {state.name}")
        theirs = Process.from_register(value)
        if (theirs is not None and self._process is not None
                and theirs.same_machine(self._process) and theirs.gone()):
            return Gone(f"its process {theirs.pid} on {theirs.host} is gone",
                        process_gone=True)
        return None

    def _mark_crashed(self, flow_run: object, reason: str) -> None:
        """Set a flow run whose process is gone to Crashed.

        A SIGKILLed flow never reports, so the UI would show it Running forever; the
        supervisor sees why it stopped instead. Best effort: the slots are back anyway.
        """
        if not flow_run:
            return
        message = (f"Crashed: {reason}; found by flow run {self._flow_run_id or 'unknown'}, "
                   "which gave back its server slots")
        try:
            with self._api:
                self._require_client().set_flow_run_state(UUID(str(flow_run)),
                                                          Crashed(message=message))
        except Exception as err:
            self._log(f"could not mark flow run {flow_run} Crashed: {err}")

    def _release_theirs(self, lease_id: str) -> None:
        try:
            with self._api:
                self._require_client().release_concurrency_slots_with_lease(UUID(lease_id))
        except PrefectHTTPStatusError as err:
            if err.response.status_code not in (404, GONE):
                raise

    def _drop_register(self, name: str) -> None:
        try:
            with self._api:
                self._require_client().delete_variable_by_name(name)
        except ObjectNotFound:
            pass

    def _renew_loop(self) -> None:
        while not self._stop.wait(self._renew_every_s):
            with self._lock:
                leases = list(self._held.values())
            for lease in leases:
                self._renew(lease)
            if leases or self._registered:
                self._publish_soon()  # also tells others the register is not stale

    def _renew(self, lease: Lease) -> None:
        try:
            with self._api:
                self._require_client().renew_concurrency_lease(lease.id, LEASE_S)
        except PrefectHTTPStatusError as err:
            if err.response.status_code != GONE:
                self._log(f"could not renew a slot of {lease.limit}: {err}")
                return
            self._forget(lease)
            self._log(f"a slot of {lease.limit} expired on the Prefect server; the next "
                      "batch for it takes a new one")
        except Exception as err:  # the lease still runs for LEASE_S; the next round retries
            self._log(f"could not renew a slot of {lease.limit}: {err}")

    def _forget(self, lease: Lease) -> None:
        """Stop using a lease Prefect no longer knows: a batch using it finishes, but the
        slot is not handed on."""
        with self._lock:
            self._held.pop(lease.id, None)
            for idle in self._idle.values():
                if lease in idle:
                    idle.remove(lease)
            for batch_id, reserved in list(self._reserved.items()):
                if reserved == lease:
                    del self._reserved[batch_id]
        self._publish_soon()

    def _require_client(self) -> SyncPrefectClient:
        if self._client is None:
            raise RuntimeError("SlotBank used outside its `with` block")
        return self._client
