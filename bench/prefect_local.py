"""A private Prefect server for one benchmark run, started and stopped by tower's own
local-server code (its log and PID file under the run's temporary folder)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tower.cli.local_server import ensure_prefect_server, free_port, stop_started_servers


@contextlib.contextmanager
def prefect_server(tmp: Path, url: str | None = None) -> Iterator[str]:
    """The API URL: ``url`` when given, else a server of its own in ``tmp`` (its own
    database, never the one ``PREFECT_API_URL`` names), stopped afterwards."""
    if url:
        yield url
        return
    state = tmp / "prefect-server"
    started = ensure_prefect_server(state, port=free_port(), api_url="")
    try:
        yield started.url
    finally:
        stop_started_servers(state)
