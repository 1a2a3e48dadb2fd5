"""``pytest --clock=ISO``: run the whole suite with the clock moved, children included.

The suite must pass on any date. To prove it without waiting a year, the clock of the
test process is moved in-process with time-machine (it ticks on from the given
instant; ``time.monotonic`` and sleeping are untouched), and the same shift is handed
to every Python child process a test starts (the ``tower`` CLI, the Prefect test
server, simulators) through ``TOWER_TEST_CLOCK_SHIFT_S`` and a ``sitecustomize``
module on ``PYTHONPATH`` that applies it at interpreter start-up.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path

SHIFT_ENV = "TOWER_TEST_CLOCK_SHIFT_S"
SITE_DIR = Path(__file__).with_name("clock_site")


def parse_clock(value: str) -> datetime:
    """An ISO date or date-time; naive means UTC."""
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def move_clock(destination: datetime) -> None:
    """Move this process's clock to ``destination`` and every future child's by as much.

    A process started by a moved suite (a pytest-xdist worker) was moved at start-up by
    ``sitecustomize`` and keeps the shift it was handed.
    """
    if os.environ.get(SHIFT_ENV):
        return
    import time_machine

    shift = destination.timestamp() - time.time()
    os.environ[SHIFT_ENV] = repr(shift)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(SITE_DIR), os.environ.get("PYTHONPATH")]))
    time_machine.travel(destination, tick=True).start()
    time.time()  # time-machine starts ticking at the first reading, so read it now
