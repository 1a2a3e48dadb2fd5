"""A slot holder's identity: alive while it runs, provably gone once it is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import asdict, replace

from tower.runtime.processes import Process, start_time


def test_a_killed_process_is_gone_and_a_reused_pid_does_not_fool_it() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        me = Process.this()
        assert me is not None and not me.gone()
        theirs = replace(me, pid=child.pid, started=start_time(child.pid) or "")
        assert theirs.same_machine(me) and not theirs.gone()
        # The same PID with another start time is another process (a reused PID).
        assert replace(theirs, started="1").gone()
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert theirs.gone()


def test_a_register_entry_round_trips_and_another_machine_proves_nothing() -> None:
    me = Process.this()
    assert me is not None
    assert Process.from_register(asdict(me)) == me
    assert Process.from_register({"host": "x"}) is None
    elsewhere = replace(me, host="render-07")
    assert not elsewhere.same_machine(me)
