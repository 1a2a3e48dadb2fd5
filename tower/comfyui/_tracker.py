"""Following one prompt through the WebSocket message stream, and timing its nodes.

ComfyUI's ``executing`` frames carry no timestamps, so a node's time is measured from
the moment its ``executing`` frame arrives to the next ``executing`` frame or the end
of the prompt (``execution_success``/``_error``/``_interrupted``). The tracker is pure:
the caller passes each frame with its receive time, which makes it testable with the
recorded traces (their ``t_s``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tower.comfyui._models import ProgressEvent

TERMINAL_EVENTS = ("execution_success", "execution_error", "execution_interrupted")
PROGRESS_EVENTS = ("execution_start", "execution_cached", "executing", "progress", "executed")
OUTCOMES = {"execution_success": "success", "execution_error": "error",
            "execution_interrupted": "interrupted"}


def node_ids(value: Any) -> tuple[str, ...]:
    """The node ids of an ``execution_cached`` list; anything but a list holds none."""
    return tuple(str(n) for n in value) if isinstance(value, list) else ()


def _step(value: Any) -> int | None:
    """A sampler step count of a ``progress`` frame, or None when it is not one."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass
class PromptTracker:
    """What the WebSocket said about one prompt so far."""

    prompt_id: str
    started: bool = False
    cached_nodes: tuple[str, ...] = ()
    node_seconds: dict[str, float] = field(default_factory=dict)
    outcome: str | None = None
    finished: bool = False
    _current: tuple[str, float] | None = None

    def feed(self, kind: str, data: Any, t: float) -> ProgressEvent | None:
        """Take one frame received at monotonic time ``t``; return a progress event if any.

        Frames about other prompts (or without a prompt id, like ``status``) are ignored.
        """
        if not isinstance(data, dict) or data.get("prompt_id") != self.prompt_id:
            return None
        if kind == "execution_start":
            self.started = True
        elif kind == "execution_cached":
            self.cached_nodes = node_ids(data.get("nodes"))
        elif kind == "executing":
            self._close(t)
            node = data.get("node")
            if node is None:
                self.finished = True
                return None
            self.started = True
            self._current = (str(node), t)
        elif kind in TERMINAL_EVENTS:
            self._close(t)
            self.outcome = OUTCOMES[kind]
            return None
        if kind not in PROGRESS_EVENTS:
            return None
        node = data.get("node")
        return ProgressEvent(prompt_id=self.prompt_id, event=kind,
                             node=None if node is None else str(node),
                             value=_step(data.get("value")), max=_step(data.get("max")))

    @property
    def ended(self) -> bool:
        """The prompt is over (its history entry is written or about to be)."""
        return self.finished or self.outcome is not None

    def _close(self, t: float) -> None:
        if self._current is not None:
            node, began = self._current
            self.node_seconds[node] = self.node_seconds.get(node, 0.0) + max(0.0, t - began)
            self._current = None
