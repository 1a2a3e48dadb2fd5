"""Server slots on a real Prefect server: handed over inside a run, capped across runs."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

import pytest
from prefect import flow, get_client

from blocks.comfyui_server import ComfyUIServer
from tasks.render import render_batch
from tasks.setup import ensure_concurrency_limits
from tasks.slots import SlotBank, SlotLimitMissing
from tower.planning.planner import RenderBatch, batch_id_for
from tower.runtime.execute import RenderContext
from tower.shotlist.shots import Shot, ShotList
from tower.spec.takes import resolve_takes
from tower.store.files import DataRoot
from tower.store.index import OutputIndex
from tower.store.metrics import MetricsStore

pytestmark = pytest.mark.usefixtures("prefect_backend")


def make_limit(slots: int) -> str:
    name = f"comfyui-test-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name, slots)
    return name


def active(limit: str) -> int:
    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(limit).active_slots


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def test_a_freed_slot_is_handed_to_the_next_batch_without_a_new_lease():
    limit = make_limit(1)
    freed: list[str] = []
    with SlotBank(str(uuid.uuid4()), on_free=freed.append) as bank:
        with bank.slot(limit, "b1") as handed:
            assert handed is False                 # the first one comes from Prefect
            assert active(limit) == 1
        assert freed == ["b1"]
        assert bank.reserve(limit, "b2")
        with bank.slot(limit, "b2") as handed:
            assert handed is True
            assert active(limit) == 1 and bank.held == 1
        assert freed == ["b1", "b2"]
    assert active(limit) == 0                      # closing gives every lease back


def test_trim_gives_idle_slots_back_so_other_runs_can_take_them():
    limit = make_limit(2)
    with SlotBank() as bank:
        with bank.slot(limit, "a"), bank.slot(limit, "b"):
            assert active(limit) == 2
        bank.trim()
        wait_until(lambda: active(limit) == 0)
        assert bank.held == 0
        assert not bank.reserve(limit, "c")        # nothing idle any more


def test_a_reserved_slot_is_only_for_its_batch():
    limit = make_limit(2)
    with SlotBank() as bank:
        with bank.slot(limit, "a"):
            pass
        assert bank.reserve(limit, "b")
        with bank.slot(limit, "other") as handed:  # finds nothing idle: asks Prefect
            assert handed is False
            assert active(limit) == 2
        with bank.slot(limit, "b") as handed:
            assert handed is True


def test_a_lease_promised_to_a_batch_that_never_asked_is_idle_again():
    limit = make_limit(1)
    with SlotBank() as bank:
        with bank.slot(limit, "a"):
            pass
        assert bank.reserve(limit, "crashed-before-asking")
        bank.unreserve("crashed-before-asking")
        bank.trim()
        wait_until(lambda: active(limit) == 0)


def test_a_lease_the_server_no_longer_knows_is_never_handed_on():
    limit = make_limit(1)
    lines: list[str] = []
    with SlotBank(log=lines.append, renew_every_s=0.1) as bank:
        with bank.slot(limit, "a"):
            pass
        [lease] = bank.leases
        with get_client(sync_client=True) as client:   # it expired, as after an outage
            client.release_concurrency_slots_with_lease(lease.id)
        wait_until(lambda: bank.held == 0)
        assert not bank.reserve(limit, "b")
        assert any("expired on the Prefect server" in line for line in lines)
        with bank.slot(limit, "b") as handed:           # a new lease from Prefect
            assert handed is False and active(limit) == 1


def test_two_runs_never_hold_more_than_the_limit_and_the_waiter_says_why():
    limit = make_limit(1)
    lines: list[str] = []
    with SlotBank() as first, SlotBank(log=lines.append) as second:
        got = threading.Event()

        def other_run() -> None:
            with second.slot(limit, "theirs"):
                got.set()

        with first.slot(limit, "mine"):
            waiter = threading.Thread(target=other_run)
            waiter.start()
            wait_until(lambda: bool(lines))
            assert not got.is_set()
            assert active(limit) == 1
        assert not got.is_set()                    # idle in the first run until trimmed
        first.trim()
        waiter.join(timeout=30)
        assert got.is_set()
    assert f"waiting for a slot of {limit}: 1 of 1 slots taken, 0 of them by this run" \
        in lines[0]


def test_a_batch_of_the_run_waiting_for_a_slot_gets_the_next_one_freed():
    limit = make_limit(1)
    with SlotBank() as bank:
        order: list[str] = []

        def retry() -> None:
            with bank.slot(limit, "retry") as handed:
                order.append(f"retry handed={handed}")

        with bank.slot(limit, "running"):
            waiter = threading.Thread(target=retry)
            waiter.start()
            time.sleep(0.3)                        # the retry is now asking Prefect
        assert not bank.reserve(limit, "new")      # the waiter comes first
        waiter.join(timeout=30)
        assert order == ["retry handed=True"]
        assert active(limit) == 1


def test_a_missing_limit_is_an_error_not_an_unlimited_slot():
    missing = f"comfyui-missing-{uuid.uuid4().hex[:8]}"
    with (SlotBank() as bank, pytest.raises(SlotLimitMissing, match="does not exist"),
          bank.slot(missing, "b")):
        pass


def test_a_batch_frees_its_slot_before_its_images_are_stored(tmp_path, sims):
    """So the server's next batch is queued while this one's images download."""
    server = ComfyUIServer(name=f"gpu-{uuid.uuid4().hex[:6]}", base_url=sims("gpu").url)
    ensure_concurrency_limits([server])
    takes = resolve_takes(ShotList(episode="ep01", shots=(
        Shot(id="sh010", prompt="lanterns over the harbour", takes=2, preset="draft"),)))
    batch = RenderBatch(batch_id=batch_id_for(takes), server=server.name, takes=tuple(takes),
                        vram_estimate_mb=2048.0, est_seconds=1.0)
    root = DataRoot(tmp_path / "data")
    ctx = RenderContext(data_root=root, index=OutputIndex(root.index),
                        metrics=MetricsStore(root.metrics), run_id="run-1")
    at_free: dict[str, object] = {}

    def on_free(batch_id: str) -> None:
        at_free.update(batch=batch_id, slots=active(server.limit_name),
                       files=sorted(root.renders.rglob("*.png")),
                       rows=ctx.index.scan().collect().height)

    @flow
    def one_batch() -> list:
        with SlotBank(on_free=on_free) as bank:
            return render_batch(server, batch, ctx, bank)

    outcomes = one_batch()
    assert at_free == {"batch": batch.batch_id, "slots": 1, "files": [], "rows": 0}
    assert [o.status for o in outcomes] == ["ok"]
    assert ctx.index.scan().collect().height == 2 and len(outcomes[0].images) == 2
    assert active(server.limit_name) == 0
