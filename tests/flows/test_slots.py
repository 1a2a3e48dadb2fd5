"""Server slots on a real Prefect server: handed over inside a run, capped across runs."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from prefect import flow, get_client
from prefect.client.schemas.actions import VariableCreate
from prefect.settings import PREFECT_API_URL

from blocks.comfyui_server import ComfyUIServer
from tasks.render import render_batch
from tasks.setup import ensure_concurrency_limits
from tasks.slots import RECLAIM_EVERY_S, REGISTER_PREFIX, SlotBank, SlotLimitMissing
from tower.planning.planner import RenderBatch, batch_id_for
from tower.runtime.execute import RenderContext
from tower.shotlist.shots import Shot, ShotList
from tower.spec.takes import resolve_takes
from tower.store.files import DataRoot
from tower.store.index import OutputIndex
from tower.store.metrics import MetricsStore

pytestmark = pytest.mark.usefixtures("prefect_backend")

REPO = Path(__file__).resolve().parents[2]


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


HOLD_A_SLOT = """
import sys, time
from tasks.slots import SlotBank
with SlotBank() as bank, bank.slot(sys.argv[1], "theirs"):
    print("holding", flush=True)
    time.sleep(600)
"""


def hold_in_child(limit: str) -> subprocess.Popen[str]:
    """A process of its own holding one slot of ``limit`` until it is killed (no flow run:
    only its process can tell whether it is alive)."""
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    child = subprocess.Popen([sys.executable, "-c", HOLD_A_SLOT, limit],
                             stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
    assert child.stdout is not None and child.stdout.readline().strip() == "holding"
    return child


def registers(**match: object) -> list[dict]:
    """The slot registers whose values hold ``match`` (e.g. ``pid=...``)."""
    with get_client(sync_client=True) as client:
        response = client.request("POST", "/variables/filter", json={
            "variables": {"name": {"like_": REGISTER_PREFIX}}})
    return [v["value"] for v in response.json()
            if all(v["value"].get(key) == want for key, want in match.items())]


def wait_in_thread(bank: SlotBank, limit: str) -> tuple[threading.Event, threading.Thread]:
    """A batch waiting for a slot of ``limit`` in a thread; the event is set once it has one."""
    got = threading.Event()

    def waiter() -> None:
        with bank.slot(limit, "mine"):
            got.set()

    thread = threading.Thread(target=waiter, daemon=True)
    thread.start()
    return got, thread


def test_a_killed_holders_slot_is_given_back_to_the_next_waiter_at_once():
    """A SIGKILLed run never releases its leases and Prefect keeps them 120 s or more;
    a waiting run proves the holder dead (same machine, PID gone) and frees them."""
    limit = make_limit(1)
    child = hold_in_child(limit)
    try:
        wait_until(lambda: any(r["leases"] for r in registers(pid=child.pid)))
        lines: list[str] = []
        with SlotBank(log=lines.append) as bank:
            got, thread = wait_in_thread(bank, limit)
            assert not got.wait(3)          # the holder is alive: its slot stays its own
            assert any("1 of 1 slots taken, 0 of them by this run" in x for x in lines)
            killed_at = time.monotonic()
            child.kill()
            child.wait()
            assert got.wait(RECLAIM_EVERY_S + 10)
            freed_after = time.monotonic() - killed_at
            thread.join(5)
        assert freed_after < RECLAIM_EVERY_S + 10
        assert any(f"gave back 1 slots of {limit} held by flow run unknown: its process "
                   f"{child.pid} on " in x for x in lines), lines
        assert registers(pid=child.pid) == []
        assert active(limit) == 0
    finally:
        child.kill()
        child.wait()


def test_a_finished_flow_runs_slots_are_given_back_even_from_another_machine():
    """A register whose flow run is final frees its leases whoever reads it, PIDs aside."""
    limit = make_limit(1)

    @flow
    def crashed_elsewhere() -> str:
        from prefect.runtime import flow_run
        return str(flow_run.id)

    flow_run_id = crashed_elsewhere()          # Completed now: a final state
    with get_client(sync_client=True) as client:
        granted = client.request("POST", "/v2/concurrency_limits/increment-with-lease",
                                 json={"names": [limit], "slots": 1, "lease_duration": 600})
        client.create_variable(VariableCreate(name=f"{REGISTER_PREFIX}{uuid.uuid4().hex}", value={
            "flow_run": flow_run_id, "host": "render-07", "boot_id": "b", "pid_ns": "pid:[1]",
            "pid": 1, "started": "1", "leases": {granted.json()["lease_id"]: limit}}))
    lines: list[str] = []
    with SlotBank(log=lines.append) as bank, bank.slot(limit, "mine") as handed:
        assert handed is False
    assert any(f"held by flow run {flow_run_id}: its flow run is Completed" in x
               for x in lines), lines
    assert registers(flow_run=flow_run_id) == []


def test_slots_counted_without_any_lease_are_given_back_after_a_while():
    """A Prefect server restarted with in-memory leases forgets them but still counts
    their slots; nothing would ever free them. A waiting run gives back what no
    register accounts for, once the excess has lasted ``orphan_confirm_s``."""
    limit = make_limit(1)
    with get_client(sync_client=True) as client:  # a slot whose lease the server lost
        client.request("POST", "/v2/concurrency_limits/increment",
                       json={"names": [limit], "slots": 1, "mode": "concurrency"})
    assert active(limit) == 1
    lines: list[str] = []
    with SlotBank(log=lines.append, orphan_confirm_s=1.0) as bank:
        started = time.monotonic()
        with bank.slot(limit, "after-restart"):
            waited = time.monotonic() - started
            assert active(limit) == 1  # the orphan given back, this batch's slot taken
    assert RECLAIM_EVERY_S - 1 < waited < RECLAIM_EVERY_S + 10
    assert any(f"gave back 1 slots of {limit} that Prefect counted but no running flow "
               "held a lease on" in x for x in lines), lines
    assert active(limit) == 0


def test_a_living_holders_slot_is_never_taken_for_an_orphan():
    limit = make_limit(1)
    child = hold_in_child(limit)
    try:
        wait_until(lambda: any(r["leases"] for r in registers(pid=child.pid)))
        lines: list[str] = []
        with SlotBank(log=lines.append, orphan_confirm_s=0.5) as bank:
            got, thread = wait_in_thread(bank, limit)
            assert not got.wait(RECLAIM_EVERY_S * 2 + 2)  # two reclaim rounds looked
            assert not any("no running flow held a lease" in x for x in lines), lines
            child.kill()
            child.wait()
            assert got.wait(RECLAIM_EVERY_S + 10)
            thread.join(5)
    finally:
        child.kill()
        child.wait()
