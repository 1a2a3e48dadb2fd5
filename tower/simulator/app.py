"""The simulator's HTTP and WebSocket routes: ComfyUI 0.3.64's, plus ``/_tower/*``.

Route behaviour follows the recordings in ``shared/comfyui-contract`` and its
``production`` folder (see their READMEs);
``/_tower/busy``, ``/_tower/faults``, ``/_tower/models``, ``/_tower/queue_log`` and
``/_tower/restart`` are the simulator's own control routes and exist on no real server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from tower.simulator.catalog import INPUT_LISTS
from tower.simulator.engine import Engine
from tower.simulator.faults import FaultMiddleware
from tower.simulator.folders import UploadRefused, store_upload
from tower.simulator.hub import ws_text
from tower.simulator.multipart import parse_form
from tower.simulator.responses import JSON_TYPE, ComfyJSON, empty, json_body, trouble
from tower.simulator.system import MODEL_FOLDERS, system_stats
from tower.simulator.validation import validate_prompt
from tower.simulator.views import model_folder, view, view_metadata

SENSITIVE_EXTRA = ("auth_token_comfy_org", "api_key_comfy_org")
FEATURES = {"supports_preview_metadata": True, "max_upload_size": 104857600}


def _number(engine: Engine, data: Any) -> float | int:
    """ComfyUI's queue number: explicit ``number`` (as float) or the counter (negated
    for ``front``); the counter advances only when no number is given."""
    if isinstance(data, dict) and "number" in data:
        return float(data["number"])
    front = isinstance(data, dict) and bool(data.get("front"))
    return engine.session.next_number(front)


def _no_prompt() -> Response:
    error = {"type": "no_prompt", "message": "No prompt provided",
             "details": "No prompt provided", "extra_info": {}}
    return ComfyJSON({"error": error, "node_errors": {}}, status_code=400)


async def post_prompt(request: Request) -> Response:
    engine: Engine = request.app.state.engine
    try:
        data = await json_body(request)
        number = _number(engine, data)
    except (ValueError, TypeError):
        return trouble()
    if not isinstance(data, dict) or "prompt" not in data:
        return _no_prompt()
    prompt = data["prompt"]
    prompt_id = str(data["prompt_id"]) if "prompt_id" in data else str(uuid.uuid4())
    try:
        result = validate_prompt(engine.catalog, prompt, data.get("partial_execution_targets"),
                                 engine.folders)
    except Exception:
        return trouble()
    if not result.ok:
        return ComfyJSON({"error": result.error, "node_errors": result.node_errors},
                         status_code=400)
    extra = dict(data.get("extra_data") or {})
    if "client_id" in data:
        extra["client_id"] = data["client_id"]
    for key in SENSITIVE_EXTRA:
        extra.pop(key, None)
    session = engine.session
    try:
        session.queue.put([number, prompt_id, prompt, extra, result.outputs])
    except TypeError:
        return trouble()  # ComfyUI's heap compared two prompts; the item is queued anyway
    finally:
        session.broadcast_status()
    return ComfyJSON({"prompt_id": prompt_id, "number": number,
                      "node_errors": result.node_errors})


async def get_prompt(request: Request) -> Response:
    return ComfyJSON({"exec_info": {"queue_remaining":
                                    request.app.state.engine.session.queue.remaining()}})


async def get_queue(request: Request) -> Response:
    running, pending = request.app.state.engine.session.queue.snapshot()
    return ComfyJSON({"queue_running": running, "queue_pending": pending})


async def post_queue(request: Request) -> Response:
    session = request.app.state.engine.session
    data = await _optional_json(request)
    if data.get("clear"):
        session.queue.clear()
    if "delete" in data:
        session.queue.delete({str(i) for i in data["delete"]})
    session.broadcast_status()
    return empty()


async def get_history(request: Request) -> Response:
    query = request.query_params
    try:
        max_items = int(query["max_items"]) if "max_items" in query else None
        offset = int(query["offset"]) if "offset" in query else -1
    except ValueError:
        return trouble()
    queue = request.app.state.engine.session.queue
    return ComfyJSON(queue.history(max_items=max_items, offset=offset))


async def get_history_item(request: Request) -> Response:
    queue = request.app.state.engine.session.queue
    return ComfyJSON(queue.history(request.path_params["prompt_id"]))


async def post_history(request: Request) -> Response:
    queue = request.app.state.engine.session.queue
    data = await _optional_json(request)
    if data.get("clear"):
        queue.clear_history()
    if "delete" in data:
        queue.delete_history({str(i) for i in data["delete"]})
    return empty()


async def post_interrupt(request: Request) -> Response:
    data = await _optional_json(request)
    prompt_id = data.get("prompt_id")
    request.app.state.engine.session.interrupt(str(prompt_id) if prompt_id else None)
    return empty()


async def post_free(request: Request) -> Response:
    data = await _optional_json(request)
    request.app.state.engine.session.request_free(bool(data.get("unload_models")),
                                                  bool(data.get("free_memory")))
    return empty()


async def _optional_json(request: Request) -> dict[str, Any]:
    try:
        data = await json_body(request)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


async def get_view(request: Request) -> Response:
    return view(request, request.app.state.engine.folders)


async def get_view_metadata(request: Request) -> Response:
    return view_metadata(request, request.app.state.engine.config)


async def post_upload_image(request: Request) -> Response:
    """``/upload/image``: store the ``image`` part under ComfyUI's naming rules."""
    engine: Engine = request.app.state.engine
    try:
        fields = parse_form(request.headers.get("content-type", ""), await request.body())
        reply = await asyncio.to_thread(store_upload, engine.folders, fields)
    except UploadRefused:
        return empty(400)
    except Exception:
        return trouble()  # ComfyUI crashes too: a missing folder, an unknown type
    return ComfyJSON(reply)


