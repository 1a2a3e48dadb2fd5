"""The dispatch loop's conversations with the Prefect API, kept off the loop.

Moving the progress bar, updating the ETA table and noticing a cancellation all call
the API. On a busy
SQLite-backed Prefect server any write may come back 503 and be retried after about two
seconds; made from the dispatch loop, that would hold back the next batch while a GPU
waits. A thread of its own makes both calls and tells the loop about a cancellation
through its event queue.

The ETA table (:class:`tower.runtime.progress.Progress` rows) is one table artifact
updated in place (``PATCH /artifacts/{id}``, which moves its key's latest version too),
not a new version per update, and at most every :data:`TABLE_EVERY_S`; the same line
goes to the flow run's log (and so to ``tower render``'s terminal) at most every
:data:`LOG_EVERY_S`. Both show the last state once more when the loop ends.
"""

from __future__ import annotations

import contextvars
import json
import queue
import threading
import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

from prefect import get_client
from prefect.artifacts import update_progress_artifact
from prefect.client.schemas.actions import ArtifactUpdate

from tasks.render import flow_run_stopping
from tower.runtime.progress import Progress

STATE_POLL_S = 0.5
PROGRESS_EVERY_S = 1.0
TABLE_EVERY_S = 5.0
LOG_EVERY_S = 10.0
STOPPING = "stopping"


class RunWatch:
    """Polls the flow run's state and moves its progress artifact, in the background.

    Puts ``(STOPPING, None)`` into ``events`` once when the run is being cancelled.
    """

    def __init__(self, flow_run_id: str | None, progress_id: UUID | None,
                 events: queue.SimpleQueue[Any], poll_s: float = STATE_POLL_S, *,
                 table_id: UUID | None = None,
                 log: Callable[[str], object] | None = None) -> None:
        self._flow_run_id = flow_run_id
        self._progress_id = progress_id
        self._table_id = table_id
        self._log = log
        self._events = events
        self._poll_s = poll_s
        self._percent: float | None = None
        self._shown: float | None = None
        self._shown_at = float("-inf")
        self._eta: Progress | None = None
        self._table_shown: Progress | None = None
        self._table_at = float("-inf")
        self._logged: Progress | None = None
        self._logged_at = float("-inf")
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

    def eta(self, progress: Progress) -> None:
        """Show ``progress`` in the ETA table within :data:`TABLE_EVERY_S` and in the log
        within :data:`LOG_EVERY_S`; as with the bar, only the latest counts."""
        self._eta = progress

    def _loop(self) -> None:
        stopping = False
        while not self._stop.wait(self._poll_s):
            self._show_progress()
            self._show_eta()
            if not stopping and not self._stop.is_set() and flow_run_stopping(self._flow_run_id):
                stopping = True
                self._events.put((STOPPING, None))
        self._show_progress(final=True)
        self._show_eta(final=True)

    def _show_eta(self, final: bool = False) -> None:
        progress, now = self._eta, time.monotonic()
        if progress is None:
            return
        if self._log and progress is not self._logged and (
                final or now - self._logged_at >= LOG_EVERY_S):
            self._log(progress.line())
            self._logged, self._logged_at = progress, now
        if self._table_id is None or progress is self._table_shown:
            return
        if not final and now - self._table_at < TABLE_EVERY_S:
            return
        with get_client(sync_client=True) as client:
            client.update_artifact(self._table_id, ArtifactUpdate(
                data=json.dumps(progress.rows()), description=progress.line()))
        self._table_shown, self._table_at = progress, now

    def _show_progress(self, final: bool = False) -> None:
        percent = self._percent
        if self._progress_id is None or percent is None or percent == self._shown:
            return
        if not final and time.monotonic() - self._shown_at < PROGRESS_EVERY_S:
            return
        update_progress_artifact(self._progress_id, percent)
        self._shown, self._shown_at = percent, time.monotonic()
