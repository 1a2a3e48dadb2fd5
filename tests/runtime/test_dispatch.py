"""The server-pool policy: queue depth, work stealing, taking failing servers out."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tower.runtime.pool import ServerPool, total_depth


@dataclass(frozen=True)
class Item:
    """The three fields the pool reads from a render batch."""

    batch_id: str
    server: str
    vram_estimate_mb: float = 1000.0


def items(server: str, count: int, prefix: str | None = None, vram: float = 1000.0) -> list[Item]:
    return [Item(f"{prefix or server}-{i}", server, vram) for i in range(count)]


def ids(assignments) -> list[tuple[str, str]]:
    return [(a.batch.batch_id, a.server) for a in assignments]


def test_fills_each_server_to_its_depth_in_plan_order():
    pool = ServerPool(items("a", 4) + items("b", 3), {"a": 2, "b": 1})
    assert ids(pool.next_assignments()) == [("a-0", "a"), ("b-0", "b"), ("a-1", "a")]
    assert pool.next_assignments() == []
    assert pool.in_flight == 3 and pool.waiting == 4


def test_a_finished_batch_frees_one_slot_on_its_server():
    pool = ServerPool(items("a", 3), {"a": 2})
    first = pool.next_assignments()
    pool.finished(first[0].batch, "a", ok=True)
    assert ids(pool.next_assignments()) == [("a-2", "a")]
    assert pool.in_flight == 2 and pool.waiting == 0


def test_idle_server_takes_the_tail_of_the_longest_backlog():
    pool = ServerPool(items("a", 5) + items("b", 1), {"a": 1, "b": 1})
    pool.next_assignments()                      # a-0 on a, b-0 on b
    pool.finished(Item("b-0", "b"), "b", ok=True)
    got = pool.next_assignments()
    assert ids(got) == [("a-4", "b")]
    assert got[0].moved


def test_stealing_never_leaves_the_victim_without_its_next_batch():
    pool = ServerPool(items("a", 2) + items("b", 1), {"a": 1, "b": 1})
    pool.next_assignments()                      # a-0, b-0
    pool.finished(Item("b-0", "b"), "b", ok=True)
    assert ids(pool.next_assignments()) == [("a-1", "b")]
    pool = ServerPool(items("a", 1) + items("b", 1), {"a": 1, "b": 1})
    pool.next_assignments()
    pool.finished(Item("b-0", "b"), "b", ok=True)
    assert pool.next_assignments() == []


def test_stealing_skips_batches_over_the_thiefs_vram_budget():
    batches = items("a", 3, vram=20000) + items("b", 1)
    pool = ServerPool(batches, {"a": 1, "b": 1}, vram_budgets={"a": 22000, "b": 7000})
    pool.next_assignments()
    pool.finished(Item("b-0", "b"), "b", ok=True)
    assert pool.next_assignments() == []


@pytest.mark.parametrize(("outcomes", "in_rotation"), [
    ([False], True),
    ([False, True, False], True),     # a success resets the count
    ([False, False], False),
])
def test_consecutive_failures_take_a_server_out(outcomes, in_rotation):
    pool = ServerPool(items("a", 6) + items("b", 1), {"a": 1, "b": 1})
    for ok in outcomes:
        (assignment,) = [a for a in pool.next_assignments() if a.server == "a"]
        pool.finished(assignment.batch, "a", ok=ok, error="boom")
    assert pool.servers["a"].in_rotation is in_rotation


def test_a_server_out_of_rotation_hands_its_batches_to_the_others():
    pool = ServerPool(items("a", 4) + items("b", 1), {"a": 1, "b": 2}, max_failures=1)
    first = pool.next_assignments()
    assert ids(first) == [("a-0", "a"), ("b-0", "b"), ("a-3", "b")]
    requeued = pool.finished(first[0].batch, "a", ok=False, server_fault=True,
                             error="unreachable")
    assert requeued
    assert "a" in pool.out_of_rotation and "unreachable" in pool.out_of_rotation["a"]
    assert not pool.servers["a"].waiting
    for assignment in first[1:]:
        pool.finished(assignment.batch, "b", ok=True)
    sent = []
    while not pool.finished_all:
        batch = pool.next_assignments()
        assert batch and {a.server for a in batch} == {"b"}
        for assignment in batch:
            sent.append(assignment.batch.batch_id)
            pool.finished(assignment.batch, "b", ok=True)
    assert sorted(sent) == ["a-0", "a-1", "a-2"]
    assert pool.failed_batches == {}
    assert len(first[1:]) + len(sent) == 5  # b rendered all five batches


def test_a_batch_is_not_retried_on_a_server_it_already_failed_on():
    pool = ServerPool(items("a", 1), {"a": 1, "b": 1}, max_failures=5)
    (assignment,) = pool.next_assignments()
    assert pool.finished(assignment.batch, "a", ok=False, server_fault=True)
    (again,) = pool.next_assignments()
    assert again.server == "b"
    assert not pool.finished(again.batch, "b", ok=False, server_fault=True, error="down")
    assert pool.failed_batches == {"a-0": "down"}
    assert pool.finished_all


def test_errors_that_are_not_the_servers_fault_are_final():
    pool = ServerPool(items("a", 1), {"a": 1, "b": 1})
    (assignment,) = pool.next_assignments()
    assert not pool.finished(assignment.batch, "a", ok=False, error="node sampler: bad")
    assert pool.failed_batches == {"a-0": "node sampler: bad"}


def test_when_every_server_is_out_the_rest_fails_with_a_reason():
    pool = ServerPool(items("a", 3), {"a": 1}, max_failures=1)
    (assignment,) = pool.next_assignments()
    pool.finished(assignment.batch, "a", ok=False, server_fault=True, error="refused")
    assert pool.finished_all
    assert set(pool.failed_batches) == {"a-0", "a-1", "a-2"}
    assert "no server left" in pool.failed_batches["a-1"]


def test_rejects_unknown_servers_and_bad_depths():
    with pytest.raises(ValueError, match="unknown server 'c'"):
        ServerPool(items("c", 1), {"a": 1})
    with pytest.raises(ValueError, match="at least 1"):
        ServerPool([], {"a": 0})


@pytest.mark.parametrize(("depths", "workers"), [([2, 2], 4), ([1], 1), ([], 1), ([3, 1, 2], 6)])
def test_total_depth(depths, workers):
    assert total_depth(depths) == workers