def _input_listing(engine: Engine) -> dict[str, list[str]]:
    """The input-folder choices of LoadImage and LoadImageMask, read now."""
    return engine.folders.input_lists(INPUT_LISTS)


async def get_system_stats(request: Request) -> Response:
    return ComfyJSON(system_stats(request.app.state.engine, request.url.port))


async def get_object_info(request: Request) -> Response:
    engine: Engine = request.app.state.engine
    return Response(engine.catalog.object_info(_input_listing(engine)), media_type=JSON_TYPE)


async def get_object_info_node(request: Request) -> Response:
    engine: Engine = request.app.state.engine
    name = request.path_params["node_class"]
    listing = _input_listing(engine) if name in INPUT_LISTS else {}
    node = engine.catalog.node_info(name, listing)
    return ComfyJSON({name: node} if node is not None else {})


async def get_models(request: Request) -> Response:
    return ComfyJSON(list(MODEL_FOLDERS))


async def get_model_folder(request: Request) -> Response:
    return model_folder(request, request.app.state.engine.config)


async def get_features(request: Request) -> Response:
    return ComfyJSON(FEATURES)


async def get_embeddings(request: Request) -> Response:
    return ComfyJSON([])


async def websocket_endpoint(websocket: WebSocket) -> None:
    """``/ws?clientId=``: status (with sid) on connect, then messages routed by sid."""
    engine: Engine = websocket.app.state.engine
    await websocket.accept()
    sid = websocket.query_params.get("clientId") or uuid.uuid4().hex
    conn = engine.hub.connect(sid, websocket)
    conn.outbox.put_nowait(ws_text("status", {**engine.session.status(), "sid": sid}))
    pump = asyncio.create_task(conn.pump())
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            _client_message(conn, message.get("text"))
    except Exception:  # the socket closed under us (restart, replaced, fault)
        pass
    finally:
        engine.hub.disconnect(conn)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(pump, timeout=1)


def _client_message(conn: Any, text: str | None) -> None:
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        message = json.loads(text or "")
        if message.get("type") == "feature_flags":
            conn.outbox.put_nowait(ws_text("feature_flags", FEATURES))


