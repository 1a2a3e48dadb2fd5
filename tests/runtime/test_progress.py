"""Progress and ETA of a night from its plan and its finished batches, with no clock."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from tower.runtime.progress import (
    ALL,
    MIN_BATCHES_FOR_PACE,
    RATE_WINDOW,
    Progress,
    ProgressTracker,
    minutes,
    parse_rows,
)

T0 = datetime(2030, 3, 4, 1, 0, tzinfo=UTC)


@dataclass(frozen=True)
class B:
    batch_id: str
    server: str
    size: int
    est_seconds: float


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# Two servers, four batches of 4 takes each, 60 s estimated per batch.
PLAN = [B(f"a{i}", "gpu-a", 4, 60.0) for i in range(4)] + \
       [B(f"b{i}", "gpu-b", 4, 60.0) for i in range(4)]


def tracker(*finished: tuple[str, str | None, bool, float]) -> ProgressTracker:
    t = ProgressTracker.of("ep01", PLAN, T0)
    for batch_id, server, ok, seconds in finished:
        t.finished(batch_id, server, ok=ok, at=at(seconds))
    return t


@pytest.mark.parametrize(("finished", "now", "where", "expect"), [
    # Nothing finished yet: the estimate as planned, each server 240 s from the start.
    ((), 10, None, {"gpu-a": (0, 16, at(240)), "gpu-b": (0, 16, at(240)), ALL: (0, 32, at(240))}),
    # gpu-a on time (60 s a batch): 3 finished, one left, due 60 s after its last finish.
    ((("a0", "gpu-a", True, 60), ("a1", "gpu-a", True, 120), ("a2", "gpu-a", True, 180)),
     190, None, {"gpu-a": (12, 16, at(240)), ALL: (12, 32, at(240))}),
    # gpu-a twice as slow as estimated: pace 2 once three batches finished -> 120 s more.
    ((("a0", "gpu-a", True, 120), ("a1", "gpu-a", True, 240), ("a2", "gpu-a", True, 360)),
     361, None, {"gpu-a": (12, 16, at(480)), "gpu-b": (0, 16, at(480)), ALL: (12, 32, at(480))}),
    # Two finishes are not enough for a pace of its own: the estimate still holds.
    ((("a0", "gpu-a", True, 120), ("a1", "gpu-a", True, 240)),
     241, None, {"gpu-a": (8, 16, at(360))}),
    # Overdue: the ETA is never in the past.
    ((), 600, None, {"gpu-a": (0, 16, at(600)), ALL: (0, 32, at(600))}),
    # gpu-b left rotation after one batch; its three others moved to gpu-a.
    ((("b0", "gpu-b", True, 60),), 70,
     {"a0": "gpu-a", "a1": "gpu-a", "a2": "gpu-a", "a3": "gpu-a",
      "b1": "gpu-a", "b2": "gpu-a", "b3": "gpu-a"},
     {"gpu-a": (0, 28, at(420)), "gpu-b": (4, 4, None), ALL: (4, 32, at(420))}),
    # A batch failed for good counts as ended (done/total includes it), not as an image;
    # one that never ran anywhere (no server left for it) counts for the run only.
    ((("a0", "gpu-a", False, 60), ("a1", None, False, 60)), 70, None,
     {"gpu-a": (4, 12, at(180)), ALL: (8, 32, at(240))}),
    # Everything finished: no ETA.
    (tuple((b.batch_id, b.server, True, 60 * (i % 4 + 1)) for i, b in enumerate(PLAN)), 300,
     None, {"gpu-a": (16, 16, None), "gpu-b": (16, 16, None), ALL: (32, 32, None)}),
])
def test_takes_and_eta(finished, now, where, expect) -> None:
    snap = tracker(*finished).snapshot(at(now), where, out_of_rotation=("gpu-b",)
                                       if where else ())
    by_name = {p.name: p for p in (snap.overall, *snap.servers)}
    for name, (ended, total, eta) in expect.items():
        p = by_name[name]
        assert (p.takes_ended, p.takes_total, p.eta) == (ended, total, eta), name
    if where:
        assert by_name["gpu-b"].note == "out of rotation"


def test_a_server_without_its_own_pace_borrows_the_pooled_one() -> None:
    # gpu-a ran three batches at pace 2; gpu-b has finished nothing yet.
    snap = tracker(("a0", "gpu-a", True, 120), ("a1", "gpu-a", True, 240),
                   ("a2", "gpu-a", True, 360)).snapshot(at(361))
    [a, b] = snap.servers
    assert a.pace == pytest.approx(2.0) and b.pace is None
    assert b.eta == at(480)          # 4 batches * 60 s * 2 from the start
    assert snap.overall.pace == pytest.approx(2.0)


@pytest.mark.parametrize(("finishes", "now", "rate"), [
    ([], 0, None),                                   # no time has passed
    ([30, 60], 60, 8.0),                             # 8 images in the first minute
    ([30, 60], 120, 4.0),                            # ... over two minutes
    # Only the last RATE_WINDOW counts: the early batch drops out.
    ([30, RATE_WINDOW.total_seconds() + 60], RATE_WINDOW.total_seconds() + 90,
     4 * 60 / RATE_WINDOW.total_seconds()),
])
def test_images_per_minute_over_a_recent_window(finishes, now, rate) -> None:
    t = tracker(*((f"a{i}", "gpu-a", True, s) for i, s in enumerate(finishes)))
    assert t.snapshot(at(now)).overall.images_per_min == (rate if rate is None
                                                          else pytest.approx(rate))


@pytest.mark.parametrize(("seconds", "text"), [
    (30, "<1 min"), (60, "1 min"), (25 * 60 + 59, "25 min"), (3600, "1 h 00 min"),
    (2 * 3600 + 5 * 60, "2 h 05 min")])
def test_minutes(seconds: float, text: str) -> None:
    assert minutes(timedelta(seconds=seconds)) == text


def test_line_and_rows_round_trip() -> None:
    snap = tracker(("a0", "gpu-a", True, 60), ("a1", "gpu-a", True, 120),
                   ("a2", "gpu-a", True, 180)).snapshot(at(180))
    assert snap.line() == "ep01: 12/32 takes, 4.0 img/min, ETA 01:04 UTC (1 min)"
    # Later, from the stored rows: the time left counts from the reader's now.
    back = parse_rows("ep01", snap.rows())
    assert isinstance(back, Progress)
    assert back.overall == snap.overall and back.at == snap.at
    assert [s.name for s in back.servers] == ["gpu-a", "gpu-b"]
    assert back.line(at(200)) == "ep01: 12/32 takes, 4.0 img/min, ETA 01:04 UTC (<1 min)"
    assert parse_rows("ep01", [{"server": "x"}]) is None
    assert parse_rows("ep01", []) is None


def test_failed_takes_show_in_the_line_and_a_finished_run_says_done() -> None:
    t = tracker(*((b.batch_id, b.server, b.batch_id != "a0", 60) for b in PLAN))
    assert t.snapshot(at(60)).line() == "ep01: 32/32 takes (4 failed), 28.0 img/min, done"


def test_a_batch_counts_once_and_unknown_ids_are_ignored() -> None:
    t = tracker(("a0", "gpu-a", True, 60), ("a0", "gpu-a", True, 70), ("zz", "gpu-a", True, 80))
    assert t.snapshot(at(90)).overall.takes_done == 4
    assert MIN_BATCHES_FOR_PACE >= 2
