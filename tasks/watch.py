"""The dispatch loop's two conversations with the Prefect API, kept off the loop.

Moving the progress bar and noticing a cancellation both call the API. On a busy
SQLite-backed Prefect server any write may come back 503 and be retried after about two
seconds; made from the dispatch loop, that would hold back the next batch while a GPU
waits. A thread of its own makes both calls and tells the loop about a cancellation
through its event queue.
"""

from __future__ import annotations

import contextvars
import queue
import threading
import time
from typing import Any
from uuid import UUID

from prefect.artifacts import update_progress_artifact

from tasks.render import flow_run_stopping

STATE_POLL_S = 0.5
PROGRESS_EVERY_S = 1.0
STOPPING = "stopping"


class RunWatch:
    """Polls the flow run's state and moves its progress artifact, in the background.

    Puts ``(STOPPING, None)`` into ``events`` once when the run is being cancelled.
    """

    def __init__(self, flow_run_id: str | None, progress_id: UUID | None,
                 events: queue.SimpleQueue[Any], poll_s: float = STATE_POLL_S) -> None:
        self._flow_run_id = flow_run_id
        self._progress_id = progress_id
        self._events = events
        self._poll_s = poll_s
        self._percent: float | None = None
        self._shown: float | None = None
        self._shown_at = float("-inf")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=contextvars.copy_context().run,
                                        args=(self._loop,), name="run-watch", daemon=True)

    def __enter__(self) -> RunWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def progress(self, percent: float) -> None:
        """Show ``percent`` on the progress artifact within a second; only the latest
        value counts, so short batches cost one API write a second, not one each."""
        self._percent = percent

    def _loop(self) -> None:
        stopping = False
        while not self._stop.wait(self._poll_s):
            self._show_progress()
            if not stopping and not self._stop.is_set() and flow_run_stopping(self._flow_run_id):
                stopping = True
                self._events.put((STOPPING, None))
        self._show_progress(final=True)

    def _show_progress(self, final: bool = False) -> None:
        percent = self._percent
        if self._progress_id is None or percent is None or percent == self._shown:
            return
        if not final and time.monotonic() - self._shown_at < PROGRESS_EVERY_S:
            return
        update_progress_artifact(self._progress_id, percent)
        self._shown, self._shown_at = percent, time.monotonic()
