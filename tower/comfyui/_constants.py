"""Named defaults of the ComfyUI client, in one place so callers and tests can see them."""

from __future__ import annotations

DEFAULT_TIMEOUT = 30.0
"""Seconds for a read/write/pool on one HTTP request."""

DEFAULT_CONNECT_TIMEOUT = 5.0
"""Seconds to open a TCP (and TLS) connection: a dead server should fail fast."""

DEFAULT_STALL_TIMEOUT = 120.0
"""Seconds without any sign of progress after which a wait gives up."""

DEFAULT_MAX_CONNECTIONS = 8
"""Pooled connections per client; a few waits and downloads run side by side."""

GET_RETRIES = 2
"""Extra attempts for an idempotent GET after a refused connection or a 5xx.

Kept small on purpose: whole-batch retries belong to the Prefect layer, and two layers
that both retry everything multiply attempts.
"""

INITIAL_RETRY_DELAY = 0.25
MAX_RETRY_DELAY = 5.0
"""Bounds of the exponential back-off used for GET retries and history polling."""

REMEMBERED_SUBMISSIONS = 1024
"""Prompts from :meth:`ComfyUIClient.submit` remembered for :meth:`~ComfyUIClient.wait`
(their client id and submit time); the oldest are forgotten beyond this."""

SUBMIT_ATTEMPTS = 2
"""POSTs of one prompt in :meth:`ComfyUIClient.render`, each after checking the server."""

WS_SILENCE_S = 1.0
"""Seconds of WebSocket silence after which the waiter looks at /queue and /history."""

WS_OPEN_TIMEOUT = 5.0
"""Seconds to open the WebSocket before falling back to polling."""

DRAIN_WAIT_S = 0.1
"""Seconds to wait for a finished prompt's last frames when its history came first."""

WS_CLOSE_TIMEOUT = 1.0
"""Seconds to wait for the server's close frame when a wait ends."""

WS_MAX_FRAME_BYTES = 64 * 1024 * 1024
"""execution_error frames carry tensor dumps in ``current_inputs``; allow big frames."""

VANISHED_CHECKS = 2
"""A prompt must be missing from both /queue and /history this many times in a row
(one poll apart) before the waiter declares it lost, e.g. by a server restart."""

UNREACHABLE_GRACE_S = 30.0
"""Seconds a waiter keeps polling an unreachable server before raising (capped by the
stall timeout)."""

DOWNLOAD_CHUNK = 1024 * 1024
