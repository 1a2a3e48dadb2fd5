"""Retry rules as small pure functions: what is worth retrying, and how long to wait."""

from __future__ import annotations

import httpx
from websockets.exceptions import WebSocketException

from tower.comfyui._constants import INITIAL_RETRY_DELAY, MAX_RETRY_DELAY
from tower.comfyui._exceptions import ComfyUIError, ComfyUITimeout, ComfyUIUnavailable


def is_transient(exc: BaseException) -> bool:
    """Is the failure worth retrying the whole batch later?

    Yes for an unreachable or restarting server and for timeouts; no for anything the
    server answered about the graph itself (validation, execution, preflight, protocol).
    Out-of-memory is not transient either: the caller splits the batch instead.
    """
    if isinstance(exc, ComfyUIUnavailable | ComfyUITimeout):
        return True
    if isinstance(exc, ComfyUIError):
        return False
    return isinstance(exc, httpx.TransportError | WebSocketException | OSError)


def should_retry_status(status_code: int) -> bool:
    """Is an HTTP status on an idempotent GET worth another quick try?

    5xx (a restarting server, or a reverse proxy in front of one) and 429. Never used
    for POST: a 5xx there does not prove the prompt was not queued.
    """
    return status_code == 429 or 500 <= status_code <= 599


def retry_delay(attempt: int, *, initial: float = INITIAL_RETRY_DELAY,
                maximum: float = MAX_RETRY_DELAY) -> float:
    """Seconds to sleep before retry number ``attempt`` (0-based): doubling, capped."""
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0 (got {attempt})")
    return min(maximum, initial * (2 ** min(attempt, 30)))
