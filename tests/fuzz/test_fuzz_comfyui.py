"""Whatever a ComfyUI server answers, the client ends in a result or a ComfyUIError.

A server behind a broken proxy, a half-upgraded ComfyUI or a hostile host can answer
anything: bodies that are not JSON, JSON of the wrong shape, numbers too big for a
date, image names that climb out of a folder, HTML where a PNG belongs. The pipeline
only handles :class:`ComfyUIError` (a KeyError from inside the client would bypass the
retry and metrics logic and kill the flow), so every public call is driven here against
a real loopback HTTP/WebSocket server that answers each example's nonsense.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from fuzz_server import FuzzServer, fuzz_server
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tower.comfyui import (
    ComfyUIClient,
    ComfyUIError,
    ComfyUIProtocolError,
    ImageRef,
    ProgressEvent,
    RenderResult,
)
from tower.planning.planner import RenderBatch, batch_id_for
from tower.runtime.execute import RenderContext, Rendered, store_rendered
from tower.runtime.provenance import idat_bytes
from tower.shotlist.shots import Shot, ShotList
from tower.spec.outputs import take_output_path
from tower.spec.takes import resolve_takes
from tower.store.files import DataRoot
from tower.store.index import OutputIndex
from tower.store.metrics import MetricsStore

PROMPT_ID = "p1"
# Reproducible in CI: the same examples every run, no example database.
FUZZ = settings(max_examples=40, deadline=2000, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
GRAPH = {"1": {"class_type": "CheckpointLoaderSimple",
               "inputs": {"ckpt_name": "anime-draft-sd15.safetensors"}},
         "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}


def _png() -> bytes:
    out = BytesIO()
    Image.new("RGB", (8, 8), (200, 80, 40)).save(out, format="PNG")
    return out.getvalue()


PNG = _png()


@pytest.fixture(scope="module")
def server() -> Iterator[FuzzServer]:
    with fuzz_server() as started:
        yield started


@pytest.fixture
def client(server: FuzzServer) -> Iterator[ComfyUIClient]:
    server.reset()
    with ComfyUIClient(server.url, timeout=5, connect_timeout=1, name="fuzz") as made:
        yield made


def ends_cleanly(call: Callable[[], Any]) -> Any:
    """The call's value, or the ComfyUIError it raised; anything else fails the test."""
    try:
        return call()
    except ComfyUIError as err:
        assert str(err), "an error must say what went wrong"
        return err


# ---- strategies -----------------------------------------------------------------------

