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
process died runs out after :data:`LEASE_S`, so a killed run frees its slots by itself.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from uuid import UUID

import httpx
from prefect import get_client
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.exceptions import PrefectHTTPStatusError

LEASE_S = 120.0
RENEW_EVERY_S = LEASE_S / 4
WAIT_LOG_EVERY_S = 60.0
MAX_RETRY_AFTER_S = 5.0
LOCKED = 423
GONE = 410
UNAVAILABLE = 503
QUICK_RETRY_S = (0.05, 0.1, 0.2, 0.4, 0.8)
INCREMENT = "/v2/concurrency_limits/increment-with-lease"


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
        renew_every_s: how often held leases are renewed (each lasts :data:`LEASE_S`).
    """

    def __init__(self, flow_run_id: str | None = None, *,
                 on_free: Callable[[str], object] = lambda batch_id: None,
                 log: Callable[[str], object] = lambda line: None,
                 renew_every_s: float = RENEW_EVERY_S) -> None:
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
                return lease, False
            retry_after = float(response.headers.get("Retry-After", 1.0))
            if logged_at is None or time.monotonic() - logged_at > WAIT_LOG_EVERY_S:
                logged_at = time.monotonic()
                self._log(self._waiting_line(client, limit))
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

    def _renew_loop(self) -> None:
        while not self._stop.wait(self._renew_every_s):
            with self._lock:
                leases = list(self._held.values())
            for lease in leases:
                self._renew(lease)

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

    def _require_client(self) -> SyncPrefectClient:
        if self._client is None:
            raise RuntimeError("SlotBank used outside its `with` block")
        return self._client
