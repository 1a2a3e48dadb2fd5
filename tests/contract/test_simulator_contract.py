"""The simulator answers like the recorded ComfyUI 0.3.64 (shared/comfyui-contract).

Each test replays a recorded request against a live simulator over loopback and
compares status codes, content types and JSON shapes (exact bodies where the
recording is deterministic).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from simulator_helpers import (
    assert_frame_shapes,
    assert_same_shape,
    client,
    collect_until_done,
    long_graph,
    next_message,
    only_entry,
    open_ws,
    recorded,
    recorded_frames,
    recorded_graph,
    submit,
    types_collapsed,
    wait_history,
    wait_idle,
)

from tower.simulator import SimulatorServer

JSON_TYPE = "application/json; charset=utf-8"
TROUBLE = "500 Internal Server Error\n\nServer got itself in trouble"


def _without(value: Any, key: str) -> Any:
    """``value`` with every ``key`` entry removed (tracebacks name other files)."""
    if isinstance(value, dict):
        return {k: _without(v, key) for k, v in value.items() if k != key}
    if isinstance(value, list):
        return [_without(v, key) for v in value]
    return value


POST_400 = [
    "post_prompt_400_body_is_json_list.json",
    "post_prompt_400_link_to_missing_node.json",
    "post_prompt_400_link_type_mismatch.json",
    "post_prompt_400_malformed_prompt_list.json",
    "post_prompt_400_missing_required_input.json",
    "post_prompt_400_multiple_errors.json",
    "post_prompt_400_no_output_nodes.json",
    "post_prompt_400_no_prompt_key.json",
    "post_prompt_400_node_missing_class_type.json",
    "post_prompt_400_node_not_a_dict.json",
    "post_prompt_400_unknown_ckpt_name.json",
    "post_prompt_400_unknown_node_class.json",
    "post_prompt_400_unknown_sampler_name.json",
    "post_prompt_400_value_below_min.json",
    "post_prompt_400_wrong_value_type.json",
]


def _replay(sim: SimulatorServer, request: dict[str, Any]) -> Any:
    with client(sim) as http:
        if "raw_body" in request:
            return http.request(request["method"], request["path"],
                                content=request["raw_body"], headers=request.get("headers"))
        return http.request(request["method"], request["path"], json=request.get("json"))


@pytest.mark.parametrize("name", POST_400)
def test_validation_errors_match_recorded_bodies(simulator: SimulatorServer, name: str) -> None:
    fixture = recorded(name)
    response = _replay(simulator, fixture["request"])
    assert response.status_code == 400
    assert response.headers["content-type"] == JSON_TYPE
    expected = fixture["response"]["body"]
    assert _without(response.json(), "traceback") == _without(expected, "traceback")
    assert_same_shape(response.json(), expected)


@pytest.mark.parametrize("name", [
    "post_prompt_500_body_not_json.json",
    "post_prompt_500_malformed_prompt_string.json",
    "post_prompt_500_malformed_prompt_list_of_ints.json",
])
def test_server_trouble_is_text_plain_500(simulator: SimulatorServer, name: str) -> None:
    response = _replay(simulator, recorded(name)["request"])
    assert response.status_code == 500
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.text == TROUBLE


def test_duplicate_pending_id_and_number_is_500_yet_queued(simulator: SimulatorServer) -> None:
    fixture = recorded("post_prompt_500_duplicate_prompt_id_same_number_pending.json")
    with client(simulator) as http:
        # Long enough to still be running on a loaded machine; it is interrupted below.
        blocker = submit(http, long_graph(steps=5000))
        first = http.post("/prompt", json=fixture["first"]["request"]["json"])
        second = http.post("/prompt", json=fixture["second"]["request"]["json"])
        pending = http.get("/queue").json()["queue_pending"]
        http.post("/interrupt", json={"prompt_id": blocker["prompt_id"]})
        wait_idle(http)
        history = http.get("/history").json()
    assert first.json() == fixture["first"]["response"]["body"]
    assert second.status_code == 500 and second.text == TROUBLE
    assert [item[:2] for item in pending] == [[5.0, "dup-x"], [5.0, "dup-x"]]
    assert_same_shape(pending, fixture["queue_after"]["response"]["body"]["queue_pending"])
    assert "dup-x" in history


def test_success_response_history_and_ws_trace_match_recording(
        simulator: SimulatorServer) -> None:
    fixture = recorded("post_prompt_success.json")
    with client(simulator) as http, open_ws(simulator, "client-a") as ws:
        hello = next_message(ws)
        response = http.post("/prompt", json={**fixture["request"]["json"],
                                              "client_id": "client-a"})
        body = response.json()
        frames = collect_until_done(ws, body["prompt_id"])
        history = http.get(f"/history/{body['prompt_id']}").json()
    trace = recorded_frames("ws_trace_success.json")
    assert response.status_code == 200 and response.headers["content-type"] == JSON_TYPE
    assert_same_shape(body, fixture["response"]["body"])
    assert body["number"] == 0 and body["node_errors"] == {}
    assert_same_shape(hello, trace[0])
    assert hello["data"]["sid"] == "client-a"
    assert types_collapsed(frames) == types_collapsed(trace[1:])
    assert_frame_shapes(frames, trace)
    expected = recorded("history_prompt_id_success.json")["response"]["body"]
    assert_same_shape(only_entry(history), only_entry(expected))
    entry = history[body["prompt_id"]]
    assert entry["outputs"] == {"9": {"images": [
        {"filename": "sh010_00001_.png", "subfolder": "ep01", "type": "output"}]}}
    assert entry["prompt"][3] == {"client_id": "client-a"}


def test_cached_resubmit_matches_recording(simulator: SimulatorServer) -> None:
    graph = recorded_graph()
    with client(simulator) as http, open_ws(simulator, "c") as ws:
        next_message(ws)
        first = submit(http, graph, client_id="c")
        collect_until_done(ws, first["prompt_id"])
        second = submit(http, graph, client_id="c")
        frames = collect_until_done(ws, second["prompt_id"])
        entry = wait_history(http, second["prompt_id"])
    trace = recorded_frames("ws_trace_cached.json")
    assert types_collapsed(frames) == types_collapsed(trace[1:])
    assert_frame_shapes(frames, trace)
    cached = next(f for f in frames if f["type"] == "execution_cached")
    assert cached["data"]["nodes"] == ["4", "6", "7", "5", "3", "8", "9"]
    expected = recorded("history_prompt_id_cached.json")["response"]["body"]
    assert_same_shape(entry, only_entry(expected))
    assert entry["outputs"]["9"]["images"][0]["filename"] == "sh010_00001_.png"


def test_execution_error_matches_recording(simulator: SimulatorServer) -> None:
    simulator.faults.execution_error_rate = 1.0
    with client(simulator) as http, open_ws(simulator, "e") as ws:
        next_message(ws)
        body = submit(http, recorded_graph(), client_id="e")
        frames = collect_until_done(ws, body["prompt_id"])
        entry = wait_history(http, body["prompt_id"])
    trace = recorded_frames("ws_trace_execution_error.json")
    assert types_collapsed(frames) == types_collapsed(trace[1:])
    assert_frame_shapes(frames, trace)
    expected = only_entry(recorded("history_execution_error.json")["response"]["body"])
    assert [m[0] for m in entry["status"]["messages"]] == \
        [m[0] for m in expected["status"]["messages"]]
    error = entry["status"]["messages"][-1][1]
    recorded_error = expected["status"]["messages"][-1][1]
    assert set(error) == set(recorded_error)
    assert_same_shape(error["traceback"], recorded_error["traceback"])
    assert error["exception_type"] == "RuntimeError" and error["node_type"] == "KSampler"
    assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
    assert entry["outputs"] == {}


def test_interrupt_matches_recording(simulator: SimulatorServer) -> None:
    with client(simulator) as http, open_ws(simulator, "i") as ws:
        next_message(ws)
        body = submit(http, long_graph(), client_id="i")
        while next_message(ws)["type"] != "progress":
            pass
        assert http.post("/interrupt", json={}).status_code == 200
        frames = collect_until_done(ws, body["prompt_id"])
        entry = wait_history(http, body["prompt_id"])
    interrupted = next(f for f in frames if f["type"] == "execution_interrupted")
    recorded_trace = recorded_frames("ws_trace_interrupted.json")
    recorded_msg = next(f for f in recorded_trace if f["type"] == "execution_interrupted")
    assert set(interrupted["data"]) == set(recorded_msg["data"])
    assert interrupted["data"]["node_id"] == "3"
    assert sorted(interrupted["data"]["executed"]) == ["4", "5", "6", "7"]
    assert types_collapsed(frames)[-3:] == ["execution_interrupted", "status", "executing"]
    progress = [f for f in frames if f["type"] == "progress"]
    assert len(progress) < 500
    expected = only_entry(recorded("history_interrupted.json")["response"]["body"])
    assert_same_shape(entry["status"], expected["status"])
    assert entry["outputs"] == {} and entry["meta"] == {}


def test_queue_and_prompt_shapes(simulator: SimulatorServer) -> None:
    with client(simulator) as http:
        idle = http.get("/queue")
        assert idle.json() == recorded("queue_idle.json")["response"]["body"]
        assert http.get("/prompt").json() == recorded("prompt_get_idle.json")["response"]["body"]
        running = submit(http, long_graph(), client_id="q")
        pending = submit(http, recorded_graph(), client_id="q")
        while not http.get("/queue").json()["queue_running"]:
            pass
        queue = http.get("/queue").json()
        remaining = http.get("/prompt").json()["exec_info"]["queue_remaining"]
        http.post("/queue", json={"clear": True})
        http.post("/interrupt")
        wait_idle(http)
    expected = recorded("queue_running_and_pending.json")["response"]["body"]
    assert_same_shape(queue["queue_running"], expected["queue_running"])
    assert_same_shape(queue["queue_pending"][0], expected["queue_pending"][0])
    assert queue["queue_running"][0][1] == running["prompt_id"]
    assert queue["queue_pending"][0][1] == pending["prompt_id"]
    assert queue["queue_pending"][0][4] == ["9"]
    assert remaining == 2


@pytest.mark.parametrize(("path", "body"), [
    ("/queue", {"delete": ["nope"]}), ("/queue", {"clear": True}),
    ("/history", {"delete": ["00000000-0000-0000-0000-000000000000"]}),
    ("/history", {"clear": True}), ("/interrupt", {"prompt_id": "not-running"}),
    ("/interrupt", None), ("/free", {"unload_models": True, "free_memory": True}),
])
def test_control_posts_answer_empty_200(simulator: SimulatorServer, path: str,
                                        body: dict[str, Any] | None) -> None:
    with client(simulator) as http:
        response = http.post(path, json=body) if body is not None else http.post(path)
    assert response.status_code == 200 and response.content == b""


def test_history_unknown_and_paging(simulator: SimulatorServer) -> None:
    graph = recorded_graph()
    ids = []
    with client(simulator) as http:
        assert http.get("/history/unknown").json() == {}
        for seed in (1, 2, 3):
            graph["3"]["inputs"]["seed"] = seed
            ids.append(submit(http, copy.deepcopy(graph), client_id="h")["prompt_id"])
            wait_history(http, ids[-1])
        newest = http.get("/history", params={"max_items": 2}).json()
        first = http.get("/history", params={"offset": 0, "max_items": 2}).json()
        everything = http.get("/history").json()
    assert list(newest) == ids[1:]
    assert list(first) == ids[:2]
    assert list(everything) == ids
    expected = recorded("history_max_items_2.json")["response"]["body"]
    assert_same_shape(list(newest.values()), list(expected.values()))


def test_coercion_is_stored_in_history(simulator: SimulatorServer) -> None:
    fixture = recorded("post_prompt_coercion_string_steps_and_max_seed.json")
    with client(simulator) as http:
        body = http.post("/prompt", json=fixture["post"]["request"]["json"]).json()
        entry = wait_history(http, body["prompt_id"])
    inputs = entry["prompt"][2]["3"]["inputs"]
    assert inputs["steps"] == 4 and inputs["seed"] == 2**64 - 1
    assert entry["status"]["status_str"] == "success"


def test_partial_validation_queues_valid_outputs(simulator: SimulatorServer) -> None:
    fixture = recorded("post_prompt_200_partial_validation.json")
    with client(simulator) as http:
        response = http.post("/prompt", json=fixture["request"]["json"])
        entry = wait_history(http, response.json()["prompt_id"])
    assert response.status_code == 200
    assert response.json()["node_errors"] == fixture["response"]["body"]["node_errors"]
    assert entry["prompt"][4] == ["9"]
    assert list(entry["outputs"]) == ["9"]


def test_system_stats_shape_and_cuda_device(simulator: SimulatorServer) -> None:
    with client(simulator) as http:
        before = http.get("/system_stats").json()
        wait_history(http, submit(http, recorded_graph())["prompt_id"])
        after = http.get("/system_stats").json()
    expected = recorded("system_stats.json")["response"]["body"]
    assert set(before) == set(expected)
    assert set(before["system"]) == set(expected["system"])
    device = before["devices"][0]
    assert set(device) == set(expected["devices"][0])
    assert device["type"] == "cuda" and device["name"].startswith("cuda:0 NVIDIA")
    assert "(simulated)" in device["name"]
    assert device["vram_total"] == 12288 * 1024 * 1024 == device["vram_free"]
    assert after["devices"][0]["vram_free"] < device["vram_free"]


NODES = ["CheckpointLoaderSimple", "CLIPTextEncode", "EmptyLatentImage", "KSampler",
         "KSamplerAdvanced", "VAEDecode", "VAEDecodeTiled", "SaveImage", "NoSuchNode"]


# Nodes the production recordings captured in another spelling (see catalog.py).
RESPELLED = {"UpscaleModelLoader": [], "ImageUpscaleWithModel": None}


def test_object_info_matches_recording(tmp_path: Any) -> None:
    """With no LoRA, ControlNet or upscale model files, as when the parent set was
    recorded, the body is that recording but for the nodes the production set respelled."""
    from tower.simulator import SimulatorConfig, start_simulator

    config = SimulatorConfig(loras=(), controlnets=(), upscale_models=(), time_scale=0,
                             output_dir=tmp_path / "out")
    with start_simulator(config) as sim, client(sim) as http:
        full = http.get("/object_info")
        singles = {name: http.get(f"/object_info/{name}").json() for name in NODES}
    assert full.headers["content-type"] == JSON_TYPE
    body, expected = full.json(), recorded("object_info_full.json")
    assert list(body) == list(expected)
    for name, choices in RESPELLED.items():
        production = recorded(f"production/object_info_{name}.json")[name]
        if choices is not None:
            production["input"]["required"]["model_name"][0] = choices
        assert body.pop(name) == production, name
        expected.pop(name)
    assert body == expected
    for name in NODES:
        assert singles[name] == recorded(f"object_info_{name}.json"), name


def test_object_info_lists_configured_checkpoints(tmp_path: Any) -> None:
    from tower.simulator import SimulatorConfig, start_simulator

    config = SimulatorConfig(checkpoints=("a.safetensors",), time_scale=0,
                             output_dir=tmp_path)
    with start_simulator(config) as sim, client(sim) as http:
        info = http.get("/object_info/CheckpointLoaderSimple").json()
        models = http.get("/models/checkpoints").json()
        graph = recorded_graph()
        refused = http.post("/prompt", json={"prompt": graph})
    assert info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == models
    assert models == ["a.safetensors"]
    assert refused.status_code == 400
    error = refused.json()["node_errors"]["4"]["errors"][0]
    assert error["type"] == "value_not_in_list"
    assert error["details"] == "ckpt_name: 'anime-draft-sd15.safetensors' not in ['a.safetensors']"


@pytest.mark.parametrize("name", ["models.json", "models_checkpoints.json",
                                  "models_unknown_folder_404.json", "features.json",
                                  "embeddings.json"])
def test_models_and_features_match_recording(simulator: SimulatorServer, name: str) -> None:
    fixture = recorded(name)
    response = _replay(simulator, fixture["request"])
    assert response.status_code == fixture["response"]["status"]
    if fixture["response"]["body_kind"] == "json":
        assert response.json() == fixture["response"]["body"]
        assert response.headers["content-type"] == JSON_TYPE
    else:
        assert response.content == b""


VIEW_FIXTURES = ["view_output_image_headers.json", "view_bad_type_400.json",
                 "view_missing_file_404.json", "view_no_filename_404.json",
                 "view_path_traversal_400.json", "view_subfolder_traversal_403.json",
                 "view_preview_webp.json", "view_channel_a.json"]


def test_view_answers_like_recording(simulator: SimulatorServer) -> None:
    with client(simulator) as http:
        wait_history(http, submit(http, recorded_graph())["prompt_id"])
        for name in VIEW_FIXTURES:
            fixture = recorded(name)["response"]
            response = http.get(recorded(name)["request"]["path"])
            assert response.status_code == fixture["status"], name
            if fixture["status"] != 200:
                assert response.content == b"", name
                continue
            headers = fixture["headers"]
            assert response.headers["content-type"] == headers["Content-Type"], name
            assert response.headers["content-disposition"] == headers["Content-Disposition"]
            png = headers["Content-Type"] == "image/png"
            assert response.content.startswith(b"\x89PNG") == png, name


def test_origin_mismatch_is_refused(simulator: SimulatorServer) -> None:
    fixture = recorded("origin_mismatch_403.json")
    with client(simulator) as http:
        response = http.get("/queue", headers=fixture["request"]["headers"])
        same = http.get("/queue", headers={"Origin": simulator.url})
    assert response.status_code == 403 and response.content == b""
    assert same.status_code == 200


def test_ws_without_client_id_gets_sid_and_feature_flags(simulator: SimulatorServer) -> None:
    trace = recorded_frames("ws_trace_no_clientid_and_feature_flags.json")
    with open_ws(simulator) as ws:
        hello = next_message(ws)
        ws.send('{"type": "feature_flags", "data": {"supports_preview_metadata": true}}')
        flags = next_message(ws)
    assert_same_shape(hello, trace[0])
    assert len(hello["data"]["sid"]) == 32 and int(hello["data"]["sid"], 16) >= 0
    assert flags == trace[1]


def test_prompt_without_client_id_broadcasts_only_status_and_progress(
        simulator: SimulatorServer) -> None:
    trace = recorded_frames("ws_trace_observer_prompt_without_client_id.json")
    with client(simulator) as http, open_ws(simulator, "observer") as ws:
        next_message(ws)
        body = submit(http, recorded_graph())
        wait_history(http, body["prompt_id"])
        wait_idle(http)
        frames = []
        while True:
            frames.append(next_message(ws))
            if frames[-1]["type"] == "status" and \
                    frames[-1]["data"]["status"]["exec_info"]["queue_remaining"] == 0:
                break
    assert {f["type"] for f in frames} == {f["type"] for f in trace[1:]}


@pytest.mark.parametrize(("history_file", "trace_file"), [
    ("history_batch2.json", "ws_trace_batch2.json"),
    ("history_vaedecodetiled.json", "ws_trace_vaedecodetiled.json"),
    ("history_switch_ckpt.json", "ws_trace_switch_ckpt.json"),
])
def test_recorded_variants_replay_alike(simulator: SimulatorServer, history_file: str,
                                        trace_file: str) -> None:
    """Batch of 2, tiled decode and a checkpoint switch, each after a 64x64 draft
    render with a different latent (as when they were recorded)."""
    expected = only_entry(recorded(history_file)["response"]["body"])
    warmup = recorded_graph()
    warmup["5"]["inputs"]["width"] = 72
    with client(simulator) as http, open_ws(simulator, "v") as ws:
        next_message(ws)
        collect_until_done(ws, submit(http, warmup, client_id="v")["prompt_id"])
        body = submit(http, expected["prompt"][2], client_id="v")
        frames = collect_until_done(ws, body["prompt_id"])
        entry = wait_history(http, body["prompt_id"])
    trace = recorded_frames(trace_file)
    assert types_collapsed(frames) == types_collapsed(trace[1:])
    assert_frame_shapes(frames, trace)
    assert entry["status"]["messages"][1][1]["nodes"] == \
        expected["status"]["messages"][1][1]["nodes"]
    assert [len(v["images"]) for v in entry["outputs"].values()] == \
        [len(v["images"]) for v in expected["outputs"].values()]
    assert_same_shape(entry, expected)


def test_malformed_extra_data_is_text_plain_500(simulator: SimulatorServer) -> None:
    with client(simulator) as http:
        response = http.post("/prompt", json={"prompt": recorded_graph(), "extra_data": 5})
        queue = http.get("/queue").json()
    assert response.status_code == 500 and response.text == TROUBLE
    assert queue == {"queue_running": [], "queue_pending": []}
