"""The server-pool policy: queue depth, work stealing, taking failing servers out."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tower.runtime.pool import ServerPool, total_depth

CKPT = ("checkpoints", "anime-final-sd15.safetensors")
LORA = ("loras", "char-ren-v2.safetensors")
CONTROL = ("controlnet", "layout-lineart-sd15.safetensors")


@dataclass(frozen=True)
class Item:
    """The fields the pool reads from a render batch."""

    batch_id: str
    server: str
    vram_estimate_mb: float = 1000.0
    models: tuple[tuple[str, str], ...] = (CKPT,)


def items(server: str, count: int, prefix: str | None = None, vram: float = 1000.0,
          models: tuple[tuple[str, str], ...] = (CKPT,)) -> list[Item]:
    return [Item(f"{prefix or server}-{i}", server, vram, models) for i in range(count)]


def inventory(*files: tuple[str, str]) -> dict[str, frozenset[str]]:
    folders: dict[str, set[str]] = {}
    for folder, name in files:
        folders.setdefault(folder, set()).add(name)
    return {folder: frozenset(names) for folder, names in folders.items()}


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


def test_a_batch_that_left_its_server_frees_its_slot_while_its_images_are_stored():
    pool = ServerPool(items("a", 3), {"a": 1})
    first = pool.next_assignments()
    pool.left_server("a-0")
    assert ids(pool.next_assignments()) == [("a-1", "a")]
    assert pool.in_flight == 2                     # a-0 still finishing: the run is not over
    pool.finished(first[0].batch, "a", ok=False, server_fault=True, error="disk full")
    pool.left_server("a-1")
    pool.left_server("a-1")                        # a retry's second notice changes nothing
    assert ids(pool.next_assignments()) == [("a-2", "a")]
    assert not pool.finished_all and pool.in_flight == 2


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


def test_local_failures_fail_the_batch_without_blaming_the_server():
    """A full disk fails every batch on this machine; the server keeps its standing."""
    pool = ServerPool(items("a", 4), {"a": 1}, max_failures=1)
    for _ in range(3):
        (assignment,) = pool.next_assignments()
        assert not pool.finished(assignment.batch, "a", ok=False, local=True,
                                 error="No space left on device: 'renders/x.png'")
    assert pool.servers["a"].in_rotation and pool.servers["a"].consecutive_failures == 0
    assert [f.batch.batch_id for f in pool.take_failed()] == ["a-0", "a-1", "a-2"]
    (assignment,) = pool.next_assignments()
    pool.finished(assignment.batch, "a", ok=False, error="node raised")
    assert not pool.servers["a"].in_rotation


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
    assert pool.failed_batches == {"a-0": "down; not retried elsewhere: no server left to "
                                           "render it (a: failed; b: down)"}
    assert pool.finished_all and pool.tried("a-0") == {"a", "b"}


def test_a_waiting_batch_of_a_server_taken_out_never_goes_back_to_one_it_failed_on():
    pool = ServerPool(items("b", 1, "x") + items("b", 1) + items("a", 2),
                      {"a": 1, "b": 1}, max_failures=2)
    assert ids(pool.next_assignments()) == [("a-0", "a"), ("x-0", "b")]
    assert pool.finished(Item("x-0", "b"), "b", ok=False, server_fault=True, error="b: boom")
    assert [b.batch_id for b in pool.servers["a"].waiting] == ["a-1", "x-0"]
    assert ids(pool.next_assignments()) == [("b-0", "b")]
    assert pool.finished(Item("a-0", "a"), "a", ok=False, server_fault=True, error="a: boom")
    assert ids(pool.next_assignments()) == [("a-1", "a")]
    # a's second failure in a row takes it out while x-0 waits on it; b had x-0 already
    assert pool.finished(Item("a-1", "a"), "a", ok=False, server_fault=True, error="a: boom")
    assert not pool.servers["a"].in_rotation
    assert pool.failed_batches == {"x-0": "no server left to render it (a: out of "
                                          "rotation, last error: a: boom; b: b: boom)"}
    assert [f.batch.batch_id for f in pool.take_failed()] == ["x-0"]
    sent = []
    pool.finished(Item("b-0", "b"), "b", ok=True)
    while not pool.finished_all:
        for assignment in pool.next_assignments():
            sent.append(ids([assignment])[0])
            pool.finished(assignment.batch, assignment.server, ok=True)
    assert sent == [("a-0", "b"), ("a-1", "b")]


def test_stealing_never_takes_a_batch_back_to_a_server_it_failed_on():
    pool = ServerPool(items("a", 1) + items("b", 1, "x") + items("a", 2, "y"),
                      {"a": 1, "b": 1}, max_failures=5)
    first = pool.next_assignments()
    assert ids(first) == [("a-0", "a"), ("x-0", "b")]
    assert pool.finished(first[1].batch, "b", ok=False, server_fault=True, error="boom")
    # x-0 now waits on a behind y-0, y-1; b is idle and may steal a's tail, but not x-0
    assert [b.batch_id for b in pool.servers["a"].waiting] == ["y-0", "y-1", "x-0"]
    stolen = pool.next_assignments()
    assert ids(stolen) == [("y-1", "b")]
    pool.finished(stolen[0].batch, "b", ok=True)
    assert ids(pool.next_assignments()) == [("y-0", "b")]
    assert "x-0" in [b.batch_id for b in pool.servers["a"].waiting]


def test_with_every_server_failing_each_batch_fails_listing_every_servers_last_error():
    pool = ServerPool(items("a", 3) + items("b", 3), {"a": 1, "b": 1}, max_failures=2)
    sent: list[tuple[str, str]] = []
    reported: list[str] = []
    while assignments := pool.next_assignments():
        for assignment in assignments:
            sent.append((assignment.batch.batch_id, assignment.server))
            pool.finished(assignment.batch, assignment.server, ok=False, server_fault=True,
                          error=f"{assignment.server} exploded")
        reported += [failed.batch.batch_id for failed in pool.take_failed()]
    assert pool.finished_all and not pool.active
    assert len(sent) == len(set(sent))                        # never twice on one server
    assert sorted(reported) == sorted(pool.failed_batches) == [
        "a-0", "a-1", "a-2", "b-0", "b-1", "b-2"]              # each reported once
    for error in pool.failed_batches.values():
        assert "no server left to render it" in error
        assert "a: out of rotation, last error: a exploded" in error
        assert "b: out of rotation, last error: b exploded" in error or "b: b exploded" in error


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


# --- model inventories -----------------------------------------------------------------


def test_stealing_skips_batches_whose_models_the_thief_lacks():
    batches = items("a", 3, models=(CKPT, LORA)) + items("a", 2, "plain") + items("b", 1)
    pool = ServerPool(batches, {"a": 1, "b": 1},
                      inventories={"a": inventory(CKPT, LORA), "b": inventory(CKPT)})
    pool.next_assignments()                      # a-0 on a, b-0 on b
    pool.finished(Item("b-0", "b"), "b", ok=True)
    # a's tail is plain-1, plain-0, then its LoRA batches: b takes only the plain ones
    assert ids(pool.next_assignments()) == [("plain-1", "b")]
    pool.finished(Item("plain-1", "b"), "b", ok=True)
    assert ids(pool.next_assignments()) == [("plain-0", "b")]
    pool.finished(Item("plain-0", "b"), "b", ok=True)
    assert pool.next_assignments() == []
    assert [b.batch_id for b in pool.servers["a"].waiting] == ["a-1", "a-2"]


def test_a_server_without_a_known_inventory_is_taken_to_have_everything():
    pool = ServerPool(items("a", 3, models=(CKPT, LORA)) + items("b", 1), {"a": 1, "b": 1},
                      inventories={"a": inventory(CKPT, LORA), "b": None})
    pool.next_assignments()
    pool.finished(Item("b-0", "b"), "b", ok=True)
    assert ids(pool.next_assignments()) == [("a-2", "b")]


def test_batches_of_a_server_out_of_rotation_go_only_where_their_models_are():
    batches = items("a", 4, models=(CKPT, LORA))
    pool = ServerPool(batches, {"a": 1, "b": 1, "c": 1}, max_failures=1,
                      inventories={"a": inventory(CKPT, LORA), "b": inventory(CKPT),
                                   "c": inventory(CKPT, LORA)})
    first = pool.next_assignments()               # idle b cannot steal; c can
    assert ids(first) == [("a-0", "a"), ("a-3", "c")]
    assert pool.finished(first[0].batch, "a", ok=False, server_fault=True, error="unreachable")
    assert not pool.servers["b"].waiting                      # b is idle, yet gets none
    assert [b.batch_id for b in pool.servers["c"].waiting] == ["a-1", "a-2", "a-0"]
    pool.finished(first[1].batch, "c", ok=True)
    sent = ["a-3"]
    while not pool.finished_all:
        for assignment in pool.next_assignments():
            assert assignment.server == "c"
            sent.append(assignment.batch.batch_id)
            pool.finished(assignment.batch, "c", ok=True)
    assert sorted(sent) == ["a-0", "a-1", "a-2", "a-3"] and pool.failed_batches == {}


def test_when_no_server_left_has_the_models_the_batches_fail_saying_what_is_missing():
    batches = items("a", 3, models=(CKPT, LORA, CONTROL)) + items("a", 1, "plain")
    pool = ServerPool(batches, {"a": 1, "b": 1, "c": 1}, max_failures=1,
                      inventories={"a": inventory(CKPT, LORA, CONTROL),
                                   "b": inventory(CKPT), "c": inventory(CKPT, LORA)})
    first = pool.next_assignments()
    assert ids(first) == [("a-0", "a"), ("plain-0", "b")]    # c can take none of a's
    assert not pool.finished(first[0].batch, "a", ok=False, server_fault=True,
                             error="unreachable")
    lacks = ("b lacks loras/char-ren-v2.safetensors, controlnet/layout-lineart-sd15"
             ".safetensors; c lacks controlnet/layout-lineart-sd15.safetensors")
    assert pool.failed_batches["a-0"] == (
        f"unreachable; not retried elsewhere: no server left in rotation has its model"
        f" files: {lacks}")
    for orphan in ("a-1", "a-2"):
        assert pool.failed_batches[orphan] == (
            f"no server left in rotation has its model files: {lacks}"
            f" (a left rotation: 1 batches failed in a row: unreachable)")
    pool.finished(first[1].batch, "b", ok=True)
    assert set(pool.failed_batches) == {"a-0", "a-1", "a-2"} and pool.finished_all


MODEL_SETS = [(CKPT,), (CKPT, LORA), (CKPT, CONTROL), (CKPT, LORA, CONTROL)]


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_the_pool_never_sends_a_batch_where_its_models_are_not(data):
    names = ["a", "b", "c"]
    inventories = {name: inventory(*data.draw(st.sampled_from(MODEL_SETS), label=name))
                   for name in names}
    batches = []
    for n in range(data.draw(st.integers(1, 12), label="batches")):
        models = data.draw(st.sampled_from(MODEL_SETS), label=f"models {n}")
        homes = [name for name in names if all(
            file in inventories[name].get(folder, ()) for folder, file in models)]
        if homes:                        # the planner only plans where the models are
            batches.append(Item(f"x{n}", data.draw(st.sampled_from(homes)), 1000.0, models))
    pool = ServerPool(batches, {name: data.draw(st.integers(1, 2)) for name in names},
                      inventories=inventories, max_failures=data.draw(st.integers(1, 3)))
    rendered = set()
    sent: list[tuple[str, str]] = []
    reported: list[str] = []
    while assignments := pool.next_assignments():
        for assignment in assignments:
            batch, server = assignment.batch, assignment.server
            sent.append((batch.batch_id, server))
            assert all(file in inventories[server].get(folder, ())
                       for folder, file in batch.models)
            ok = data.draw(st.booleans())
            pool.finished(batch, server, ok=ok, server_fault=not ok, error="down")
            if ok:
                rendered.add(batch.batch_id)
        reported += [failed.batch.batch_id for failed in pool.take_failed()]
    assert pool.finished_all            # every batch rendered or failed, none twice
    assert rendered | set(pool.failed_batches) == {b.batch_id for b in batches}
    assert not rendered & set(pool.failed_batches)
    assert sorted(reported) == sorted(pool.failed_batches)    # each failure reported once
    assert len(sent) == len(set(sent))  # no batch goes back to a server it has been on
