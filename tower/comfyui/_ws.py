"""The ``/ws`` event stream: a thin, blocking wrapper over websockets' sync client.

Only this module touches the websockets library, so its exceptions are translated in
one place: a socket that cannot open or drops raises :class:`ComfyUIUnavailable`.
"""

from __future__ import annotations

import functools
import json
import logging
import ssl
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.sync.client import ClientConnection, connect

from tower.comfyui._constants import WS_CLOSE_TIMEOUT, WS_MAX_FRAME_BYTES, WS_OPEN_TIMEOUT
from tower.comfyui._exceptions import ComfyUIUnavailable

logger = logging.getLogger("tower.comfyui")


class _NoDebugLogger(logging.LoggerAdapter):
    """websockets logs every handshake header at DEBUG, auth headers included: never."""

    def isEnabledFor(self, level: int) -> bool:
        return level > logging.DEBUG and self.logger.isEnabledFor(level)


@dataclass(frozen=True)
class Frame:
    """One message: its ``type``, its ``data``, and the monotonic time it arrived."""

    kind: str
    data: Any
    t: float


def ws_url(base_url: str, client_id: str) -> str:
    """``http(s)://host[:port][/prefix]`` -> ``ws(s)://host[:port][/prefix]/ws?clientId=...``."""
    if base_url.startswith("https://"):
        root = "wss://" + base_url[len("https://"):]
    elif base_url.startswith("http://"):
        root = "ws://" + base_url[len("http://"):]
    else:
        raise ValueError(f"base URL must be http(s): {base_url!r}")
    return f"{root.rstrip('/')}/ws?clientId={quote(client_id, safe='')}"


@functools.cache
def ssl_context(verify: bool) -> ssl.SSLContext:
    """TLS settings for ``wss://``, made once per process (shared by every socket)."""
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class EventSocket:
    """An open ``/ws`` connection for one client id."""

    def __init__(self, url: str, *, headers: dict[str, str], verify: bool = True,
                 open_timeout: float = WS_OPEN_TIMEOUT, name: str = "comfyui"):
        self.name = name
        try:
            self._ws: ClientConnection = connect(
                url, additional_headers=headers, open_timeout=open_timeout,
                ssl=ssl_context(verify) if url.startswith("wss://") else None,
                max_size=WS_MAX_FRAME_BYTES, proxy=None, compression=None,
                # Unread frames must not stall the reader thread, or close() would wait
                # for a close frame stuck behind them.
                max_queue=None, close_timeout=WS_CLOSE_TIMEOUT,
                logger=_NoDebugLogger(logging.getLogger("websockets.client")))
        except (OSError, TimeoutError, WebSocketException) as err:
            raise ComfyUIUnavailable(f"{name}: cannot open WebSocket: "
                                     f"{type(err).__name__}: {err}") from err

    def recv(self, timeout: float) -> Frame | None:
        """The next frame, or None after ``timeout`` seconds of silence.

        Binary frames (previews) come back as kind ``"binary"`` with no data.

        Raises:
            ComfyUIUnavailable: the connection closed or broke.
        """
        try:
            message = self._ws.recv(timeout=max(0.0, timeout))
        except TimeoutError:
            return None
        except (ConnectionClosed, OSError) as err:
            raise ComfyUIUnavailable(f"{self.name}: WebSocket closed: {err}") from err
        now = time.monotonic()
        if isinstance(message, bytes):
            return Frame("binary", None, now)
        try:
            decoded = json.loads(message)
        except ValueError:
            logger.warning("%s: ignoring a WebSocket frame that is not JSON", self.name)
            return Frame("invalid", None, now)
        if not isinstance(decoded, dict):
            return Frame("invalid", None, now)
        return Frame(str(decoded.get("type")), decoded.get("data"), now)

    def close(self) -> None:
        self._ws.close()
