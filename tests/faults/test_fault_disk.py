"""The render root fills up, or turns read-only, in the middle of a night.

The render root is a small tmpfs mounted for the test (we run as root; elsewhere the
test is skipped with the reason). A failed write must fail the batch with an error naming
the file, index nothing for it, leave no temporary file, and not take the (healthy)
server out of rotation; the run still ends with its summary and run-log row; once space is
back (the tmpfs remounted bigger, or read-write), a re-run completes every take once.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from faults_common import assert_each_take_once, farm_state, queued
from flow_helpers import write_shot_list

from flows.render_episode import render_episode
from tower.store.metrics import RunLog

pytestmark = pytest.mark.usefixtures("prefect_backend")

SHOTS, TAKES = 3, 2


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, text=True, timeout=30)


@pytest.fixture
def small_render_root(tmp_path: Path) -> Iterator[Path]:
    """``data/renders`` on a 64 KiB tmpfs (a few simulator images); unmounted after."""
    renders = tmp_path / "data" / "renders"
    renders.mkdir(parents=True)
    try:
        mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", str(renders))
    except (OSError, subprocess.CalledProcessError) as err:
        pytest.skip(f"cannot mount a tmpfs here: {getattr(err, 'stderr', err)}")
    try:
        yield renders
    finally:
        subprocess.run(["umount", "-l", str(renders)], check=False, timeout=30)


def render(shot_list: Path, data: Path, server: str):
    return render_episode(shot_list=str(shot_list), servers=[server], data_root=str(data),
                          retries=0, retry_backoff_s=0, return_state=True)


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_a_failing_render_root_indexes_nothing_partial_and_a_rerun_completes(
        tmp_path, sims, small_render_root, fault):
    name = f"disk{uuid.uuid4().hex[:6]}"
    sim = sims(name)
    shot_list = write_shot_list(tmp_path, episode="epdisk", shots=SHOTS, takes=TAKES)
    data = small_render_root.parent
    if fault == "full":
        ballast = small_render_root / "ballast"
        ballast.write_bytes(b"\0" * (60 * 1024))     # a few KiB left: not one whole image
    else:
        mount("-o", "remount,ro", str(small_render_root))

    state = render(shot_list, data, f"{name}={sim.url}")
    assert state.is_failed()
    errno_text = "No space left on device" if fault == "full" else "Read-only file system"
    assert errno_text in state.message, state.message
    assert "'renders/epdisk" in state.message     # the path (relative to the data root)
    assert "out of rotation" not in state.message           # the disk's fault, not the server's
    [run] = RunLog(data / "runs").scan().collect().iter_rows(named=True)   # summary written
    assert (run["status"], run["takes_failed"]) == ("failed", SHOTS * TAKES)
    broken = farm_state(data)
    assert broken.temporaries == []
    for row in broken.index.iter_rows(named=True):   # whatever was indexed is whole
        assert (small_render_root / row["output_path"]).stat().st_size == row["size_bytes"]
    assert queued(sim) == ()

    mount("-o", "remount,rw,size=16m", str(small_render_root))
    if fault == "full":
        ballast.unlink()
    again = render(shot_list, data, f"{name}={sim.url}")
    assert again.is_completed(), again.message
    assert_each_take_once(data, SHOTS * TAKES)
