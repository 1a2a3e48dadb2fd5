"""Run a simulator on a loopback port in a background thread.

Each :class:`SimulatorServer` is independent (its own engine, worker thread and
uvicorn server), so one process can host a whole render farm on different ports.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from types import TracebackType

import uvicorn
from PIL import Image

from tower.simulator.app import create_app
from tower.simulator.config import Faults, SimulatorConfig
from tower.simulator.engine import Engine
from tower.simulator.folders import Folders

HOST = "127.0.0.1"
START_TIMEOUT_S = 10.0


class SimulatorServer:
    """A started simulator; use as a context manager or call :meth:`stop`."""

    def __init__(self, config: SimulatorConfig, faults: Faults, port: int = 0) -> None:
        self.faults = faults
        self._socket = _listen(port)  # first: a busy port fails before anything starts
        self.port: int = self._socket.getsockname()[1]
        self.url = f"http://{HOST}:{self.port}"
        # Always a private temp folder (ComfyUI empties its temp/ at start-up too), which
        # also holds the output and input folders when no output folder is given.
        self._temp_root = Path(tempfile.mkdtemp(prefix="tower-sim-"))
        self.output_dir, self.input_dir = default_folders(config, self._temp_root)
        self.config = replace(config, input_dir=self.input_dir)  # the folder in use
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if not self.input_dir.exists():
            self.input_dir.mkdir(parents=True)
            _example_png(self.input_dir / "example.png")
        (self._temp_root / "temp").mkdir()
        folders = Folders.at(self.output_dir, self.input_dir, self._temp_root / "temp")
        self.engine = Engine(self.config, faults, folders)
        uv_config = uvicorn.Config(create_app(self.engine), log_level="warning",
                                   lifespan="on", ws="websockets-sansio", access_log=False,
                                   timeout_graceful_shutdown=2)
        self._server = uvicorn.Server(uv_config)
        self._thread = threading.Thread(target=self._server.run,
                                        kwargs={"sockets": [self._socket]}, daemon=True,
                                        name=f"{config.name}-http")

    def start(self) -> SimulatorServer:
        """Start serving; returns once the server accepts connections."""
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"simulator {self.config.name!r} failed to start on "
                                   f"{self.url}")
            time.sleep(0.005)
        return self

    def restart(self) -> None:
        """Like restarting ComfyUI: queue, history, node cache, loaded model and sockets
        are lost, prompt numbers start again from 0; the port stays the same."""
        self.engine.restart()

    def busy_intervals(self) -> list[tuple[float, float]]:
        """(start, end) unix times during which the simulated GPU executed prompts."""
        return [(start, end) for start, end in self.engine.busy()["intervals"]]

    def stop(self) -> None:
        """Stop serving and the worker; removes the temp folders (with the output and
        input folders when they were temp ones)."""
        self.engine.close()
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._socket.close()
        shutil.rmtree(self._temp_root, ignore_errors=True)

    def __enter__(self) -> SimulatorServer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"SimulatorServer(name={self.config.name!r}, url={self.url!r})"


def default_folders(config: SimulatorConfig, temp_root: Path) -> tuple[Path, Path]:
    """(output, input) folders: as configured; else the input folder is
    ``<output>-input`` beside the output folder, and both live in ``temp_root`` when no
    output folder is given."""
    output = Path(config.output_dir) if config.output_dir else temp_root / "output"
    default_input = output.with_name(f"{output.name}-input") if config.output_dir \
        else temp_root / "input"
    return output, Path(config.input_dir) if config.input_dir else default_input


def _example_png(path: Path) -> None:
    """The ``example.png`` a fresh ComfyUI install has in its input folder (recorded as
    LoadImage's only choice before any upload)."""
    image = Image.linear_gradient("L").resize((64, 64)).convert("RGB")
    image.save(path, format="PNG")


def _listen(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Inherited by accepted connections; without it each keep-alive response after
        # the first waits about 40 ms on a delayed ACK.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((HOST, port))
    except OSError:
        sock.close()
        raise
    return sock


def start_simulator(config: SimulatorConfig | None = None, port: int = 0,
                    faults: Faults | None = None) -> SimulatorServer:
    """Start a simulator on ``127.0.0.1:port`` (0 picks a free port) in the background."""
    server = SimulatorServer(config or SimulatorConfig(), faults or Faults(), port)
    return server.start()
