"""The ``--clock`` suite option reaches child processes with the same shift."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime

from clock import SHIFT_ENV, SITE_DIR, parse_clock

A_YEAR_S = 366 * 86400.0


def _child_time(shift_s: float) -> float:
    """``time.time()`` in a new interpreter told to shift its clock by ``shift_s``."""
    env = {**os.environ, SHIFT_ENV: repr(shift_s),
           "PYTHONPATH": os.pathsep.join([str(SITE_DIR), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.run([sys.executable, "-c", "import time; print(time.time())"],
                           env=env, capture_output=True, text=True, check=True, timeout=60)
    return float(child.stdout)


def test_a_child_process_runs_with_the_shift_it_is_given() -> None:
    # relative to an unshifted child: this process's own clock may be moved by --clock
    started = time.monotonic()
    plain, shifted = _child_time(0.0), _child_time(A_YEAR_S)
    elapsed = time.monotonic() - started
    assert 0 <= shifted - A_YEAR_S - plain <= elapsed


def test_clock_values_are_utc_unless_they_say_otherwise() -> None:
    assert parse_clock("2028-02-29T23:59:00") == datetime(2028, 2, 29, 23, 59, tzinfo=UTC)
    assert parse_clock("2027-12-01") == datetime(2027, 12, 1, tzinfo=UTC)
    assert parse_clock("2028-02-29T23:59:00+09:00").utcoffset().total_seconds() == 9 * 3600


def test_a_child_started_by_a_test_shares_this_process_clock() -> None:
    # with --clock (under xdist too) both are moved by the same shift; without, neither
    before = time.time()
    child = subprocess.run([sys.executable, "-c", "import time; print(time.time())"],
                           capture_output=True, text=True, check=True, timeout=60)
    after = time.time()
    assert before - 1 <= float(child.stdout) <= after + 1
