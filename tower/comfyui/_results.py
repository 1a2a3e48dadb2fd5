"""Building a :class:`RenderResult` from the history entry and the WebSocket timings.

The history entry is the authority on how a prompt ended and what it produced; the
tracker adds per-node seconds when the WebSocket was connected. Phases are named by
node class: loaders (``CheckpointLoaderSimple`` and other ``*Loader*``), sampling
(``KSampler*``, ``SamplerCustom*``) and decode (``VAEDecode*``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from tower.comfyui._models import HistoryEntry, RenderResult, RenderStatus
from tower.comfyui._tracker import PromptTracker, node_ids

PHASES = ("load", "sampling", "decode")


def phase_of(class_type: str) -> str | None:
    """The phase a node class belongs to, or None for the light nodes."""
    if class_type.startswith("VAEDecode"):
        return "decode"
    if class_type.startswith(("KSampler", "SamplerCustom")):
        return "sampling"
    if "Loader" in class_type:
        return "load"
    return None


def phase_seconds(graph: Mapping[str, Any], node_seconds: Mapping[str, float],
                  cached_nodes: Iterable[str]) -> dict[str, float | None]:
    """Seconds per phase: 0.0 when every node of the phase was cached, None when any
    node that ran has no measurement (no WebSocket frames for it) or the graph has none.
    """
    cached = set(cached_nodes)
    totals: dict[str, float | None] = {}
    for phase in PHASES:
        nodes = [n for n, node in graph.items()
                 if isinstance(node, Mapping) and phase_of(str(node.get("class_type"))) == phase]
        ran = [n for n in nodes if n not in cached]
        if not nodes or any(n not in node_seconds for n in ran):
            totals[phase] = None
        else:
            totals[phase] = round(sum(node_seconds[n] for n in ran), 6)
    return totals


def epoch_ms(value: object) -> datetime | None:
    """An epoch-milliseconds timestamp from a status message, as an aware UTC datetime.

    None when there is none or it is no date (not a number, NaN, or outside the years
    datetime holds): timestamps only feed the metrics, which record unknown times as
    missing rather than failing a render that succeeded.
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value / 1000, tz=UTC)
        except (OverflowError, ValueError, OSError):
            return None
    return None


def now_to_the_ms() -> datetime:
    """Now, floored to ComfyUI's timestamp precision (whole milliseconds).

    ``queued_at`` is compared with the server's ``execution_start``, which ComfyUI stamps
    in whole milliseconds: on one clock, a prompt started within the millisecond it was
    posted must not appear to start before it was queued.
    """
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def _seconds(later: datetime | None, earlier: datetime | None) -> float | None:
    if later is None or earlier is None:
        return None
    return max(0.0, (later - earlier).total_seconds())


def outcome(entry: HistoryEntry) -> tuple[RenderStatus, str | None, dict[str, Any]]:
    """(status, terminal message type, its data) of a finished history entry."""
    for kind, status in (("execution_interrupted", "interrupted"), ("execution_error", "error")):
        data = entry.message(kind)
        if data is not None:
            return status, kind, data
    if entry.status_str == "success":
        return "success", "execution_success", entry.message("execution_success") or {}
    return "error", None, {}


def build_result(entry: HistoryEntry, tracker: PromptTracker | None, *,
                 queued_at: datetime | None, adopted: bool) -> RenderResult:
    """The result of a finished prompt."""
    status, kind, data = outcome(entry)
    cached_msg = entry.message("execution_cached") or {}
    cached_nodes = node_ids(cached_msg.get("nodes"))
    if not cached_nodes and tracker is not None:
        cached_nodes = tracker.cached_nodes
    started_at = epoch_ms((entry.message("execution_start") or {}).get("timestamp"))
    finished_at = epoch_ms(data.get("timestamp")) if kind else None
    node_seconds = dict(tracker.node_seconds) if tracker is not None else {}
    phases = phase_seconds(entry.graph, node_seconds, cached_nodes)
    error = None
    if status != "success":
        error = f"{data.get('exception_type') or status}: " \
                f"{str(data.get('exception_message') or '').strip()}".rstrip(": ")
    return RenderResult(
        prompt_id=entry.prompt_id, status=status, images=entry.images,
        cached=bool(entry.graph) and set(entry.graph) <= set(cached_nodes),
        cached_nodes=cached_nodes, queued_at=queued_at, started_at=started_at,
        finished_at=finished_at, queue_wait_s=_seconds(started_at, queued_at),
        execution_s=_seconds(finished_at, started_at), node_seconds=node_seconds,
        model_load_s=phases["load"], sampling_s=phases["sampling"],
        vae_decode_s=phases["decode"], adopted=adopted, error=error)
