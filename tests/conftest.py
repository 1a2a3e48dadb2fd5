"""Shared test fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tower.simulator import SimulatorConfig, SimulatorServer, start_simulator

SIM_TIME_SCALE = 0.002


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[SimulatorServer]:
    """A started ComfyUI simulator (fast clock) writing its PNGs under ``tmp_path``."""
    config = SimulatorConfig(time_scale=SIM_TIME_SCALE, output_dir=tmp_path / "sim-output")
    with start_simulator(config) as server:
        yield server


# Prefect-layer fixtures (one Prefect test backend for the whole session, simulators on
# demand), registered here once so that every test module shares the same backend.
from flow_helpers import prefect_backend, sims  # noqa: E402, F401
