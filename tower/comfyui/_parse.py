"""Turning ComfyUI's JSON answers into the client's models and errors.

Pure functions over already-decoded JSON, so each can be tested with the recorded
answers in the contract folder. Anything malformed becomes :class:`ComfyUIProtocolError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from tower.comfyui._exceptions import (
    ComfyUIError,
    ComfyUIExecutionError,
    ComfyUIInterrupted,
    ComfyUIOutOfMemory,
    ComfyUIProtocolError,
    ComfyUIValidationError,
)
from tower.comfyui._models import (
    Device,
    HistoryEntry,
    ImageRef,
    QueueState,
    RenderResult,
    SystemStats,
)

_MAX_MESSAGE_CHARS = 500


# The signatures of the image formats ComfyUI's savers write (PNG, JPEG, WebP, GIF).
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a")


def decode_json(response: httpx.Response) -> Any:
    """The JSON of an answer; ValueError for anything that is not JSON Python can hold.

    ``json`` raises RecursionError (not ValueError) for arrays nested thousands deep,
    which would escape every ``except ValueError`` around it.
    """
    try:
        return response.json()
    except RecursionError as err:
        raise ValueError("nested too deeply") from err


def is_image(head: bytes) -> bool:
    """Whether the first bytes of a /view answer are those of an image file."""
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return True
    return head.startswith(_IMAGE_MAGIC)


def _mapping(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ComfyUIProtocolError(f"{what}: expected a JSON object, got {type(value).__name__}")
    return value


def _count(value: object, what: str, default: int | None = 0) -> int | None:
    """A whole number of the answer (bytes, an index), or ``default`` when absent."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value \
            or value in (float("inf"), float("-inf")) or value != int(value):
        raise ComfyUIProtocolError(f"{what}: expected a whole number, got {value!r:.40}")
    return int(value)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def parse_system_stats(body: object) -> SystemStats:
    """``GET /system_stats`` -> :class:`SystemStats`.

    The VRAM figures size batches, so a device whose numbers are not numbers is an
    error, not a zero; the version strings are informative and dropped when odd.
    """
    body = _mapping(body, "/system_stats")
    system = _mapping(body.get("system") or {}, "/system_stats system")
    items = body.get("devices") or []
    if not isinstance(items, list):
        raise ComfyUIProtocolError("/system_stats devices: expected a list")
    devices = []
    for n, item in enumerate(items):
        item = _mapping(item, f"/system_stats devices[{n}]")
        what = f"/system_stats devices[{n}]"
        devices.append(Device(
            name=str(item.get("name", "")), type=str(item.get("type", "")),
            index=_count(item.get("index"), f"{what}.index", None),
            vram_total=_count(item.get("vram_total"), f"{what}.vram_total") or 0,
            vram_free=_count(item.get("vram_free"), f"{what}.vram_free") or 0,
            torch_vram_total=_count(item.get("torch_vram_total"),
                                    f"{what}.torch_vram_total", None),
            torch_vram_free=_count(item.get("torch_vram_free"), f"{what}.torch_vram_free",
                                   None)))
    return SystemStats(
        comfyui_version=_text(system.get("comfyui_version")), devices=tuple(devices),
        python_version=_text(system.get("python_version")),
        pytorch_version=_text(system.get("pytorch_version")),
        ram_total=_count(system.get("ram_total"), "/system_stats system.ram_total", None),
        ram_free=_count(system.get("ram_free"), "/system_stats system.ram_free", None))


def check_object_info(body: object, server: str, route: str = "/object_info") -> None:
    """Refuse an ``/object_info`` answer whose node classes or input sections are not
    objects, so that preflight and the input list can read it without checks."""
    body = _mapping(body, f"{server}: {route}")
    for class_type, info in body.items():
        info = _mapping(info, f"{server}: {route} {class_type}")
        inputs = _mapping(info.get("input") or {}, f"{server}: {route} {class_type}.input")
        for section in ("required", "optional"):
            _mapping(inputs.get(section) or {}, f"{server}: {route} {class_type}.input.{section}")