async def tower_busy(request: Request) -> Response:
    """Busy intervals and utilisation; ``?since=<unix time>`` narrows the window."""
    since = request.query_params.get("since")
    try:
        window = float(since) if since is not None else None
    except ValueError:
        return ComfyJSON({"error": f"since must be a unix time, got {since!r}"}, 400)
    return ComfyJSON(request.app.state.engine.busy(window))


async def tower_queue_log(request: Request) -> Response:
    """Every queued/started/finished/deleted/dropped event since the last (re)start, with
    the queue depth after it and the largest depth seen."""
    return ComfyJSON(request.app.state.engine.session.queue.log())


async def tower_faults(request: Request) -> Response:
    faults = request.app.state.engine.faults
    if request.method == "POST":
        try:
            data = await json_body(request)
            if not isinstance(data, dict):
                raise ValueError("faults must be a JSON object")
            faults.update(data)
        except ValueError as err:
            return ComfyJSON({"error": str(err)}, status_code=400)
    return ComfyJSON(faults.to_json())


async def tower_models(request: Request) -> Response:
    """``POST {"<folder>/<file>": {header} | null}``: replace (or, with null, remove) model
    files' metadata headers, as copying a retrained file over the old one would; GET
    and POST answer the headers now served."""
    metadata = request.app.state.engine.config.model_metadata
    if request.method == "POST":
        try:
            data = await json_body(request)
            if not isinstance(data, dict) or not all(
                    isinstance(v, dict) or v is None for v in data.values()):
                raise ValueError("models must map '<folder>/<file>' to a header object or null")
        except ValueError as err:
            return ComfyJSON({"error": str(err)}, status_code=400)
        for name, header in data.items():
            if header is None:
                metadata.pop(name, None)
            else:
                metadata[name] = {str(k): str(v) for k, v in header.items()}
    return ComfyJSON(metadata)


async def tower_restart(request: Request) -> Response:
    await asyncio.to_thread(request.app.state.engine.restart)
    return empty()


ROUTES = [
    Route("/prompt", post_prompt, methods=["POST"]),
    Route("/prompt", get_prompt, methods=["GET"]),
    Route("/queue", get_queue, methods=["GET"]),
    Route("/queue", post_queue, methods=["POST"]),
    Route("/history", get_history, methods=["GET"]),
    Route("/history", post_history, methods=["POST"]),
    Route("/history/{prompt_id:path}", get_history_item, methods=["GET"]),
    Route("/interrupt", post_interrupt, methods=["POST"]),
    Route("/free", post_free, methods=["POST"]),
    Route("/view", get_view, methods=["GET"]),
    Route("/view_metadata/{folder}", get_view_metadata, methods=["GET"]),
    Route("/upload/image", post_upload_image, methods=["POST"]),
    Route("/system_stats", get_system_stats, methods=["GET"]),
    Route("/object_info", get_object_info, methods=["GET"]),
    Route("/object_info/{node_class:path}", get_object_info_node, methods=["GET"]),
    Route("/models", get_models, methods=["GET"]),
    Route("/models/{folder}", get_model_folder, methods=["GET"]),
    Route("/features", get_features, methods=["GET"]),
    Route("/embeddings", get_embeddings, methods=["GET"]),
    WebSocketRoute("/ws", websocket_endpoint),
    Route("/_tower/busy", tower_busy, methods=["GET"]),
    Route("/_tower/faults", tower_faults, methods=["GET", "POST"]),
    Route("/_tower/restart", tower_restart, methods=["POST"]),
    Route("/_tower/models", tower_models, methods=["GET", "POST"]),
    Route("/_tower/queue_log", tower_queue_log, methods=["GET"]),
]


def create_app(engine: Engine) -> Starlette:
    """The ASGI app serving ``engine``."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        engine.hub.bind(asyncio.get_running_loop())
        yield

    app = Starlette(routes=ROUTES, lifespan=lifespan)
    app.state.engine = engine
    app.add_middleware(FaultMiddleware, engine=engine)
    return app
