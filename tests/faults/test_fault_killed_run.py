"""A render whose flow process is SIGKILLed mid-night, then run again.

The killed process cannot clean up: its prompts stay queued on the server, its slots
stay taken (Prefect keeps a lease 120 s, and an ephemeral or test API never reclaims
it), its flow run stays Running. The re-run must mark it Crashed, adopt what it left (batches go out
under planned prompt ids), render only what is missing, and get the slots back at
once because the holder is provably dead (:mod:`tasks.slots`).
"""

from __future__ import annotations

import os
import re
import signal
import time
import uuid
from datetime import timedelta
from uuid import UUID

import pytest
from faults_common import (
    assert_each_take_once,
    executed_prompts,
    farm_state,
    finish,
    gpu_images,
    queued,
    start_tower,
    wait_for,
)
from flow_helpers import write_shot_list
from prefect import get_client

from tower.store.files import DataRoot
from tower.store.integrity import check, repair, stale_temporaries

pytestmark = pytest.mark.usefixtures("prefect_backend")

SHOTS, TAKES = 6, 2        # 12 takes, 6 batches of one shot each
RERUN_BOUND_S = 60.0       # the re-run waits for no lease to run out (that takes >= 120 s)
RELEASE_BOUND_S = 10.0     # from the re-run's first wait to the dead run's slots freed


def seconds_between(earlier: str, later: str) -> float:
    """Seconds between two ``HH:MM:SS.fff`` log stamps (Prefect's console format)."""
    def seconds(stamp: str) -> float:
        hours, minutes, secs = stamp.split(":")
        return 3600 * int(hours) + 60 * int(minutes) + float(secs)
    return (seconds(later) - seconds(earlier)) % 86400


def test_a_killed_run_is_adopted_by_the_rerun_and_its_slots_come_back(tmp_path, sims):
    name = f"kill{uuid.uuid4().hex[:6]}"
    sim = sims(name, time_scale=0.05)
    shot_list = write_shot_list(tmp_path, episode="epkill", shots=SHOTS, takes=TAKES)
    data = tmp_path / "data"
    args = ("render", str(shot_list), "--server", f"{name}={sim.url}", "--data-root",
            str(data), "--retries", "1", "--retry-backoff-s", "0")

    first = start_tower(*args)
    try:   # mid-night: one batch rendered, the next ones queued under this run's slots
        wait_for(lambda: (len(gpu_images(sim)) >= TAKES and len(queued(sim)) >= 2)
                 or first.poll() is not None, timeout=90, interval=0.02)
        assert first.poll() is None, "the run ended before it could be killed"
        left_queued = set(queued(sim))
        os.killpg(first.pid, signal.SIGKILL)
    finally:
        finish(first, timeout=30)
    assert first.returncode == -signal.SIGKILL
    indexed_by_killed = farm_state(data).index.height
    left_by_kill = set(stale_temporaries(DataRoot(data), time.time() + 1))
    assert indexed_by_killed < SHOTS * TAKES

    started = time.monotonic()
    code, out = finish(start_tower(*args), timeout=120)
    rerun_s = time.monotonic() - started
    assert code == 0, out[-4000:]

    limit = f"comfyui-{name}"
    waited = re.search(rf"^(\S+) .*waiting for a slot of {limit}: 2 of 2 slots taken, 0 of "
                       "them by this run", out, re.MULTILINE)
    freed = re.search(rf"^(\S+) .*gave back 2 slots of {limit} held by flow run "
                      rf"([0-9a-f-]{{36}}): its process {first.pid} on ", out, re.MULTILINE)
    assert waited and freed, out[-4000:]
    released_s = seconds_between(waited.group(1), freed.group(1))
    assert 0 <= released_s < RELEASE_BOUND_S
    assert rerun_s < RERUN_BOUND_S
    with get_client(sync_client=True) as client:   # the UI no longer shows it Running
        killed = client.read_flow_run(UUID(freed.group(2))).state
    assert killed is not None and killed.is_crashed(), killed
    assert f"its process {first.pid} on " in (killed.message or "")
    # Every take rendered once by the GPU, every batch executed once: the prompts the
    # killed run left were adopted, not rendered again.
    assert len(gpu_images(sim)) == SHOTS * TAKES
    history = executed_prompts(sim)
    assert len(history) == SHOTS
    assert left_queued <= set(history)
    assert f"| from the index (deduplicated) | {indexed_by_killed} |" in out
    # A write the kill interrupted leaves a hidden temporary (readers never look at it);
    # the re-run leaves none, and `tower index check`/`repair` find and remove them.
    report = check(DataRoot(data), grace=timedelta(0))
    assert {p.kind for p in report.problems} <= {"stale_temporary"}, report.lines()
    assert {p.path for p in report.problems} <= left_by_kill
    repair(DataRoot(data), report, grace=timedelta(0))
    assert stale_temporaries(DataRoot(data), time.time() + 1) == []
    assert_each_take_once(data, SHOTS * TAKES)
    assert queued(sim) == ()
    print(f"killed run: {indexed_by_killed} images indexed, {len(left_queued)} prompts "
          f"left queued; slots given back {released_s:.2f} s after the re-run's first wait; "
          f"re-run {rerun_s:.1f} s, {len(history)} prompts executed in all")
