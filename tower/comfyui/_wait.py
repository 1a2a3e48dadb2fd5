"""Waiting for one prompt: WebSocket events first, /queue and /history polling as backup.

The history entry is the only thing trusted for the outcome: ``execution_success`` can
arrive before the entry is written (contract fact 7), a socket can drop, and a prompt
adopted from an earlier attempt sends its events to another client id. So the waiter
listens while the socket lives, looks at /queue and /history whenever the socket is
silent, gone, or says the prompt ended, and finishes only when the entry is there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from tower.comfyui._constants import (
    DRAIN_WAIT_S,
    UNREACHABLE_GRACE_S,
    VANISHED_CHECKS,
    WS_SILENCE_S,
)
from tower.comfyui._exceptions import ComfyUITimeout, ComfyUIUnavailable
from tower.comfyui._models import HistoryEntry, ProgressEvent, QueueState, RenderResult
from tower.comfyui._parse import failure
from tower.comfyui._results import build_result, outcome
from tower.comfyui._retry import retry_delay
from tower.comfyui._tracker import PromptTracker
from tower.comfyui._ws import EventSocket, Frame

logger = logging.getLogger("tower.comfyui")

ProgressCallback = Callable[[ProgressEvent], None]


class _Server(Protocol):
    name: str

    def queue(self) -> QueueState: ...
    def _history_entry(self, prompt_id: str) -> HistoryEntry | None: ...
    def _open_socket(self, client_id: str, *, quiet: bool = False) -> EventSocket | None: ...


@dataclass
class WaitSpec:
    """What one wait is about and how patient it is."""

    prompt_id: str
    client_id: str
    timeout: float | None
    stall_timeout: float
    on_progress: ProgressCallback | None = None
    queued_at: datetime | None = None
    adopted: bool = False
    stale_number: float | None = None  # an older history entry under the same id
    poll_first: bool = True  # False right after our own POST: listen live first


class Waiter:
    """One wait; :meth:`run` returns the result or raises the prompt's failure."""

    def __init__(self, server: _Server, spec: WaitSpec, socket: EventSocket | None):
        self.server, self.spec, self.socket = server, spec, socket
        self.tracker = PromptTracker(spec.prompt_id)
        self.began = self.last_progress = time.monotonic()
        self.queue_seen: int | None = None
        self.misses = 0
        self.polls = self.final_polls = 0
        self.next_poll = self.began + WS_SILENCE_S
        self.unreachable_since: float | None = None
        self.last_error: ComfyUIUnavailable | None = None

    def run(self) -> RenderResult:
        try:
            entry = self._until_entry()
            self._drain()
        finally:
            self._drop_socket()
        result = build_result(entry, self.tracker, queued_at=self.spec.queued_at,
                              adopted=self.spec.adopted)
        if result.status != "success":
            _, kind, data = outcome(entry)
            raise failure(self.spec.prompt_id, kind or "execution_error", data, result)
        return result

    def _until_entry(self) -> HistoryEntry:
        entry = self._poll() if self.spec.poll_first or self.socket is None else None
        while entry is None:
            self._check_deadlines()
            if self.socket is not None and self._listen():
                continue
            if self.socket is None:
                self._pause()
                self._reconnect()
            entry = self._poll()
        return entry

    def _drain(self) -> None:
        """Read the frames already sent: when polling found the entry first, they still
        carry the node timings (and ComfyUI sends ``executing{null}`` after the entry)."""
        deadline = time.monotonic() + DRAIN_WAIT_S
        while self.socket is not None:
            left = 0.0 if self.tracker.ended else deadline - time.monotonic()
            try:
                frame = self.socket.recv(max(0.0, left))
            except ComfyUIUnavailable:
                return
            if frame is None:
                return
            self._handle(frame)

    def _listen(self) -> bool:
        """Read frames until the next poll is due; False when it is (or the socket died).

        Polls are due a second after the last frame about this prompt, so a socket busy
        with other traffic (broadcast status, other clients' progress) cannot hide that
        the prompt ended somewhere the socket does not hear about.
        """
        assert self.socket is not None
        wait = min(self.next_poll - time.monotonic(), self._time_left())
        try:
            frame = self.socket.recv(max(0.0, wait))
        except ComfyUIUnavailable as err:
            logger.warning("%s; polling for prompt %s", err, self.spec.prompt_id)
            self._drop_socket()
            return False
        if frame is None:
            return False
        self._handle(frame)
        return time.monotonic() < self.next_poll

    def _handle(self, frame: Frame) -> None:
        self.last_progress = frame.t
        event = self.tracker.feed(frame.kind, frame.data, frame.t)
        if isinstance(frame.data, dict) and frame.data.get("prompt_id") == self.spec.prompt_id:
            self.next_poll = frame.t if self.tracker.ended else frame.t + WS_SILENCE_S
        if event is not None and self.spec.on_progress is not None:
            try:
                self.spec.on_progress(event)
            except Exception:
                logger.exception("%s: progress callback failed", self.server.name)

    def _poll(self) -> HistoryEntry | None:
        """Look at /queue then /history (that order: an entry leaves the queue only once
        its history is written). Raises when the server lost the prompt or stays down."""
        self.polls += 1
        if self.tracker.ended:
            # The history entry can lag the end frames (contract fact 7): look again soon.
            self.final_polls += 1
            self.next_poll = time.monotonic() + retry_delay(
                self.final_polls, initial=0.05, maximum=WS_SILENCE_S)
        else:
            self.next_poll = time.monotonic() + WS_SILENCE_S
        try:
            queue = self.server.queue()
            entry = self.server._history_entry(self.spec.prompt_id)
        except ComfyUIUnavailable as err:
            self._unreachable(err)
            return None
        self.unreachable_since = None
        if entry is not None and not self._is_stale(entry):
            return entry
        self._note_queue(queue)
        return None

    def _is_stale(self, entry: HistoryEntry) -> bool:
        stale = self.spec.stale_number
        return stale is not None and entry.number == stale

    def _note_queue(self, queue: QueueState) -> None:
        position = queue.position(self.spec.prompt_id)
        if position != self.queue_seen:
            self.queue_seen = position
            self.last_progress = time.monotonic()
        if position is not None or self.tracker.ended:
            self.misses = 0
            return
        self.misses += 1
        if self.misses >= VANISHED_CHECKS:
            raise ComfyUIUnavailable(
                f"{self.server.name}: prompt {self.spec.prompt_id} is neither queued nor in "
                "the history: the server lost it (restarted?)")

    def _unreachable(self, err: ComfyUIUnavailable) -> None:
        now = time.monotonic()
        self.unreachable_since = self.unreachable_since or now
        self.last_error = err
        if now - self.unreachable_since >= min(UNREACHABLE_GRACE_S, self.spec.stall_timeout):
            raise self._gone() from err

    def _gone(self) -> ComfyUIUnavailable:
        down = time.monotonic() - (self.unreachable_since or time.monotonic())
        return ComfyUIUnavailable(f"{self.server.name}: unreachable for {down:.1f} s while "
                                  f"waiting for prompt {self.spec.prompt_id}: {self.last_error}")

    def _pause(self) -> None:
        time.sleep(min(retry_delay(self.polls), self._time_left()))

    def _reconnect(self) -> None:
        self.socket = self.server._open_socket(self.spec.client_id, quiet=True)

    def _drop_socket(self) -> None:
        if self.socket is not None:
            self.socket.close()
            self.socket = None

    def _time_left(self) -> float:
        now = time.monotonic()
        left = self.spec.stall_timeout - (now - self.last_progress)
        if self.spec.timeout is not None:
            left = min(left, self.spec.timeout - (now - self.began))
        return max(0.0, left)

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        pid, name = self.spec.prompt_id, self.server.name
        if self.spec.timeout is not None and now - self.began >= self.spec.timeout:
            raise ComfyUITimeout(f"{name}: prompt {pid} not finished after "
                                 f"{self.spec.timeout:g} s", prompt_id=pid)
        if now - self.last_progress >= self.spec.stall_timeout:
            if self.unreachable_since is not None:  # no progress because it is down
                raise self._gone() from self.last_error
            raise ComfyUITimeout(f"{name}: no progress on prompt {pid} for "
                                 f"{self.spec.stall_timeout:g} s", prompt_id=pid)
