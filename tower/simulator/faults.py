"""ASGI middleware for HTTP faults and ComfyUI's origin check.

Injected 500s and delays hit every ComfyUI route (not ``/_tower/*``, so tests can
always reach the control routes). A handler that raises answers ComfyUI's text/plain
500, as aiohttp does. The origin check mirrors ComfyUI's
``create_origin_only_middleware``: a request whose ``Origin`` host differs from ``Host``
gets an empty 403.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tower.simulator.responses import empty, trouble


class FaultMiddleware:
    def __init__(self, app: ASGIApp, engine: Any) -> None:
        self.app = app
        self.engine = engine
        self._rng = random.Random(engine.faults.seed)
        self._seed = engine.faults.seed

    def _fail_now(self) -> bool:
        faults = self.engine.faults
        if faults.http_500_next > 0:
            faults.http_500_next -= 1
            return True
        if faults.seed != self._seed:
            self._rng, self._seed = random.Random(faults.seed), faults.seed
        return bool(faults.http_500_rate) and self._rng.random() < faults.http_500_rate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if _origin_mismatch(scope):
            if scope["type"] == "http":
                await empty(403)(scope, receive, send)
            else:
                await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http" or scope["path"].startswith("/_tower/"):
            await self.app(scope, receive, send)
            return
        delay = self.engine.faults.slow_response_s
        if delay:
            await asyncio.sleep(delay)
        if self._fail_now():
            await trouble()(scope, receive, send)
            return
        await _answer_trouble_on_crash(self.app, scope, receive, send)


async def _answer_trouble_on_crash(app: ASGIApp, scope: Scope, receive: Receive,
                                   send: Send) -> None:
    """Like aiohttp under ComfyUI: a handler that raises yields the text/plain 500."""
    started = False

    async def tracking_send(message: Message) -> None:
        nonlocal started
        started = started or message["type"] == "http.response.start"
        await send(message)

    try:
        await app(scope, receive, tracking_send)
    except Exception:
        if started:
            raise
        await trouble()(scope, receive, send)


def _origin_mismatch(scope: Scope) -> bool:
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    origin, host = headers.get("origin"), headers.get("host")
    if not origin or not host:
        return False
    return urlsplit(origin).netloc.lower() != host.lower()
