"""The prompt queue and history, with ComfyUI's semantics (``execution.PromptQueue``).

Items are 5-lists ``[number, prompt_id, prompt, extra_data, outputs_to_execute]`` kept in
a ``heapq`` min-heap, so ties and oddities match ComfyUI exactly: two pending items with
the same number and id make ``heapq`` compare the prompt dicts and raise ``TypeError``
after the item is already in the heap (ComfyUI answers 500, yet the prompt runs).
"""

from __future__ import annotations

import copy
import heapq
import threading
import time
from collections import deque
from typing import Any

MAXIMUM_HISTORY_SIZE = 10000
MAXIMUM_LOG_SIZE = 200_000
Item = list[Any]


class PromptQueue:
    """Pending and running prompts plus the history of finished ones; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._heap: list[Item] = []
        self._running: dict[int, Item] = {}
        self._next_task = 0
        self._history: dict[str, dict[str, Any]] = {}
        self._log: deque[dict[str, Any]] = deque(maxlen=MAXIMUM_LOG_SIZE)
        self._max_depth = 0

    def _note(self, event: str, item: Item | None) -> None:
        """Record what happened to the queue (caller holds the lock).

        The log is the server's own account of its occupancy, so a test can check a
        client's queue-depth promise without trusting the client's records.
        ``number`` is ComfyUI's queue number: negative for prompts sent to the front.
        """
        depth = len(self._heap) + len(self._running)
        self._max_depth = max(self._max_depth, depth)
        self._log.append({"t": time.time(), "event": event,
                          "prompt_id": item[1] if item else None,
                          "number": item[0] if item else None, "depth": depth})

    def put(self, item: Item) -> None:
        """Queue an item; may raise TypeError exactly where ComfyUI's heap does."""
        with self._lock:
            try:
                heapq.heappush(self._heap, item)
            finally:
                self._note("queued", item)  # in the heap even when heapq raised
                self._lock.notify_all()

    def get(self, timeout: float) -> tuple[int, Item] | None:
        """Pop the next item to run, waiting up to ``timeout`` seconds."""
        with self._lock:
            if not self._heap:
                self._lock.wait(timeout)
            if not self._heap:
                return None
            if len({(i[0], i[1]) for i in self._heap}) < len(self._heap):
                # Equal (number, id) pairs would make heapq compare dicts and lose an item.
                self._heap.sort(key=lambda i: (i[0], i[1]))
                item = self._heap.pop(0)
            else:
                item = heapq.heappop(self._heap)
            task = self._next_task
            self._next_task += 1
            self._running[task] = item
            self._note("started", item)
            return task, item

    def task_done(self, task: int, entry: dict[str, Any]) -> None:
        """Move a running item into the history with its outputs and status."""
        with self._lock:
            item = self._running.pop(task)
            if len(self._history) > MAXIMUM_HISTORY_SIZE:
                self._history.pop(next(iter(self._history)))
            self._history[item[1]] = {"prompt": item, **entry}
            self._note("finished", item)

    def forget_running(self, task: int) -> None:
        with self._lock:
            item = self._running.pop(task, None)
            if item is not None:
                self._note("dropped", item)

    def remaining(self) -> int:
        with self._lock:
            return len(self._heap) + len(self._running)

    def snapshot(self) -> tuple[list[Item], list[Item]]:
        """(running, pending) copies; pending is the raw heap order, as ComfyUI shows it."""
        with self._lock:
            return copy.deepcopy(list(self._running.values())), copy.deepcopy(self._heap)

    def delete(self, prompt_ids: set[str]) -> None:
        """Remove pending items with these ids (running ones are untouched)."""
        with self._lock:
            deleted = [item for item in self._heap if item[1] in prompt_ids]
            self._heap = [item for item in self._heap if item[1] not in prompt_ids]
            heapq.heapify(self._heap)
            for item in deleted:
                self._note("deleted", item)

    def clear(self) -> None:
        with self._lock:
            cleared, self._heap = self._heap, []
            for item in cleared:
                self._note("deleted", item)

    def log(self) -> dict[str, Any]:
        """Every queue event so far, oldest first, and the largest occupancy seen
        (pending + running, this server's whole queue)."""
        with self._lock:
            return {"max_depth": self._max_depth, "events": list(self._log)}

    def history(self, prompt_id: str | None = None, max_items: int | None = None,
                offset: int = -1) -> dict[str, Any]:
        """One entry (or ``{}``), or a slice like ComfyUI's ``get_history``."""
        with self._lock:
            if prompt_id is not None:
                entry = self._history.get(prompt_id)
                return {prompt_id: copy.deepcopy(entry)} if entry else {}
            if offset < 0 and max_items is not None:
                offset = len(self._history) - max_items
            out: dict[str, Any] = {}
            for i, key in enumerate(self._history):
                if i >= offset:
                    out[key] = copy.deepcopy(self._history[key])
                    if max_items is not None and len(out) >= max_items:
                        break
            return out

    def delete_history(self, prompt_ids: set[str]) -> None:
        with self._lock:
            for prompt_id in prompt_ids:
                self._history.pop(prompt_id, None)

    def clear_history(self) -> None:
        with self._lock:
            self._history.clear()
