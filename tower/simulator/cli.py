"""``tower sim``: run a simulated ComfyUI server in the foreground."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated, Optional

import typer

from tower.simulator.config import SimulatorConfig
from tower.simulator.server import start_simulator

LOOPBACK_NAMES = ("127.0.0.1", "localhost")


def sim(
    host: Annotated[str, typer.Option(help="must be loopback: 127.0.0.1 only")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port on 127.0.0.1 (0 picks a free one)")] = 8188,
    vram_mb: Annotated[int, typer.Option(help="simulated card size in MB", min=1024)] = 12288,
    time_scale: Annotated[float, typer.Option(
        help="real seconds slept per simulated second (0 = no sleeping)", min=0.0)] = 0.01,
    output_dir: Annotated[Optional[Path], typer.Option(  # noqa: UP045 (Typer needs Optional)
        help="where PNGs are written (a temp folder, removed on exit, if not given)")] = None,
    input_dir: Annotated[Optional[Path], typer.Option(  # noqa: UP045 (Typer needs Optional)
        help="where uploads go and LoadImage reads (default: <output-dir>-input)")] = None,
) -> None:
    """Run a ComfyUI simulator on 127.0.0.1 until Ctrl-C."""
    if host not in LOOPBACK_NAMES:
        typer.echo(f"--host {host!r} refused: the simulator binds 127.0.0.1 only", err=True)
        raise typer.Exit(2)
    config = SimulatorConfig(vram_mb=vram_mb, time_scale=time_scale, output_dir=output_dir,
                             input_dir=input_dir)
    try:
        server = start_simulator(config, port=port)
    except OSError as err:
        typer.echo(f"cannot listen on 127.0.0.1:{port}: {err.strerror or err}", err=True)
        raise typer.Exit(1) from err
    typer.echo(f"ComfyUI simulator listening on {server.url} (output: {server.output_dir}, "
               f"input: {server.input_dir})")
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        while not done.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        typer.echo("stopping")
        server.stop()