def _queue_items(items: object, what: str) -> list[tuple[float, str, str | None]]:
    """(number, prompt_id, client_id) of each ``[number, id, prompt, extra_data, ...]``."""
    if not isinstance(items, list):
        raise ComfyUIProtocolError(f"/queue {what}: expected a list")
    found = []
    for item in items:
        if not isinstance(item, list) or len(item) < 2:
            raise ComfyUIProtocolError(f"/queue {what}: malformed item {item!r:.80}")
        extra = item[3] if len(item) > 3 and isinstance(item[3], Mapping) else {}
        client_id = extra.get("client_id")
        if not isinstance(item[1], str):
            raise ComfyUIProtocolError(f"/queue {what}: prompt id {item[1]!r:.80} is not text")
        try:
            number = float(item[0])
        except (TypeError, ValueError, OverflowError) as err:
            raise ComfyUIProtocolError(f"/queue {what}: bad number {item[0]!r:.80}") from err
        found.append((number, item[1], client_id if isinstance(client_id, str) else None))
    return found


def parse_queue(body: object) -> QueueState:
    """``GET /queue`` -> :class:`QueueState`; pending sorted the way the server runs them.

    ``queue_pending`` is the server's raw heap list, so it is sorted here by
    ``(number, prompt_id)``, the heap's own order.
    """
    body = _mapping(body, "/queue")
    running = _queue_items(body.get("queue_running", []), "queue_running")
    pending = sorted(_queue_items(body.get("queue_pending", []), "queue_pending"),
                     key=lambda item: item[:2])
    return QueueState(running=tuple(item[1] for item in running),
                      pending=tuple(item[1] for item in pending),
                      client_ids={pid: cid for _, pid, cid in running + pending if cid})


def _images(outputs: Mapping[str, Any], order: list[str]) -> tuple[ImageRef, ...]:
    node_ids = [n for n in order if n in outputs] + [n for n in outputs if n not in order]
    images: list[ImageRef] = []
    for node_id in node_ids:
        ui = _mapping(outputs[node_id], f"history outputs[{node_id}]")
        items = ui.get("images") or []
        if not isinstance(items, list):
            raise ComfyUIProtocolError(f"history outputs[{node_id}].images: expected a list")
        images += [ImageRef.from_json(item) for item in items]
    return tuple(images)


def _messages(status: Mapping[str, Any]) -> tuple[tuple[str, dict[str, Any]], ...]:
    found = []
    items = status.get("messages")
    for item in items if isinstance(items, list) else []:
        if isinstance(item, list) and len(item) == 2 and isinstance(item[1], Mapping):
            found.append((str(item[0]), dict(item[1])))
    return tuple(found)


def parse_history(body: object, prompt_id: str) -> HistoryEntry | None:
    """``GET /history/<id>`` -> the entry, or None while the server has none (``{}``)."""
    body = _mapping(body, f"/history/{prompt_id}")
    if prompt_id not in body:
        return None
    entry = _mapping(body[prompt_id], f"/history/{prompt_id} entry")
    prompt = entry.get("prompt") or []
    if not isinstance(prompt, list) or len(prompt) < 3:
        raise ComfyUIProtocolError(f"/history/{prompt_id}: malformed prompt field")
    graph = dict(_mapping(prompt[2], f"/history/{prompt_id} graph"))
    order = [str(n) for n in prompt[4]] if len(prompt) > 4 and isinstance(prompt[4], list) \
        else []
    outputs = _mapping(entry.get("outputs") or {}, f"/history/{prompt_id} outputs")
    status = _mapping(entry.get("status") or {}, f"/history/{prompt_id} status")
    number = prompt[0] if isinstance(prompt[0], int | float) else None
    return HistoryEntry(
        prompt_id=prompt_id, number=number, graph=graph,
        status_str=str(status.get("status_str", "success")),
        completed=bool(status.get("completed", True)),
        outputs_order=tuple(order), images=_images(outputs, order),
        messages=_messages(status))


