"""Response helpers that reproduce ComfyUI's (aiohttp's) headers and odd bodies."""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import PlainTextResponse, Response

JSON_TYPE = "application/json; charset=utf-8"
TROUBLE = "500 Internal Server Error\n\nServer got itself in trouble"


class ComfyJSON(Response):
    """JSON with aiohttp's content type (``application/json; charset=utf-8``)."""

    media_type = JSON_TYPE

    def render(self, content: Any) -> bytes:
        return json.dumps(content).encode("utf-8")


def trouble() -> Response:
    """aiohttp's text/plain 500, which ComfyUI sends whenever a handler raises."""
    return PlainTextResponse(TROUBLE, status_code=500)


def empty(status: int = 200) -> Response:
    return Response(status_code=status)


async def json_body(request: Any) -> Any:
    """The parsed body; raises ValueError when it is not JSON (the caller answers 500)."""
    return json.loads(await request.body())
