"""Retry rules of the client as small pure functions: which answers to a GET are worth
another quick try, and how long to wait.

Whether a whole batch is worth retrying is the run's question, answered once in
:mod:`tower.runtime.failures`.
"""

from __future__ import annotations

from tower.comfyui._constants import INITIAL_RETRY_DELAY, MAX_RETRY_DELAY


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
