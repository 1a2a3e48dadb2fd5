"""Which process holds something, precisely enough to tell later whether it still runs.

A PID alone is not enough: PIDs are reused, containers have their own PID namespaces,
and a machine may have rebooted. Host name, boot id, PID namespace, PID and the PID's
start time together name one process; from the same machine (same host, boot and
namespace) a reader can prove it gone. From another machine nothing can be proven, and
:meth:`Process.same_machine` says so. Linux only (``/proc``); elsewhere
:meth:`Process.this` is None and no liveness check is made.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROC = Path("/proc")


@dataclass(frozen=True)
class Process:
    """Who holds a bank's leases, precisely enough to tell from the same machine whether
    that process is still alive (a PID alone could have been reused)."""

    host: str
    boot_id: str
    pid_ns: str
    pid: int
    started: str  # the PID's start time, clock ticks after boot (/proc/<pid>/stat)

    @classmethod
    def this(cls) -> Process | None:
        """This process; None where /proc cannot tell (no liveness checks then)."""
        try:
            return cls(host=socket.gethostname(),
                       boot_id=(PROC / "sys/kernel/random/boot_id").read_text().strip(),
                       pid_ns=os.readlink(PROC / "self/ns/pid"), pid=os.getpid(),
                       started=start_time(os.getpid()) or "")
        except OSError:
            return None

    @classmethod
    def from_register(cls, value: Mapping[str, Any]) -> Process | None:
        try:
            return cls(host=str(value["host"]), boot_id=str(value["boot_id"]),
                       pid_ns=str(value["pid_ns"]), pid=int(value["pid"]),
                       started=str(value["started"]))
        except (KeyError, TypeError, ValueError):
            return None

    def same_machine(self, other: Process) -> bool:
        """Same host, same boot and same PID namespace: PIDs mean the same process."""
        return (self.host, self.boot_id, self.pid_ns) == (other.host, other.boot_id,
                                                          other.pid_ns)

    def gone(self) -> bool:
        """Whether this process (seen from the same machine) no longer runs."""
        return start_time(self.pid) != self.started



def start_time(pid: int) -> str | None:
    """Field 22 of ``/proc/<pid>/stat``, or None when there is no such process."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # the name may hold spaces and ")"
