"""A loopback stand-in for a ComfyUI 0.3.64 server, for tests, benchmarks and demos.

It speaks ComfyUI's HTTP and WebSocket protocol as recorded in ``shared/comfyui-contract``,
executes the pipeline's graphs in scaled simulated time on a simulated CUDA card, writes
deterministic PNGs, and can inject faults (HTTP 500s, slow responses, dropped sockets,
delayed history, execution errors, out-of-memory).

    with start_simulator(SimulatorConfig(time_scale=0.002)) as sim:
        httpx.post(f"{sim.url}/prompt", json={"prompt": graph, "client_id": "me"})
"""

from __future__ import annotations

from tower.simulator.config import Faults, SimulatorConfig
from tower.simulator.server import SimulatorServer, start_simulator

__all__ = ["Faults", "SimulatorConfig", "SimulatorServer", "start_simulator"]
