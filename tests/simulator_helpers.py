"""Helpers for the simulator tests: recorded fixtures, shapes, a WebSocket recorder,
uploads built like the recorded ones.

No tests live here; the module name keeps it among the simulator's test files.
"""

from __future__ import annotations

import copy
import io
import json
import time
from typing import Any

import httpx
from paths import CONTRACT
from PIL import Image
from websockets.sync.client import ClientConnection, connect

from tower.simulator import SimulatorServer

TIMEOUT = httpx.Timeout(10.0, connect=2.0)
PRODUCTION = "production/"
BOUNDARY = "----ep02FixtureBoundary7MA4YWxkTrZu0gW"


def recorded(name: str) -> Any:
    """A recorded fixture file, parsed (``production/...`` for the production set)."""
    return json.loads((CONTRACT / name).read_text("utf-8"))


def recorded_graph(name: str = "post_prompt_success.json") -> dict[str, Any]:
    return copy.deepcopy(recorded(name)["request"]["json"]["prompt"])


def only_entry(body: dict[str, Any]) -> Any:
    """The single value of a one-entry mapping (a history body)."""
    assert len(body) == 1, body
    return next(iter(body.values()))


def shape(value: Any) -> Any:
    """The JSON shape of a value: dict keys, list structure and leaf types."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(item) for item in value]
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def assert_same_shape(actual: Any, expected: Any, path: str = "$") -> None:
    """Dicts must have the same keys, leaves the same JSON types; lists are compared
    item by item when their lengths match, else by their first item."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{path}: expected an object, got {actual!r}"
        assert set(actual) == set(expected), f"{path}: keys {sorted(actual)} != {sorted(expected)}"
        for key in expected:
            assert_same_shape(actual[key], expected[key], f"{path}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list), f"{path}: expected a list, got {actual!r}"
        if len(actual) == len(expected):
            for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
                assert_same_shape(a, e, f"{path}[{i}]")
        elif actual and expected:
            assert_same_shape(actual[0], expected[0], f"{path}[0]")
    elif expected is None:
        assert actual is None, f"{path}: expected null, got {actual!r}"
    else:
        assert shape(actual) == shape(expected), f"{path}: {actual!r} vs recorded {expected!r}"


def client(sim: SimulatorServer) -> httpx.Client:
    return httpx.Client(base_url=sim.url, timeout=TIMEOUT)


def open_ws(sim: SimulatorServer, client_id: str | None = None) -> ClientConnection:
    query = f"?clientId={client_id}" if client_id else ""
    return connect(f"ws://127.0.0.1:{sim.port}/ws{query}", open_timeout=5)


def next_message(ws: ClientConnection, timeout: float = 10.0) -> dict[str, Any]:
    return json.loads(ws.recv(timeout=timeout))


def collect_until_done(ws: ClientConnection, prompt_id: str,
                       timeout: float = 20.0) -> list[dict[str, Any]]:
    """Frames up to and including ``executing {node: null}`` for ``prompt_id``."""
    frames = []
    deadline = time.monotonic() + timeout
    while True:
        frame = next_message(ws, max(0.1, deadline - time.monotonic()))
        frames.append(frame)
        data = frame["data"]
        if frame["type"] == "executing" and data.get("node") is None \
                and data.get("prompt_id") == prompt_id:
            return frames


def submit(http: httpx.Client, graph: dict[str, Any], **fields: Any) -> dict[str, Any]:
    response = http.post("/prompt", json={"prompt": graph, **fields})
    assert response.status_code == 200, response.text
    return response.json()


def wait_history(http: httpx.Client, prompt_id: str, timeout: float = 20.0) -> dict[str, Any]:
    """The history entry of ``prompt_id`` once it exists."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = http.get(f"/history/{prompt_id}").json()
        if body:
            return body[prompt_id]
        time.sleep(0.01)
    raise AssertionError(f"no history for {prompt_id} after {timeout}s")


def wait_idle(http: httpx.Client, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if http.get("/prompt").json()["exec_info"]["queue_remaining"] == 0:
            return
        time.sleep(0.01)
    raise AssertionError("queue did not drain")


def types_collapsed(frames: list[dict[str, Any]]) -> list[str]:
    """Message types without ``progress_state``, runs of one type collapsed to one."""
    out: list[str] = []
    for frame in frames:
        kind = frame["type"] if isinstance(frame.get("type"), str) else frame["data"]["type"]
        if kind != "progress_state" and (not out or out[-1] != kind):
            out.append(kind)
    return out


def recorded_frames(name: str) -> list[dict[str, Any]]:
    return [entry["data"] for entry in recorded(name)]


def long_graph(seed: int = 1, steps: int = 500, prefix: str = "ep01/long") -> dict[str, Any]:
    """A graph whose sampler runs long enough (about a second at the fixture's clock)
    to act on it mid-run."""
    graph = recorded_graph()
    graph["5"]["inputs"].update(width=2048, height=2048)
    graph["3"]["inputs"].update(seed=seed, steps=steps)
    graph["9"]["inputs"]["filename_prefix"] = prefix
    return graph


def assert_frame_shapes(frames: list[dict[str, Any]], trace: list[dict[str, Any]]) -> None:
    """Every message type we sent has the recorded data keys for that type."""
    recorded_keys: dict[tuple[str, bool], set[str]] = {}
    for frame in trace:
        data = frame["data"]
        recorded_keys[(frame["type"], data.get("node") is None)] = set(data)
    for frame in frames:
        data = frame["data"]
        key = (frame["type"], data.get("node") is None)
        if key in recorded_keys:
            assert set(data) == recorded_keys[key], frame


def multipart(parts: list[tuple[str, str | tuple[str, bytes, str]]]) -> tuple[bytes, str]:
    """(body, content type) of a form built by hand, filenames sent verbatim as the
    recorder sent them: ``(name, value)`` or ``(name, (filename, data, content_type))``."""
    chunks = []
    for name, value in parts:
        if isinstance(value, tuple):
            filename, data, content_type = value
            head = (f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                    f"Content-Type: {content_type}\r\n")
        else:
            head, data = f'Content-Disposition: form-data; name="{name}"\r\n', value.encode()
        chunks.append(f"--{BOUNDARY}\r\n{head}\r\n".encode() + data + b"\r\n")
    body = b"".join(chunks) + f"--{BOUNDARY}--\r\n".encode()
    return body, f"multipart/form-data; boundary={BOUNDARY}"


def upload(http: httpx.Client, filename: str, data: bytes, **fields: str) -> httpx.Response:
    """POST /upload/image with one image part and the given plain fields."""
    parts: list[tuple[str, str | tuple[str, bytes, str]]] = [
        ("image", (filename, data, "image/png"))]
    parts += list(fields.items())
    body, content_type = multipart(parts)
    return http.post("/upload/image", content=body, headers={"Content-Type": content_type})


def replay_upload(http: httpx.Client, name: str) -> httpx.Response:
    """Replay a recorded ``upload_image_*.json`` request, file bytes from ``inputs/``."""
    parts: list[tuple[str, str | tuple[str, bytes, str]]] = []
    for part in recorded(PRODUCTION + name)["request"]["multipart"]:
        if "filename" in part:
            data = (CONTRACT / PRODUCTION / part["source"]).read_bytes()
            parts.append((part["name"], (part["filename"], data, part["content_type"])))
        else:
            parts.append((part["name"], part["value"]))
    body, content_type = multipart(parts)
    return http.post("/upload/image", content=body, headers={"Content-Type": content_type})


def png(colour: tuple[int, int, int], size: tuple[int, int] = (64, 64)) -> bytes:
    """A flat-colour PNG."""
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def output_pixels(sim: SimulatorServer, image: dict[str, str]) -> bytes:
    """The RGB pixels of a saved output (a history ``images`` entry)."""
    folder = sim.output_dir / image["subfolder"] if image["subfolder"] else sim.output_dir
    with Image.open(folder / image["filename"]) as img:
        return img.convert("RGB").tobytes()
