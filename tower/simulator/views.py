"""``GET /view`` and ``GET /view_metadata``: serve files with ComfyUI's checks and codes."""

from __future__ import annotations

import io
import os

from PIL import Image
from starlette.requests import Request
from starlette.responses import FileResponse, Response

from tower.simulator.config import SimulatorConfig
from tower.simulator.folders import Folders, media_type, within
from tower.simulator.responses import ComfyJSON, empty
from tower.simulator.system import MODEL_FOLDERS


def view(request: Request, folders: Folders) -> Response:
    """Like ComfyUI's ``/view``: 404 without filename or file, 400 for a bad type or a
    filename with ``..`` or a leading ``/``, 403 for a subfolder escaping the folder.
    An annotated name (``"x.png [input]"``) picks its folder itself."""
    query = request.query_params
    filename = query.get("filename")
    if not filename:
        return empty(404)
    filename, folder = folders.annotated(filename)
    if not filename or filename.startswith("/") or ".." in filename:
        return empty(400)
    if folder is None:
        folder = folders.by_type(query.get("type", "output"))
    if folder is None:
        return empty(400)
    base = str(folder)
    target = base
    if "subfolder" in query:
        target = os.path.join(base, query["subfolder"])
        if not within(base, target):
            return empty(403)
    name = os.path.basename(filename)
    path = os.path.join(target, name)
    if not os.path.isfile(path):
        return empty(404)
    disposition = {"Content-Disposition": f'filename="{name}"'}
    preview = query.get("preview")
    if preview:
        return _preview(path, preview, disposition)
    channel = query.get("channel", "rgba")
    if channel in ("rgb", "a"):
        return _channel(path, channel, disposition)
    # Content-Type given as a header: Starlette would add "; charset=utf-8" to text/*.
    return FileResponse(path, headers={**disposition, "Content-Type": media_type(name)})


def view_metadata(request: Request, config: SimulatorConfig) -> Response:
    """``/view_metadata/<folder>?filename=``: 200 with the file's safetensors
    ``__metadata__`` only; an empty 404 for no filename, a name not ending in
    ``.safetensors``, an unknown folder, a missing file or a file without metadata."""
    folder = request.path_params["folder"]
    filename = request.query_params.get("filename")
    if filename is None or not filename.endswith(".safetensors"):
        return empty(404)
    if folder not in MODEL_FOLDERS or filename not in config.models(folder):
        return empty(404)
    metadata = config.model_metadata.get(f"{folder}/{filename}")
    return ComfyJSON(metadata) if metadata is not None else empty(404)


def model_folder(request: Request, config: SimulatorConfig) -> Response:
    """``/models/<folder>``: the sorted names (``[]`` for a folder the config does not
    fill, see :data:`tower.simulator.config.MODEL_FIELDS`), 404 for an unknown one."""
    folder = request.path_params["folder"]
    return ComfyJSON(config.models(folder)) if folder in MODEL_FOLDERS else empty(404)


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