def _as_mapping(value: object) -> Mapping[str, Any]:
    """``value`` if it is an object, else empty: for error reports, which must not fail."""
    return value if isinstance(value, Mapping) else {}


def describe_node_errors(node_errors: Mapping[str, Any]) -> list[str]:
    """One line per input error: ``node <id> (<class>) input <name>: <type>: <details>``."""
    lines = []
    for node_id, entry in node_errors.items():
        entry = _as_mapping(entry)
        class_type = entry.get("class_type", "?")
        errors = entry.get("errors")
        for error in errors if isinstance(errors, list) else []:
            error = _as_mapping(error)
            extra = _as_mapping(error.get("extra_info"))
            details = str(error.get("details") or error.get("message") or "")
            name = extra.get("input_name")
            if name:
                details = details.removeprefix(f"{name}: ")
                lines.append(f"node {node_id} ({class_type}) input {name}: "
                             f"{error.get('type', 'error')}: {details}")
            else:
                lines.append(f"node {node_id} ({class_type}): {error.get('type', 'error')}: "
                             f"{details}")
    return lines


def validation_error(body: object) -> ComfyUIValidationError:
    """A 400 answer of ``POST /prompt`` -> :class:`ComfyUIValidationError` naming every fault.

    The top-level ``details`` is often empty: the useful part is ``node_errors``. Graph
    level errors (unknown class, no outputs) come with empty ``node_errors``.
    """
    body = _as_mapping(body)
    error = body.get("error") or {}
    if not isinstance(error, Mapping):
        error = {"type": "error", "message": str(error)}
    node_errors = _as_mapping(body.get("node_errors"))
    lines = describe_node_errors(node_errors)
    if not lines:
        line = f"{error.get('type', 'error')}: {error.get('message', 'invalid prompt')}"
        if error.get("details"):
            line += f" ({error['details']})"
        lines = [line]
    return ComfyUIValidationError("ComfyUI rejected the prompt: " + "; ".join(lines),
                                  error=error, node_errors=node_errors)


def is_out_of_memory(exception_type: str | None, message: str | None) -> bool:
    """Does a node's exception mean the GPU (or torch) ran out of memory?"""
    short = str(exception_type or "").rsplit(".", 1)[-1]
    if short in ("OutOfMemoryError", "OutOfMemory"):
        return True
    return "out of memory" in str(message or "").lower()


def failure(prompt_id: str, kind: str, data: Mapping[str, Any],
            result: RenderResult | None = None) -> ComfyUIError:
    """The exception for an ``execution_error`` / ``execution_interrupted`` message."""
    node_id, node_type = (None if value is None else str(value)
                          for value in (data.get("node_id"), data.get("node_type")))
    where = f"node {node_id} ({node_type})" if node_id is not None else "a node"
    if kind == "execution_interrupted":
        return ComfyUIInterrupted(f"prompt {prompt_id} was interrupted at {where}",
                                  prompt_id=prompt_id, node_id=node_id, node_type=node_type,
                                  result=result)
    exc_type = str(data.get("exception_type") or "an error")
    exc_message = str(data.get("exception_message") or "").strip()
    cls = ComfyUIOutOfMemory if is_out_of_memory(exc_type, exc_message) else \
        ComfyUIExecutionError
    return cls(f"prompt {prompt_id}: {where} raised {exc_type}: "
               f"{exc_message[:_MAX_MESSAGE_CHARS] or '(no message)'}",
               prompt_id=prompt_id, node_id=node_id, node_type=node_type,
               exception_type=None if data.get("exception_type") is None else exc_type,
               exception_message=exc_message,
               result=result)
