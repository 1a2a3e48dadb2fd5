"""The client's pure parts, checked against answers recorded from a real ComfyUI 0.3.64.

Timings come from the recorded WebSocket traces (their ``t_s``); outcomes and images
from the matching history entries.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from paths import CONTRACT

from tower.comfyui import (
    ComfyUIExecutionError,
    ComfyUIInterrupted,
    ComfyUIOutOfMemory,
    ComfyUIPreflightError,
    ComfyUIProtocolError,
    ImageRef,
    retry_delay,
    should_retry_status,
)
from tower.comfyui._client import ComfyUIClient
from tower.comfyui._parse import (
    failure,
    is_out_of_memory,
    parse_history,
    parse_queue,
    parse_system_stats,
    validation_error,
)
from tower.comfyui._preflight import check_graphs, combo_options, find_missing
from tower.comfyui._results import build_result, phase_of
from tower.comfyui._tracker import PromptTracker
from tower.comfyui._ws import ws_url


def recorded(name: str) -> Any:
    data = json.loads((CONTRACT / name).read_text())
    if isinstance(data, dict) and "response" in data:
        return data["response"]["body"]
    return data


def replay(trace: str, prompt_id: str) -> PromptTracker:
    tracker = PromptTracker(prompt_id)
    for frame in recorded(trace):
        if frame["frame"] == "text":
            tracker.feed(frame["data"]["type"], frame["data"].get("data"), frame["t_s"])
    return tracker


def history(name: str) -> tuple[str, Any]:
    body = recorded(name)
    (prompt_id,) = body
    entry = parse_history(body, prompt_id)
    assert entry is not None
    return prompt_id, entry


# (trace, history, status, images, cached, load_s, sampling_s, decode_s, execution_s)
TIMING_CASES = [
    ("ws_trace_success.json", "history_prompt_id_success.json", "success", 1, False,
     1.2706, 2.803, 0.1106, 4.454),
    ("ws_trace_cached.json", "history_prompt_id_cached.json", "success", 1, True,
     0.0, 0.0, 0.0, 0.001),
    ("ws_trace_batch2.json", "history_batch2.json", "success", 2, False,
     0.0, 3.4506, 0.2071, 3.664),
    ("ws_trace_vaedecodetiled.json", "history_vaedecodetiled.json", "success", 1, False,
     0.0, 2.3208, 0.4791, 2.805),
    ("ws_trace_interrupted.json", "history_interrupted.json", "interrupted", 0, False,
     0.3685, 3.2186, None, 3.955),
]


@pytest.mark.parametrize(("trace", "hist", "status", "images", "cached", "load", "sampling",
                          "decode", "execution"), TIMING_CASES)
def test_results_from_recorded_runs(trace: str, hist: str, status: str, images: int,
                                    cached: bool, load: float | None, sampling: float | None,
                                    decode: float | None, execution: float) -> None:
    prompt_id, entry = history(hist)
    result = build_result(entry, replay(trace, prompt_id), queued_at=None, adopted=False)
    assert result.status == status
    assert len(result.images) == images
    assert result.cached is cached
    assert result.model_load_s == pytest.approx(load, abs=1e-4)
    assert result.sampling_s == pytest.approx(sampling, abs=1e-4)
    assert result.vae_decode_s == pytest.approx(decode, abs=1e-4)
    assert result.execution_s == pytest.approx(execution, abs=1e-6)
    assert result.queue_wait_s is None and result.queued_at is None
    assert result.started_at is not None and result.started_at.tzinfo is not None


def test_node_seconds_follow_the_executing_sequence() -> None:
    tracker = replay("ws_trace_success.json", "ceb08c3d-3da2-43e5-9cf1-98b1e59e6e0a")
    expected = {"4": 1.2706, "5": 0.0001, "7": 0.1439, "6": 0.1218, "3": 2.803,
                "8": 0.1106, "9": 0.0012}
    assert tracker.node_seconds == pytest.approx(expected, abs=1e-4)
    assert tracker.outcome == "success" and tracker.finished


def test_tracker_ignores_other_prompts_and_reports_progress() -> None:
    tracker = PromptTracker("mine")
    assert tracker.feed("progress", {"prompt_id": "other", "value": 1, "max": 4}, 0.0) is None
    assert tracker.feed("status", {"status": {"exec_info": {"queue_remaining": 1}}}, 0.0) is None
    event = tracker.feed("progress", {"prompt_id": "mine", "node": "3", "value": 2, "max": 4},
                         1.0)
    assert (event.event, event.node, event.value, event.max) == ("progress", "3", 2, 4)
    assert not tracker.ended


def test_history_race_success_before_executing_null() -> None:
    """execution_success ends the prompt for the tracker even before executing{null}."""
    tracker = PromptTracker("p")
    tracker.feed("execution_success", {"prompt_id": "p", "timestamp": 1}, 1.0)
    assert tracker.ended and not tracker.finished


@pytest.mark.parametrize(("hist", "cls", "node", "words"), [
    ("history_execution_error.json", ComfyUIExecutionError, "8",
     "node 8 (VAEDecode) raised RuntimeError: Given groups=1"),
    ("history_execution_error_loadimage_corrupt.json", ComfyUIExecutionError, "1",
     "node 1 (LoadImage) raised PIL.UnidentifiedImageError"),
    ("history_interrupted.json", ComfyUIInterrupted, "3", "interrupted at node 3 (KSampler)"),
])
def test_failures_from_recorded_history(hist: str, cls: type, node: str, words: str) -> None:
    prompt_id, entry = history(hist)
    result = build_result(entry, None, queued_at=None, adopted=False)
    kind = "execution_interrupted" if cls is ComfyUIInterrupted else "execution_error"
    exc = failure(prompt_id, kind, entry.message(kind) or {}, result)
    assert type(exc) is cls
    assert exc.node_id == node and words in str(exc)
    assert exc.result is result and result.images == ()


@pytest.mark.parametrize(("exception_type", "message", "oom"), [
    ("torch.OutOfMemoryError", "CUDA out of memory. Tried to allocate 2.00 GiB", True),
    ("torch.cuda.OutOfMemoryError", "", True),
    ("OutOfMemoryError", "", True),
    ("RuntimeError", "CUDA error: out of memory", True),
    ("RuntimeError", "Given groups=1, weight of size [4, 4, 1, 1]", False),
    ("PIL.UnidentifiedImageError", "cannot identify image file", False),
    (None, None, False),
])
def test_out_of_memory_detection(exception_type: str | None, message: str | None,
                                 oom: bool) -> None:
    assert is_out_of_memory(exception_type, message) is oom
    exc = failure("p", "execution_error", {"node_id": "sampler", "node_type": "KSampler",
                                           "exception_type": exception_type,
                                           "exception_message": message})
    assert isinstance(exc, ComfyUIOutOfMemory) is oom
    assert isinstance(exc, ComfyUIExecutionError)


@pytest.mark.parametrize(("fixture", "expected"), [
    ("post_prompt_400_unknown_sampler_name.json",
     ["node 3 (KSampler) input sampler_name: value_not_in_list: "
      "'no_such_sampler' not in (list of length 42)"]),
    ("post_prompt_400_multiple_errors.json",
     ["node 4 (CheckpointLoaderSimple) input ckpt_name: value_not_in_list: 'nope.safetensors'",
      "node 3 (KSampler) input scheduler: value_not_in_list: 'nope' not in"]),
    ("post_prompt_400_unknown_node_class.json",
     ["invalid_prompt: Cannot execute because node NoSuchNode does not exist. "
      "(Node ID '#10')"]),
    ("post_prompt_400_missing_required_input.json", ["required_input_missing"]),
    ("post_prompt_400_value_below_min.json", ["value_smaller_than_min"]),
    ("post_prompt_400_no_output_nodes.json", ["prompt_no_outputs"]),
    ("post_prompt_400_body_is_json_list.json", ["no_prompt"]),
])
def test_validation_messages_name_node_class_input_and_reason(fixture: str,
                                                              expected: list[str]) -> None:
    body = recorded(fixture)
    exc = validation_error(body)
    for words in expected:
        assert words in str(exc)
    assert exc.node_errors == body.get("node_errors", {})


def test_system_stats_devices_and_version() -> None:
    stats = parse_system_stats(recorded("system_stats.json"))
    assert stats.comfyui_version == "0.3.64"
    (device,) = stats.devices
    assert (device.name, device.type, device.vram_total, device.vram_free) == \
        ("cpu", "cpu", 25276063744, 19555307520)


def test_queue_pending_sorted_by_number_then_id() -> None:
    body = recorded("queue_running_and_pending.json")
    state = parse_queue(body)
    numbers = {item[1]: float(item[0]) for item in body["queue_pending"]}
    assert [numbers[p] for p in state.pending] == [-1000.0, -44, -43, 0.5, 42, 45]
    assert state.running == ("d3cffb87-3fc4-4933-a709-cb1402f2b56a",)
    assert state.position(state.pending[0]) == 1 and state.position("nope") is None
    assert state.client_ids[state.running[0]] == "queue-test-client"


@pytest.mark.parametrize("name", ["history_unknown_id.json", "history_while_running.json",
                                  "history_cleared_item_X.json"])
def test_empty_history_means_not_finished(name: str) -> None:
    assert parse_history(recorded(name), "any") is None


UNSAFE_IMAGES = [
    ({"filename": "../../etc/passwd", "subfolder": "", "type": "output"}, "filename"),
    ({"filename": "..", "subfolder": "", "type": "output"}, "filename"),
    ({"filename": "a.png", "subfolder": "../up", "type": "output"}, "subfolder"),
    ({"filename": "a.png", "subfolder": "ep01/../../x", "type": "output"}, "subfolder"),
    ({"filename": "a.png", "subfolder": "/etc", "type": "output"}, "subfolder"),
    ({"filename": "/etc/passwd", "subfolder": "", "type": "output"}, "filename"),
    ({"filename": "a\\..\\b.png", "subfolder": "", "type": "output"}, "filename"),
    ({"filename": "a.png", "subfolder": "ep01\\..", "type": "output"}, "subfolder"),
    ({"filename": "a\x00.png", "subfolder": "", "type": "output"}, "filename"),
    ({"filename": "", "subfolder": "", "type": "output"}, "filename"),
    ({"filename": "a.png", "subfolder": "ep01//x", "type": "output"}, "subfolder"),
    ({"filename": "a.png", "subfolder": "", "type": "secrets"}, "type"),
    ({"filename": 7, "subfolder": "", "type": "output"}, "filename"),
    ("a.png", "object"),
]


@pytest.mark.parametrize(("item", "field"), UNSAFE_IMAGES)
def test_unsafe_image_refs_in_history_are_refused(item: object, field: str) -> None:
    _, entry = history("history_prompt_id_success.json")
    body = {"p": {"prompt": [0, "p", entry.graph, {}, ["9"]],
                  "outputs": {"9": {"images": [item]}},
                  "status": {"status_str": "success", "completed": True, "messages": []}}}
    with pytest.raises(ComfyUIProtocolError, match=field):
        parse_history(body, "p")


def test_safe_image_refs_keep_output_node_order() -> None:
    graph = {"a": {"class_type": "SaveImage"}, "b": {"class_type": "SaveImage"}}
    body = {"p": {"prompt": [0, "p", graph, {}, ["b", "a"]],
                  "outputs": {"a": {"images": [{"filename": "a.png", "subfolder": "ep01/sh010",
                                                "type": "output"}]},
                              "b": {"images": [{"filename": "b1.png", "subfolder": "",
                                                "type": "output"},
                                               {"filename": "b2.png", "subfolder": "",
                                                "type": "output"}]}}}}
    entry = parse_history(body, "p")
    assert [i.filename for i in entry.images] == ["b1.png", "b2.png", "a.png"]
    assert str(entry.images[2].relative_path) == "ep01/sh010/a.png"
    assert ImageRef("x_00001_.png", "", "temp").relative_path.as_posix() == "x_00001_.png"


@pytest.mark.parametrize(("class_type", "phase"), [
    ("CheckpointLoaderSimple", "load"), ("UNETLoader", "load"), ("VAELoader", "load"),
    ("KSampler", "sampling"), ("KSamplerAdvanced", "sampling"),
    ("SamplerCustomAdvanced", "sampling"), ("VAEDecode", "decode"),
    ("VAEDecodeTiled", "decode"), ("LoadImage", None), ("SaveImage", None),
    ("CLIPTextEncode", None),
])
def test_phase_of_node_classes(class_type: str, phase: str | None) -> None:
    assert phase_of(class_type) == phase


@pytest.mark.parametrize(("spec", "options"), [
    ([["a", "b"], {"tooltip": "x"}], ["a", "b"]),
    (["COMBO", {"options": ["x", "y"]}], ["x", "y"]),
    (["INT", {"default": 0}], None),
    (["MODEL"], None),
])
def test_combo_options_both_spellings(spec: object, options: list[str] | None) -> None:
    assert combo_options(spec) == options


def graph(ckpt: str, sampler: str, scheduler: str, extra_class: str | None = None) -> dict:
    nodes: dict[str, Any] = {
        "checkpoint": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "sampler": {"class_type": "KSampler",
                    "inputs": {"sampler_name": sampler, "scheduler": scheduler, "seed": 1,
                               "model": ["checkpoint", 0]}},
    }
    if extra_class:
        nodes["extra"] = {"class_type": extra_class, "inputs": {}}
    return nodes


def test_preflight_lists_everything_missing_at_once() -> None:
    info = recorded("object_info_full.json")
    graphs = [graph("anime-draft-sd15.safetensors", "euler", "karras"),
              graph("missing-a.safetensors", "no_sampler", "karras", "KSamplr"),
              graph("missing-b.safetensors", "euler", "no_scheduler")]
    missing, _ = find_missing(info, graphs)
    assert missing == {"checkpoints": ["missing-a.safetensors", "missing-b.safetensors"],
                       "samplers": ["no_sampler"], "schedulers": ["no_scheduler"],
                       "node classes": ["KSamplr"]}
    with pytest.raises(ComfyUIPreflightError) as caught:
        check_graphs(info, graphs, "gpu-1:8188")
    text = str(caught.value)
    assert "anime-draft-sd15.safetensors, anime-final-sd15.safetensors" in text
    assert "'no_sampler' (available: euler, euler_cfg_pp" in text
    assert "similar: KSampler" in text and "365 node classes" in text
    assert caught.value.missing == missing


def test_preflight_passes_for_available_values() -> None:
    info = recorded("object_info_full.json")
    check_graphs(info, [graph("anime-final-sd15.safetensors", "dpmpp_2m", "karras")], "s")


@pytest.mark.parametrize(("attempt", "delay"), [
    (0, 0.25), (1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 5.0), (60, 5.0),
])
def test_retry_delay_doubles_and_caps(attempt: int, delay: float) -> None:
    assert retry_delay(attempt) == delay


def test_retry_delay_custom_bounds_and_bad_attempt() -> None:
    assert [retry_delay(n, initial=0.05, maximum=0.3) for n in range(5)] == \
        [0.05, 0.1, 0.2, 0.3, 0.3]
    with pytest.raises(ValueError, match="attempt"):
        retry_delay(-1)


@pytest.mark.parametrize(("status", "retry"), [
    (500, True), (502, True), (503, True), (504, True), (429, True),
    (400, False), (401, False), (403, False), (404, False), (200, False),
])
def test_should_retry_status(status: int, retry: bool) -> None:
    assert should_retry_status(status) is retry


@pytest.mark.parametrize(("base", "client_id", "expected"), [
    ("http://127.0.0.1:8188", "c-1", "ws://127.0.0.1:8188/ws?clientId=c-1"),
    ("https://render.example/comfy", "a b/c", "wss://render.example/comfy/ws?clientId=a%20b%2Fc"),
    ("http://gpu-2:8188/", "x", "ws://gpu-2:8188/ws?clientId=x"),
])
def test_ws_url(base: str, client_id: str, expected: str) -> None:
    assert ws_url(base.rstrip("/"), client_id) == expected


@pytest.mark.parametrize(("url", "base", "name"), [
    ("http://127.0.0.1:8188", "http://127.0.0.1:8188", "127.0.0.1-8188"),
    ("http://gpu-1:8188/", "http://gpu-1:8188", "gpu-1-8188"),
    ("https://user:pw@render.example/comfy/", "https://render.example/comfy",
     "render.example"),
    ("http://render.example?x=1", "http://render.example", "render.example"),
])
def test_client_url_name_and_repr(url: str, base: str, name: str) -> None:
    with ComfyUIClient(url, token="t0ken") as client:
        assert (client.base_url, client.name) == (base, name)
        assert repr(client) == f"ComfyUIClient({base!r}, name={name!r}, token=***)"
        assert "pw" not in repr(client) and "t0ken" not in repr(client)
    assert client._http.is_closed  # its own pool is closed on exit


@pytest.mark.parametrize("url", ["ftp://host", "127.0.0.1:8188", "http://"])
def test_client_refuses_non_http_urls(url: str) -> None:
    with pytest.raises(ValueError, match="http"):
        ComfyUIClient(url)