scalars = (st.none() | st.booleans() | st.integers() | st.integers(10**18, 10**30)
           | st.floats() | st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


def dumps(value: Any) -> bytes:
    """JSON as Python writes it, NaN and Infinity included (ComfyUI's json does too)."""
    return json.dumps(value).encode()


not_json = st.sampled_from([
    b"", b"<html><body>502 Bad Gateway</body></html>", b"{", b"\xff\xfe\x00", b"nul",
    b"[" * 3000 + b"]" * 3000,  # nesting deeper than json can follow
    b"1" + b"0" * 5000,  # an integer longer than Python converts
])


def bodies(shaped: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """Mostly near misses of the route's real shape, some arbitrary JSON, some not JSON."""
    return st.one_of(shaped.map(dumps), values.map(dumps), not_json)


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """The real kind of value or, as often, any value at all."""
    return strategy | values


devices = st.fixed_dictionaries({}, optional={
    "name": maybe(st.text(max_size=8)), "type": maybe(st.just("cuda")),
    "index": maybe(st.integers(0, 8)), "vram_total": maybe(st.integers(0, 2**40)),
    "vram_free": maybe(st.integers(0, 2**40)), "torch_vram_total": values})
system_stats = st.fixed_dictionaries({}, optional={
    "system": maybe(st.fixed_dictionaries({}, optional={
        "comfyui_version": values, "ram_total": values, "ram_free": values})),
    "devices": maybe(st.lists(maybe(devices), max_size=3))})

queue_items = st.lists(maybe(st.tuples(maybe(st.integers()), maybe(st.text(max_size=6)),
                                       values, maybe(st.fixed_dictionaries(
                                           {"client_id": values}))).map(list)), max_size=3)
queue = st.fixed_dictionaries({}, optional={"queue_running": maybe(queue_items),
                                            "queue_pending": maybe(queue_items)})

HOSTILE_NAMES = ["../../../etc/passwd", "/etc/passwd", "..", ".", "", "a/b.png", "a\\b.png",
                 "x\x00.png", "C:\\Windows\\x.png", "ok_00001_.png", "..png", "~/x.png"]
HOSTILE_FOLDERS = ["", "..", "../..", "/abs", "a/../..", "ep01", "ep01/sh010", "a//b", "./a"]
image_items = st.fixed_dictionaries({"filename": maybe(st.sampled_from(HOSTILE_NAMES))}, optional={
    "subfolder": maybe(st.sampled_from(HOSTILE_FOLDERS)),
    "type": maybe(st.sampled_from(["output", "temp", "input", "../output", ""]))})
MESSAGE_KINDS = ["execution_start", "execution_cached", "execution_success", "execution_error",
                 "execution_interrupted"]
message_data = st.fixed_dictionaries({}, optional={
    "timestamp": maybe(st.integers(-2**70, 2**70) | st.floats()), "nodes": values,
    "node_id": values, "node_type": values, "exception_type": values,
    "exception_message": values, "prompt_id": values})
status = st.fixed_dictionaries({}, optional={
    "status_str": maybe(st.sampled_from(["success", "error"])), "completed": values,
    "messages": maybe(st.lists(maybe(st.tuples(st.sampled_from(MESSAGE_KINDS),
                                               maybe(message_data)).map(list)), max_size=4))})
entry = st.fixed_dictionaries({}, optional={
    "prompt": maybe(st.tuples(maybe(st.integers()), st.just(PROMPT_ID), maybe(st.just(GRAPH)),
                              values, maybe(st.lists(values, max_size=3))).map(list)),
    "outputs": maybe(st.dictionaries(st.sampled_from(["1", "2", "9"]), maybe(
        st.fixed_dictionaries({"images": maybe(st.lists(maybe(image_items), max_size=2))})),
        max_size=2)),
    "status": maybe(status)})
history = st.fixed_dictionaries({PROMPT_ID: maybe(entry)})

node_errors = st.dictionaries(st.text(max_size=3), maybe(st.fixed_dictionaries({}, optional={
    "class_type": values, "errors": maybe(st.lists(maybe(st.fixed_dictionaries({}, optional={
        "type": values, "message": values, "details": values,
        "extra_info": maybe(st.fixed_dictionaries({"input_name": values}))})), max_size=2))})),
    max_size=2)
prompt_answer = st.fixed_dictionaries({}, optional={
    "prompt_id": maybe(st.just(PROMPT_ID)), "number": values,
    "node_errors": maybe(node_errors), "error": maybe(st.fixed_dictionaries({}, optional={
        "type": values, "message": values, "details": values}))})

combo = maybe(st.tuples(maybe(st.lists(maybe(st.text(max_size=6)), max_size=3)),
                        maybe(st.fixed_dictionaries({}, optional={"options": values,
                                                                  "image_upload": values})),
                        ).map(list))
node_info = st.fixed_dictionaries({}, optional={"input": maybe(st.fixed_dictionaries(
    {}, optional={"required": maybe(st.dictionaries(
        st.sampled_from(["ckpt_name", "image", "x"]), combo, max_size=2)),
        "optional": values}))})
object_info = st.dictionaries(st.sampled_from(["CheckpointLoaderSimple", "SaveImage", "X"]),
                              maybe(node_info), max_size=3)
load_image = st.fixed_dictionaries({"LoadImage": maybe(node_info)})

frame_data = st.fixed_dictionaries({"prompt_id": st.just(PROMPT_ID)}, optional={
    "node": values, "nodes": values, "value": values, "max": values, "timestamp": values})
frames = st.lists(st.one_of(
    st.text(max_size=20), st.binary(max_size=20), values.map(json.dumps),
    st.fixed_dictionaries({"type": maybe(st.sampled_from(
        [*MESSAGE_KINDS, "executing", "progress", "executed", "status"])),
        "data": maybe(frame_data)}).map(json.dumps)), max_size=6)
success_entry = {PROMPT_ID: {"prompt": [1, PROMPT_ID, GRAPH, {}, ["2"]], "outputs": {},
                             "status": {"status_str": "success", "completed": True,
                                        "messages": []}}}


# ---- server facts and the queue ---------------------------------------------------------

@FUZZ
@given(body=bodies(system_stats))
def test_system_stats(client: ComfyUIClient, server: FuzzServer, body: bytes) -> None:
    server.answer("GET /system_stats", body)
    stats = ends_cleanly(client.system_stats)
    if not isinstance(stats, ComfyUIError):
        for device in stats.devices:
            assert isinstance(device.vram_total, int) and isinstance(device.vram_free, int)
            assert device.index is None or isinstance(device.index, int)


@FUZZ
@given(body=bodies(queue))
def test_queue_find_and_withdraw(client: ComfyUIClient, server: FuzzServer,
                                 body: bytes) -> None:
    server.answer("GET /queue", body)
    server.answer("GET /history/" + PROMPT_ID, b"{}")
    server.answer("POST /queue", b"")
    server.answer("POST /interrupt", b"")
    state = ends_cleanly(client.queue)
    if not isinstance(state, ComfyUIError):
        assert all(isinstance(pid, str) for pid in state.running + state.pending)
    ends_cleanly(lambda: client.find(PROMPT_ID))
    ends_cleanly(lambda: client.withdraw([PROMPT_ID]))


@FUZZ
@given(info=bodies(object_info), load_image=bodies(load_image), models=bodies(values))
def test_object_info_preflight_models_and_inputs(server: FuzzServer, info: bytes,
                                                 load_image: bytes, models: bytes) -> None:
    server.reset()
    server.answer("GET /object_info", info)
    server.answer("GET /object_info/LoadImage", load_image)
    server.answer("GET /models/checkpoints", models)
    with ComfyUIClient(server.url, timeout=5, connect_timeout=1, name="fuzz") as client:
        ends_cleanly(lambda: client.preflight([GRAPH]))
        names = ends_cleanly(client.input_images)
        if not isinstance(names, ComfyUIError):
            assert all(isinstance(name, str) for name in names)
        ends_cleanly(lambda: client.models("checkpoints"))


# ---- submitting -----------------------------------------------------------------------

@FUZZ
@given(status=st.sampled_from([200, 200, 400, 403, 500]), body=bodies(prompt_answer),
       upload=bodies(st.fixed_dictionaries({}, optional={"name": values})))
def test_submit_and_upload(client: ComfyUIClient, server: FuzzServer, status: int,
                           body: bytes, upload: bytes) -> None:
    server.answer("POST /prompt", body, status)
    server.answer("POST /queue", b"")
    server.answer("POST /upload/image", upload)
    queued = ends_cleanly(lambda: client.submit(GRAPH, prompt_id=PROMPT_ID))
    if not isinstance(queued, ComfyUIError):
        assert isinstance(queued, str) and queued
    stored = ends_cleanly(lambda: client.upload_image(PNG, "layout.png"))
    if not isinstance(stored, ComfyUIError):
        assert isinstance(stored, str)


# ---- waiting: history and WebSocket frames ------------------------------------------------

@FUZZ
@given(body=bodies(history))
def test_wait_on_any_history_entry(client: ComfyUIClient, server: FuzzServer,
                                   body: bytes) -> None:
    server.answer("GET /queue", b'{"queue_running": [], "queue_pending": []}')
    server.answer("GET /history/" + PROMPT_ID, body)
    result = ends_cleanly(lambda: client.wait(PROMPT_ID, timeout=5, stall_timeout=5))
    if isinstance(result, RenderResult):
        assert result.prompt_id == PROMPT_ID
        assert all(isinstance(image, ImageRef) for image in result.images)


@FUZZ
@given(sent=frames)
def test_wait_with_any_websocket_frames(client: ComfyUIClient, server: FuzzServer,
                                        sent: list[str | bytes]) -> None:
    server.script.frames = sent
    server.answer("GET /queue", b'{"queue_running": [], "queue_pending": []}')
    server.answer("GET /history/" + PROMPT_ID, dumps(success_entry))
    events: list[ProgressEvent] = []
    result = ends_cleanly(lambda: client.wait(PROMPT_ID, timeout=5, stall_timeout=5,
                                              on_progress=events.append))
    assert isinstance(result, RenderResult) and result.status == "success"
    for event in events:
        assert event.node is None or isinstance(event.node, str)
        assert event.value is None or type(event.value) is int
        assert event.max is None or type(event.max) is int
    assert all(isinstance(seconds, float) for seconds in result.node_seconds.values())


def test_a_huge_history_body_is_read_or_refused(client: ComfyUIClient,
                                                server: FuzzServer) -> None:
    """32 MB of outputs (a runaway node) still ends in a result or a clear error."""
    images = [{"filename": f"x_{n:07d}_.png", "subfolder": "ep01", "type": "output"}
              for n in range(400_000)]
    entry = {**success_entry[PROMPT_ID], "outputs": {"2": {"images": images}}}
    server.answer("GET /queue", b'{"queue_running": [], "queue_pending": []}')
    server.answer("GET /history/" + PROMPT_ID, dumps({PROMPT_ID: entry}))
    result = ends_cleanly(lambda: client.wait(PROMPT_ID, timeout=30, stall_timeout=30))
    assert isinstance(result, RenderResult) and len(result.images) == len(images)


# ---- downloads --------------------------------------------------------------------------

def files_under(folder: Path) -> set[Path]:
    return {path for path in folder.rglob("*") if path.is_file()}


@pytest.mark.parametrize(("body", "content_type"), [
    (b"<!doctype html><html><body>Sign in to continue</body></html>", "text/html"),
    (b'{"error": "not found"}', "application/json"),
    (b"", "image/png"),
    (b"GIF", "image/png"),
])
def test_view_answering_something_else_than_an_image_writes_nothing(
        client: ComfyUIClient, server: FuzzServer, tmp_path: Path, body: bytes,
        content_type: str) -> None:
    server.answer("GET /view", body, content_type=content_type)
    dest = tmp_path / "renders" / "take.png"
    with pytest.raises(ComfyUIProtocolError, match=r"GET /view ep01/x\.png.*not an image"):
        client.download(ImageRef("x.png", "ep01", "output"), dest)
    assert files_under(tmp_path) == set()


@FUZZ
@given(item=image_items)
def test_hostile_image_names_never_write_outside_the_destination(
        client: ComfyUIClient, server: FuzzServer, tmp_path_factory: pytest.TempPathFactory,
        item: dict[str, Any]) -> None:
    """A name from the server picks what to fetch, never where it lands."""
    root = tmp_path_factory.mktemp("root")
    server.answer("GET /view", PNG, content_type="image/png")
    image = ends_cleanly(lambda: ImageRef.from_json(item))
    if isinstance(image, ComfyUIError):
        assert isinstance(image, ComfyUIProtocolError)
        return
    assert ".." not in image.relative_path.parts and not image.relative_path.is_absolute()
    dest = root / "renders" / "take.png"
    got = client.download(image, dest)
    assert got.path == dest and files_under(root) == {dest}


def test_store_rendered_puts_each_image_at_its_takes_path_whatever_the_server_names_it(
        client: ComfyUIClient, server: FuzzServer, tmp_path: Path) -> None:
    """The server names the images it made; the render root only ever gets take paths."""
    shot_list = ShotList(episode="ep01", shots=(
        Shot(id="sh010", prompt="the rope bridge at dusk", takes=3, preset="draft", seed=7),))
    takes = resolve_takes(shot_list)
    batch = RenderBatch(batch_id=batch_id_for(takes), server="fuzz", takes=tuple(takes),
                        vram_estimate_mb=2048.0, est_seconds=4.0)
    images = (ImageRef("..png", "", "output"), ImageRef("sh010.png", "a/b/c", "temp"),
              ImageRef("....png", "..a/b..", "output"))
    result = RenderResult(prompt_id=PROMPT_ID, status="success", images=images,
                          finished_at=datetime(2026, 1, 1, tzinfo=UTC))
    root = DataRoot(tmp_path / "data")
    ctx = RenderContext(data_root=root, index=OutputIndex(root.index),
                        metrics=MetricsStore(root.metrics), run_id="run-1")
    server.answer("GET /view", PNG, content_type="image/png")
    outcome = store_rendered(client, Rendered(batch, result, None, result.finished_at), ctx)
    expected = {root.renders / take_output_path(take) for take in takes}
    assert set(outcome.images) == expected
    assert files_under(root.renders) == expected
    assert all(idat_bytes(path.read_bytes()) == idat_bytes(PNG) for path in expected)
