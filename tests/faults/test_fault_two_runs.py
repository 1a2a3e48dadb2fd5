"""Two renders of the same episode at once, into the same data root.

Both plan the same takes under the same prompt ids. The slots keep them from filling
the server twice over; whichever submits a prompt second adopts the first one's
prompt (queued, running or finished), so the GPU renders every take once.

Both runs then store the same prompt's images. They take turns (a lock per prompt
under the data root), and the second finds them stored and indexed by the first and
keeps them as they are: each take is indexed once, its file stamped once.
"""

from __future__ import annotations

import uuid

import pytest
from faults_common import (
    assert_each_take_once,
    executed_prompts,
    finish,
    gpu_images,
    queued,
    start_tower,
)
from flow_helpers import write_shot_list

pytestmark = pytest.mark.usefixtures("prefect_backend")

SHOTS, TAKES = 4, 2


def counts(out: str) -> dict[str, int]:
    """The summary table's counts, as ``tower render`` prints them."""
    found = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[1].split(" ")[0].isdigit():
            found[cells[0]] = int(cells[1].split(" ")[0])
    return found


def test_two_runs_of_one_episode_render_and_index_each_take_once(tmp_path, sims):
    name = f"twin{uuid.uuid4().hex[:6]}"
    sim = sims(name, time_scale=0.5)
    shot_list = write_shot_list(tmp_path, episode="eptwin", shots=SHOTS, takes=TAKES)
    data = tmp_path / "data"
    args = ("render", str(shot_list), "--server", f"{name}={sim.url}", "--data-root",
            str(data), "--retries", "1", "--retry-backoff-s", "0")
    # Started together; each batch takes about 2 s, longer than the two start-ups differ.
    first, second = start_tower(*args), start_tower(*args)
    results = [finish(first, timeout=150), finish(second, timeout=150)]
    for code, out in results:
        assert code == 0, out[-4000:]
    tallies = [counts(out) for _, out in results]
    # They overlapped: neither found everything in the index when it planned.
    assert all(t["from the index (deduplicated)"] < SHOTS * TAKES for t in tallies)
    assert all(t["images stored"] + t["from the index (deduplicated)"] == SHOTS * TAKES
               for t in tallies)
    assert len(gpu_images(sim)) == SHOTS * TAKES       # the GPU rendered each take once
    assert len(executed_prompts(sim)) == SHOTS         # each batch executed once
    state = assert_each_take_once(data, SHOTS * TAKES)   # one row per key
    assert state.index.height == SHOTS * TAKES
    assert queued(sim) == ()
    print(f"two runs at once: {tallies}; index rows {state.index.height}, GPU images "
          f"{len(gpu_images(sim))}, prompts executed {len(executed_prompts(sim))}")
