"""What every fault test checks afterwards, and how it starts a real ``tower render``.

After a fault and its recovery the farm must hold each take exactly once: one image
per take under the render root, whole (its sha256 and size match its index row), no
index row pointing at a missing or partial file, no temporary file left, and no prompt
left in a simulator's queue.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx
import polars as pl
from flow_helpers import TOWER, png_files
from prefect.settings import PREFECT_API_URL

from tower.comfyui import ComfyUIClient
from tower.simulator import SimulatorServer
from tower.store.index import OutputIndex

T = TypeVar("T")


def wait_for(probe: Callable[[], T], timeout: float = 60.0, interval: float = 0.05) -> T:
    """The first truthy value of ``probe()`` within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout} s")
        time.sleep(interval)


def start_tower(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """``tower ARGS`` as a child process of its own (its own session, so a kill reaches
    only it), against the test session's Prefect server; output in ``.stdout``."""
    environ = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()), **(env or {})}
    return subprocess.Popen([str(TOWER), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=environ,
                            start_new_session=True)


def finish(child: subprocess.Popen[str], timeout: float = 120.0) -> tuple[int, str]:
    """Wait for ``child``; (exit code, everything it printed). Killed if it overstays."""
    try:
        out, _ = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as late:
        os.killpg(child.pid, signal.SIGKILL)
        out, _ = child.communicate()
        raise AssertionError(f"tower did not finish within {timeout} s:\n{out[-4000:]}") \
            from late
    return child.returncode, out


def executed_prompts(sim: SimulatorServer) -> dict[str, dict]:
    """The prompts the simulator executed (its ``/history``), by prompt id."""
    return httpx.get(f"{sim.url}/history", timeout=10).json()


def gpu_images(sim: SimulatorServer) -> list[Path]:
    """Every image the simulated GPU wrote: one per take it rendered."""
    return sorted(sim.output_dir.rglob("*.png"))


def queued(sim: SimulatorServer) -> tuple[str, ...]:
    """Prompt ids running or waiting on the simulator."""
    with ComfyUIClient(sim.url, timeout=5) as client:
        queue = client.queue()
    return queue.running + queue.pending


@dataclass(frozen=True)
class FarmState:
    """What a data root holds after a run."""

    index: pl.DataFrame
    images: list[Path]
    temporaries: list[Path]


def farm_state(data: Path) -> FarmState:
    index_dir = data / "index"
    index = (OutputIndex(index_dir).scan().collect() if index_dir.exists()
             else pl.DataFrame(schema={"render_key": pl.String}))
    temporaries = [p for p in data.rglob("*") if p.name.endswith(".tmp")]
    return FarmState(index, png_files(data / "renders"), temporaries)


def assert_each_take_once(data: Path, takes: int, rows_per_key: int = 1) -> FarmState:
    """``takes`` images, each indexed, whole, once on disk; nothing half-written anywhere.

    A render key may have up to ``rows_per_key`` rows, all naming the same file with the
    same hash (two runs that both stored one adopted prompt): dedup serves it once.
    """
    state = farm_state(data)
    assert state.temporaries == []
    assert len(state.images) == takes
    assert state.index["render_key"].n_unique() == takes
    per_key = state.index.group_by("render_key").agg(
        rows=pl.len(), files=pl.col("output_path").n_unique(), hashes=pl.col("sha256").n_unique())
    assert per_key["rows"].max() <= rows_per_key, "a render key is indexed too often"
    assert set(per_key["files"]) == {1} and set(per_key["hashes"]) == {1}
    renders = data / "renders"
    indexed = set()
    for row in state.index.iter_rows(named=True):
        path = renders / row["output_path"]
        blob = path.read_bytes()
        assert len(blob) == row["size_bytes"], path
        assert hashlib.sha256(blob).hexdigest() == row["sha256"], path
        indexed.add(path)
    assert indexed == set(state.images)      # no image without its row
    return state
