"""WebSocket fan-out with ComfyUI's routing (``server.py`` ``send_sync``).

A message for a ``sid`` goes to that socket only (dropped if it is not connected); a
message for ``None`` is broadcast. The worker thread and the HTTP handlers both send
through :meth:`Hub.send`, which hands the message to the event loop with
``call_soon_threadsafe``, so each socket receives messages in the order they were sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

from starlette.websockets import WebSocket


def ws_text(event: str, data: Any) -> str:
    """The text frame ComfyUI sends for an event: ``{"type": event, "data": data}``."""
    return json.dumps({"type": event, "data": data})


class Connection:
    """One client socket with its own outgoing queue, so a slow client blocks no one."""

    def __init__(self, sid: str, websocket: WebSocket, drop_after: Callable[[], int | None]):
        self.sid = sid
        self.websocket = websocket
        self.outbox: asyncio.Queue[str | None] = asyncio.Queue()
        self._drop_after = drop_after
        self.sent = 0

    async def pump(self) -> None:
        """Send queued frames until told to stop or the fault closes the socket."""
        while True:
            text = await self.outbox.get()
            if text is None:
                break
            await self.websocket.send_text(text)
            self.sent += 1
            limit = self._drop_after()
            if limit is not None and self.sent >= limit:
                break
        with contextlib.suppress(Exception):
            await self.websocket.close()


class Hub:
    """The connected sockets of one simulator, by sid."""

    def __init__(self, drop_after: Callable[[], int | None]) -> None:
        self._drop_after = drop_after
        self._connections: dict[str, Connection] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def connect(self, sid: str, websocket: WebSocket) -> Connection:
        """Register a socket (on the loop); an old socket with the same sid is replaced."""
        old = self._connections.pop(sid, None)
        if old is not None:
            old.outbox.put_nowait(None)
        conn = Connection(sid, websocket, self._drop_after)
        self._connections[sid] = conn
        return conn

    def disconnect(self, conn: Connection) -> None:
        if self._connections.get(conn.sid) is conn:
            del self._connections[conn.sid]
        conn.outbox.put_nowait(None)

    def send(self, event: str, data: Any, sid: str | None = None) -> None:
        """Queue ``{"type": event, "data": data}`` for ``sid`` (or everyone); thread-safe."""
        if self._loop is None or self._loop.is_closed():
            return
        text = ws_text(event, data)
        with contextlib.suppress(RuntimeError):  # loop closed while stopping
            self._loop.call_soon_threadsafe(self._dispatch, text, sid)

    def _dispatch(self, text: str, sid: str | None) -> None:
        if sid is None:
            targets = list(self._connections.values())
        else:
            conn = self._connections.get(sid)
            targets = [conn] if conn else []
        for conn in targets:
            conn.outbox.put_nowait(text)

    def close_all(self) -> None:
        """Close every socket, as a server restart would; thread-safe."""
        if self._loop is None or self._loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._close_all)

    def _close_all(self) -> None:
        for conn in list(self._connections.values()):
            self.disconnect(conn)
