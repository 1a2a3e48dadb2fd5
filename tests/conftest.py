"""Shared test fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from clock import move_clock, parse_clock

from tower.simulator import SimulatorConfig, SimulatorServer, start_simulator

SIM_TIME_SCALE = 0.002


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--clock", metavar="ISO", default=None,
                     help="run with the clock moved to this UTC instant (e.g. "
                          "2028-02-29T23:59:00), child processes included")


def pytest_configure(config: pytest.Config) -> None:
    clock = config.getoption("--clock")
    if clock:
        move_clock(parse_clock(clock))


def pytest_report_header(config: pytest.Config) -> str | None:
    clock = config.getoption("--clock")
    return f"clock moved to {parse_clock(clock).isoformat()}" if clock else None


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[SimulatorServer]:
    """A started ComfyUI simulator (fast clock) writing its PNGs under ``tmp_path``."""
    config = SimulatorConfig(time_scale=SIM_TIME_SCALE, output_dir=tmp_path / "sim-output")
    with start_simulator(config) as server:
        yield server


# Prefect-layer fixtures (one Prefect test backend for the whole session, simulators on
# demand), registered here once so that every test module shares the same backend.
from flow_helpers import prefect_backend, sims  # noqa: E402, F401
