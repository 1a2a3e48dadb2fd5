"""``GET /view``: serve saved images with ComfyUI's checks and status codes."""

from __future__ import annotations

import io
import os
from pathlib import Path

from PIL import Image
from starlette.requests import Request
from starlette.responses import FileResponse, Response

from tower.simulator.responses import empty

FOLDER_TYPES = ("output", "input", "temp")


def view(request: Request, output_dir: Path) -> Response:
    """Like ComfyUI's ``/view``: 404 without filename or file, 400 for a bad type or a
    filename with ``..`` or a leading ``/``, 403 for a subfolder escaping the folder."""
    query = request.query_params
    filename = query.get("filename")
    if not filename:
        return empty(404)
    if query.get("type", "output") not in FOLDER_TYPES:
        return empty(400)
    if filename.startswith("/") or ".." in filename:
        return empty(400)
    if query.get("type", "output") != "output":
        return empty(404)  # the simulator has no input or temp folder
    base = os.path.abspath(output_dir)
    folder = base
    if "subfolder" in query:
        folder = os.path.abspath(os.path.join(base, query["subfolder"]))
        if os.path.commonpath((folder, base)) != base:
            return empty(403)
    name = os.path.basename(filename)
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        return empty(404)
    disposition = {"Content-Disposition": f'filename="{name}"'}
    preview = query.get("preview")
    if preview:
        return _preview(path, preview, disposition)
    channel = query.get("channel", "rgba")
    if channel in ("rgb", "a"):
        return _channel(path, channel, disposition)
    return FileResponse(path, media_type="image/png", headers=disposition)


def _preview(path: str, preview: str, headers: dict[str, str]) -> Response:
    fmt, _, quality = preview.partition(";")
    fmt = fmt if fmt in ("webp", "jpeg") else "webp"
    with Image.open(path) as img:
        buffer = io.BytesIO()
        img.convert("RGB").save(buffer, format=fmt.upper(),
                                quality=int(quality) if quality.isdigit() else 90)
    return Response(buffer.getvalue(), media_type=f"image/{fmt}", headers=headers)


def _channel(path: str, channel: str, headers: dict[str, str]) -> Response:
    with Image.open(path) as img:
        rgba = img.convert("RGBA")
        if channel == "rgb":
            out = rgba.convert("RGB")
        else:
            out = Image.new("RGBA", rgba.size)
            out.putalpha(rgba.getchannel("A"))
        buffer = io.BytesIO()
        out.save(buffer, format="PNG")
    return Response(buffer.getvalue(), media_type="image/png", headers=headers)
