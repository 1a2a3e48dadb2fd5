"""Fixtures and helpers of the Prefect-layer tests: one Prefect backend, real simulators."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from prefect.settings import PREFECT_API_URL

from tower.comfyui import ComfyUIClient
from tower.simulator import SimulatorConfig, SimulatorServer, start_simulator

TIME_SCALE = 0.002
TOWER = Path(sys.executable).with_name("tower")


@pytest.fixture(scope="session")
def prefect_backend() -> Iterator[None]:
    """One temporary Prefect server and database for the whole session."""
    from prefect.testing.utilities import prefect_test_harness  # only for tests that need it

    with prefect_test_harness(server_startup_timeout=120):
        yield


SimFactory = Callable[..., SimulatorServer]


@pytest.fixture
def sims(tmp_path: Path) -> Iterator[SimFactory]:
    """Start simulators on demand (``sims("gpu-a", time_scale=...)``); all stopped at the end."""
    started: list[SimulatorServer] = []

    def start(name: str = "sim", **config: object) -> SimulatorServer:
        config.setdefault("time_scale", TIME_SCALE)
        server = start_simulator(SimulatorConfig(name=name, output_dir=tmp_path / f"out-{name}",
                                                 **config))  # type: ignore[arg-type]
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def write_shot_list(folder: Path, episode: str = "ep01", shots: int = 4, takes: int = 2,
                    preset: str = "draft", **defaults: object) -> Path:
    """A small shot list: ``shots`` shots of ``takes`` takes each, all at ``preset``."""
    data = {
        "episode": episode,
        "defaults": {"preset": preset, "takes": takes, "negative": "lowres", **defaults},
        "shots": [{"id": f"sh{10 * (i + 1):03d}", "prompt": f"{episode} shot {i}: lanterns"}
                  for i in range(shots)],
    }
    path = folder / f"{episode}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


class QueueWatch:
    """Polls a server's queue in a thread and keeps the largest occupancy seen."""

    def __init__(self, url: str, interval: float = 0.005):
        self.url, self.interval = url, interval
        self.max_depth = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with ComfyUIClient(self.url, timeout=5) as client:
            while not self._stop.is_set():
                queue = client.queue()
                self.max_depth = max(self.max_depth, len(queue.running) + len(queue.pending))
                self.samples += 1
                time.sleep(self.interval)

    def __enter__(self) -> QueueWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def png_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.png") if "contact-sheets" not in p.parts)


def tower(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed ``tower`` command against the test session's Prefect server."""
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    return subprocess.run([str(TOWER), *args], capture_output=True, text=True, env=env,
                          timeout=180, check=False)
