"""A programmable stand-in for a ComfyUI server, on a loopback port in a thread.

The fuzz tests need a server that answers whatever nonsense each example asks for,
over real HTTP and WebSocket, so the client's whole stack (httpx, websockets, JSON
decoding, parsing) sees it. Each test sets the answer of a route before it calls the
client; a route nobody set answers 404.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

HOST = "127.0.0.1"
START_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Reply:
    """One HTTP answer, as raw bytes so that a test can send invalid JSON or UTF-8."""

    body: bytes = b"{}"
    status: int = 200
    content_type: str = "application/json"


@dataclass
class Script:
    """What the server answers now: per ``METHOD /path``, and the frames sent on ``/ws``."""

    replies: dict[str, Reply] = field(default_factory=dict)
    frames: list[str | bytes] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)


class FuzzServer:
    """Starlette behind uvicorn on ``127.0.0.1:<free port>``; set :attr:`script` per example."""

    def __init__(self) -> None:
        self.script = Script()
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._socket.bind((HOST, 0))
        self.url = f"http://{HOST}:{self._socket.getsockname()[1]}"
        app = Starlette(routes=[
            WebSocketRoute("/ws", self._ws),
            Route("/{path:path}", self._http, methods=["GET", "POST"]),
        ])
        config = uvicorn.Config(app, log_level="critical", lifespan="off",
                                ws="websockets-sansio", access_log=False,
                                timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run,
                                        kwargs={"sockets": [self._socket]}, daemon=True,
                                        name="fuzz-comfyui")

    def answer(self, route: str, body: bytes, status: int = 200,
               content_type: str = "application/json") -> None:
        """Answer ``route`` (``"GET /queue"``) with ``body`` from now on."""
        self.script.replies[route] = Reply(body, status, content_type)

    def reset(self) -> None:
        """Forget every answer and frame (each example starts from a blank server)."""
        self.script = Script()

    async def _http(self, request: Request) -> Response:
        route = f"{request.method} {request.url.path}"
        script = self.script
        script.requests.append(route)
        reply = script.replies.get(route)
        if reply is None:
            return Response(b"not found", status_code=404, media_type="text/plain")
        return Response(reply.body, status_code=reply.status, media_type=reply.content_type)

    async def _ws(self, websocket: WebSocket) -> None:
        await websocket.accept()
        for frame in list(self.script.frames):
            if isinstance(frame, bytes):
                await websocket.send_bytes(frame)
            else:
                await websocket.send_text(frame)
        try:
            while True:  # stay open until the client closes, like ComfyUI
                await websocket.receive_text()
        except WebSocketDisconnect:
            return

    def start(self) -> FuzzServer:
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"fuzz server failed to start on {self.url}")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()


@contextmanager
def fuzz_server() -> Iterator[FuzzServer]:
    """A started :class:`FuzzServer`, stopped on exit."""
    server = FuzzServer().start()
    try:
        yield server
    finally:
        server.stop()
