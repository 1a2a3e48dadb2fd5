"""The watchdog's rules: when a silent flow run counts as dead, and what it is told.

A flow run whose process (or whole machine) dies stays Running on the Prefect server:
nothing is left to report its end. Every flow-run process sends a heartbeat event every
``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` seconds (Prefect's default 180, minimum 30), so
the server can tell a dead run from a long one: no heartbeat (and no end) for
``silence_s`` means dead. ``tower watchdog setup`` makes the Prefect automations that
then set the run Crashed (which frees its deployment concurrency slot, and lets the
next run take back its ComfyUI slots at once) and, for the nightly, start it again: the
new run renders only what is missing and adopts the prompts the dead one had queued.
This module holds the Prefect-free half: names, limits and the crash message.
"""

from __future__ import annotations

from tower.runtime.notifications import AUTOMATION_PREFIX

PREFECT_HEARTBEAT_DEFAULT_S = 180
PREFECT_HEARTBEAT_MIN_S = 30
DEFAULT_SILENCE_S = 3 * PREFECT_HEARTBEAT_DEFAULT_S + 60
WATCHED_TAG = "tower"  # every deployment in prefect.yaml carries it
SILENT_RUNS_NAME = f"{AUTOMATION_PREFIX}crash silent runs"
RERUN_PREFIX = f"{AUTOMATION_PREFIX}re-run "


def rerun_name(deployment: str) -> str:
    """``tower: re-run render-episode/nightly when it goes silent``."""
    return f"{RERUN_PREFIX}{deployment} when it goes silent"


def crash_message(silence_s: int) -> str:
    """The Crashed state's message: what was seen, and what to do about it."""
    return (f"no heartbeat for {silence_s} s: the flow-run process or its worker machine "
            "died (tower watchdog). A re-run renders only what is missing.")


def check_silence(silence_s: int, heartbeat_s: int | None = None) -> None:
    """Refuse a silence that would crash healthy runs between two heartbeats.

    Raises:
        ValueError: ``silence_s`` is not at least two heartbeats (``heartbeat_s``, the
            workers' ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``; default Prefect's).
    """
    beat = heartbeat_s or PREFECT_HEARTBEAT_DEFAULT_S
    if beat < PREFECT_HEARTBEAT_MIN_S:
        raise ValueError(f"heartbeat {beat} s: Prefect sends one at most every "
                         f"{PREFECT_HEARTBEAT_MIN_S} s")
    if silence_s < 2 * beat:
        raise ValueError(f"silence {silence_s} s is under two heartbeats ({beat} s each): "
                         "a healthy run would be crashed between two of them; raise "
                         "--silence or lower PREFECT_FLOWS_HEARTBEAT_FREQUENCY on the "
                         "workers (and say so with --heartbeat)")
