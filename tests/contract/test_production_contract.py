"""The simulator answers like the recorded ComfyUI 0.3.64 with production graphs
(``shared/comfyui-contract/production``): uploads, model folders and metadata, the
input-folder views, LoRA, img2img, ControlNet, hires and upscale-model runs.

Each test replays recorded requests against a live simulator set up like the recorded
server (its two LoRAs, one ControlNet, one upscale model) and compares status codes,
bodies, WebSocket frame sequences, output names and sizes, and the pixel comparisons
the recorder made (``checks.json``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from simulator_helpers import (
    assert_frame_shapes,
    assert_same_shape,
    client,
    collect_until_done,
    next_message,
    only_entry,
    open_ws,
    output_pixels,
    recorded,
    replay_upload,
    types_collapsed,
)

from tower.simulator import SimulatorConfig, SimulatorServer, start_simulator

JSON_TYPE = "application/json; charset=utf-8"
TROUBLE = "500 Internal Server Error\n\nServer got itself in trouble"
P = "production/"
CHECKS = recorded(P + "checks.json")
RECORDED_CONFIG = {"loras": ("char-aoi-v3.safetensors", "style-cel-v1.safetensors")}

# The uploads in an order the recordings fit: the input listing in checks.json was
# taken before "filename_percent_encoded", the object_info_LoadImage recording after it
# and before "lineart_96x64_centercrop".
UPLOADS_FIRST = [
    "success", "same_name_same_content", "same_name_different_content",
    "same_name_different_content_again", "scratch_first", "overwrite_true",
    "overwrite_true_back_to_v1", "subfolder", "non_image_txt", "non_image_png_name",
    "path_traversal_filename_400", "subfolder_traversal_400", "slash_in_filename",
    "lineart", "lineart_96x64",
]
UPLOADS_THEN = ["filename_percent_encoded"]
UPLOADS_LAST = ["lineart_96x64_centercrop", "no_image_field_400"]
INPUTS_FOR_GRAPHS = ["success", "lineart", "lineart_96x64", "lineart_96x64_centercrop",
                     "non_image_txt", "subfolder"]


@pytest.fixture
def production_sim(tmp_path: Path) -> Iterator[SimulatorServer]:
    """A simulator with the recorded server's model files and an empty input folder."""
    config = SimulatorConfig(time_scale=0.002, output_dir=tmp_path / "out", **RECORDED_CONFIG)
    with start_simulator(config) as server:
        yield server


def _assert_upload_replays(http: httpx.Client, name: str) -> None:
    fixture = recorded(f"{P}upload_image_{name}.json")["response"]
    response = replay_upload(http, f"upload_image_{name}.json")
    assert response.status_code == fixture["status"], name
    if fixture["body_kind"] == "json":
        assert response.headers["content-type"] == JSON_TYPE
        assert response.json() == fixture["body"], name
    else:
        assert response.text == fixture["body"], name
        assert response.headers.get("content-type") == fixture["headers"].get("Content-Type")


def test_uploads_replay_like_recording(production_sim: SimulatorServer) -> None:
    with client(production_sim) as http:
        for name in UPLOADS_FIRST:
            _assert_upload_replays(http, name)
        listing = sorted(p.relative_to(production_sim.input_dir).as_posix()
                         for p in production_sim.input_dir.rglob("*") if p.is_file())
        for name in UPLOADS_THEN:
            _assert_upload_replays(http, name)
        load_image = http.get("/object_info/LoadImage").json()
        full = http.get("/object_info").json()["LoadImage"]
        for name in UPLOADS_LAST:
            _assert_upload_replays(http, name)
        scratch = http.get("/view", params={"filename": "ep02_sh099_scratch.png",
                                            "type": "input"})
    assert [n for n in listing if n != "example.png"] == CHECKS["input_dir_after_uploads"]
    assert load_image == recorded(P + "object_info_LoadImage.json")
    assert full == load_image["LoadImage"]
    v1 = (Path(__file__).parent / "recordings" / P / "inputs" / "ep02_sh020_init.png")
    assert scratch.content == v1.read_bytes()  # overwritten back to v1


def test_load_image_lists_example_png_before_uploads(production_sim: SimulatorServer) -> None:
    with client(production_sim) as http:
        body = http.get("/object_info/LoadImage").json()
    assert body == recorded(P + "object_info_LoadImage_before_uploads.json")


@pytest.mark.parametrize("name", [
    "view_input_image_headers.json", "view_input_subfolder_headers.json",
    "view_input_renamed_headers.json", "view_input_non_image_txt_headers.json",
])
def test_view_input_headers_match_recording(production_sim: SimulatorServer, name: str) -> None:
    fixture = recorded(P + name)
    with client(production_sim) as http:
        for upload in UPLOADS_FIRST:
            replay_upload(http, f"upload_image_{upload}.json")
        response = http.get(fixture["request"]["path"])
    expected = fixture["response"]
    assert response.status_code == expected["status"]
    for header in ("Content-Type", "Content-Disposition", "Content-Length"):
        assert response.headers[header] == expected["headers"][header], header
    assert len(response.content) == expected["body_bytes"]
    if "body_text" in expected:
        assert response.text == expected["body_text"]


@pytest.mark.parametrize("name", ["models_loras.json", "models_controlnet.json",
                                  "models_upscale_models.json"])
def test_model_folders_match_recording(production_sim: SimulatorServer, name: str) -> None:
    fixture = recorded(P + name)
    with client(production_sim) as http:
        response = http.get(fixture["request"]["path"])
    assert response.status_code == 200 and response.headers["content-type"] == JSON_TYPE
    assert response.json() == fixture["response"]["body"]


VIEW_METADATA = sorted(p.name for p in (Path(__file__).parent / "recordings" / P)
                       .glob("view_metadata_*.json"))


@pytest.mark.parametrize("name", VIEW_METADATA)
def test_view_metadata_matches_recording(production_sim: SimulatorServer, name: str) -> None:
    fixture = recorded(P + name)
    with client(production_sim) as http:
        response = http.get(fixture["request"]["path"])
    expected = fixture["response"]
    assert response.status_code == expected["status"]
    if expected["status"] == 200:
        assert response.headers["content-type"] == JSON_TYPE
        assert list(response.json().items()) == list(expected["body"].items())  # file order
    else:
        assert response.content == b""


PRODUCTION_NODES = sorted(p.name.removeprefix("object_info_").removesuffix(".json")
                          for p in (Path(__file__).parent / "recordings" / P)
                          .glob("object_info_*.json") if "LoadImage" not in p.name)


def test_production_object_info_matches_recording(production_sim: SimulatorServer) -> None:
    with client(production_sim) as http:
        full = http.get("/object_info").json()
        singles = {name: http.get(f"/object_info/{name}").json() for name in PRODUCTION_NODES}
    for name in PRODUCTION_NODES:
        expected = recorded(f"{P}object_info_{name}.json")
        assert singles[name] == expected, name
        assert full[name] == expected[name], name


def _upload_inputs(http: httpx.Client) -> None:
    for name in INPUTS_FOR_GRAPHS:
        assert replay_upload(http, f"upload_image_{name}.json").status_code == 200


@pytest.mark.parametrize("name", sorted(
    p.name for p in (Path(__file__).parent / "recordings" / P).glob("post_prompt_400_*.json")))
def test_validation_errors_match_recorded_bodies(production_sim: SimulatorServer,
                                                 name: str) -> None:
    fixture = recorded(P + name)
    with client(production_sim) as http:
        _upload_inputs(http)
        response = http.post("/prompt", json=fixture["request"]["json"])
    assert response.status_code == 400
    assert response.headers["content-type"] == JSON_TYPE
    assert response.json() == fixture["response"]["body"]


# Graph runs, in chains that rebuild the cache state each recording was made in (the
# recorded ``execution_cached`` list): the previous prompt decides what is cached.
CHAINS = [
    ["txt2img_no_lora_b2", "lora_chain_b2", "lora_chain_strength_0_b2",
     "img2img_latent_from_batch", "img2img_repeat_batch2",
     "img2img_batch_index_out_of_range"],
    ["controlnet", "controlnet_image_96x64_latent_64x64", "txt2img_no_controlnet",
     "controlnet_image_precropped_64x64", "txt2img_no_controlnet", "hires_latent_upscale",
     "hires_plus_model_upscale"],
    ["loadimage_subfolder_path", "execution_error_loadimage_txt"],
]


def _frames_of(case: str) -> list[dict[str, Any]]:
    return [entry["data"] for entry in recorded(f"{P}ws_trace_{case}.json")]


def _progress(frames: list[dict[str, Any]]) -> list[tuple[str, int, int]]:
    return [(f["data"]["node"], f["data"]["value"], f["data"]["max"])
            for f in frames if f["type"] == "progress"]


def _run_case(http: httpx.Client, ws: Any, case: str) -> tuple[list[dict[str, Any]], Any]:
    request = recorded(f"{P}post_prompt_{case}.json")["request"]["json"]
    body = http.post("/prompt", json={**request, "client_id": "p"}).json()
    frames = collect_until_done(ws, body["prompt_id"])
    return frames, only_entry(http.get(f"/history/{body['prompt_id']}").json())


def _run_chain(sim: SimulatorServer, chain: list[str]) -> dict[str, tuple[Any, Any]]:
    runs: dict[str, tuple[Any, Any]] = {}
    with client(sim) as http, open_ws(sim, "p") as ws:
        next_message(ws)
        _upload_inputs(http)
        for case in chain:
            runs.setdefault(case, _run_case(http, ws, case))
    return runs


@pytest.mark.parametrize("chain", CHAINS, ids=["lora-img2img", "controlnet-hires", "loadimage"])
def test_graph_runs_replay_like_recording(production_sim: SimulatorServer,
                                          chain: list[str]) -> None:
    for case, (frames, entry) in _run_chain(production_sim, chain).items():
        trace = _frames_of(case)
        expected = only_entry(recorded(f"{P}history_{case}.json")["response"]["body"])
        assert types_collapsed(frames) == types_collapsed(trace[1:]), case
        assert_frame_shapes(frames, trace)
        assert _progress(frames) == _progress(trace), case
        cached = next(f["data"]["nodes"] for f in frames if f["type"] == "execution_cached")
        assert cached == next(f["data"]["nodes"] for f in trace
                              if f["type"] == "execution_cached"), case
        assert entry["status"]["status_str"] == expected["status"]["status_str"], case
        assert entry["outputs"] == expected["outputs"], case
        assert_same_shape(entry["outputs"], expected["outputs"])


def _sizes(sim: SimulatorServer, entry: dict[str, Any]) -> list[tuple[int, int]]:
    out = []
    for image in entry["outputs"]["9"]["images"]:
        with Image.open(sim.output_dir / image["subfolder"] / image["filename"]) as img:
            out.append(img.size)
    return out


def test_output_sizes_match_recording(production_sim: SimulatorServer) -> None:
    runs = _run_chain(production_sim, CHAINS[1] + ["img2img_latent_from_batch"])
    for case, (height, width, _) in CHECKS["image_sizes"].items():
        assert _sizes(production_sim, runs[case][1]) == [(width, height)], case


def _pixels(sim: SimulatorServer, runs: dict[str, Any], case: str, k: int = 0) -> bytes:
    return output_pixels(sim, runs[case][1]["outputs"]["9"]["images"][k])


def test_lora_and_img2img_pixels_compare_like_recording(production_sim: SimulatorServer) -> None:
    runs = _run_chain(production_sim, CHAINS[0] + ["loadimage_annotated_output"])
    sim = production_sim
    for k in (0, 1):  # pixels_lora_vs_no_lora, pixels_lora_strength0_vs_no_lora
        assert _pixels(sim, runs, "lora_chain_b2", k) != _pixels(sim, runs, "txt2img_no_lora_b2", k)
        assert _pixels(sim, runs, "lora_chain_strength_0_b2", k) == \
            _pixels(sim, runs, "txt2img_no_lora_b2", k)
    one = _pixels(sim, runs, "img2img_latent_from_batch")
    assert one == _pixels(sim, runs, "img2img_repeat_batch2", 1)
    assert one != _pixels(sim, runs, "img2img_repeat_batch2", 0)
    assert one == _pixels(sim, runs, "img2img_batch_index_out_of_range")
    source = (Path(__file__).parent / "recordings" / P / "inputs" / "ep02_sh020_init.png")
    with Image.open(source) as img:
        assert one != img.convert("RGB").tobytes()
    # LoadImage "ep02/sh010_lora_00001_.png [output]" reads the LoRA run's first image.
    assert _pixels(sim, runs, "loadimage_annotated_output") == \
        _pixels(sim, runs, "lora_chain_b2", 0)


def test_controlnet_pixels_compare_like_recording(production_sim: SimulatorServer) -> None:
    runs = _run_chain(production_sim, CHAINS[1])
    sim = production_sim
    controlnet = _pixels(sim, runs, "controlnet")
    wide = _pixels(sim, runs, "controlnet_image_96x64_latent_64x64")
    assert controlnet != _pixels(sim, runs, "txt2img_no_controlnet")
    assert wide == _pixels(sim, runs, "controlnet_image_precropped_64x64")
    assert wide != controlnet  # another hint
    with client(sim) as http, open_ws(sim, "p") as ws:  # after another graph: re-runs
        next_message(ws)
        _, rerun = _run_case(http, ws, "controlnet_image_96x64_latent_64x64")
    assert rerun["outputs"]["9"] == CHECKS["controlnet_96x64_rerun_outputs"]
    assert output_pixels(sim, rerun["outputs"]["9"]["images"][0]) == wide


def test_loadimage_follows_file_content_like_recording(production_sim: SimulatorServer) -> None:
    """Before and after an overwrite=true upload the same prompt re-runs LoadImage;
    unchanged, it is fully cached (fact 12, checks.json loadimage_overwrite_rerun)."""
    check = CHECKS["loadimage_overwrite_rerun"]
    outputs = []
    with client(production_sim) as http, open_ws(production_sim, "p") as ws:
        next_message(ws)
        for upload, case in [("scratch_first", None), ("overwrite_true", "before_overwrite"),
                             ("overwrite_true_back_to_v1", "after_overwrite"),
                             (None, "resubmit_unchanged")]:
            if upload:
                replay_upload(http, f"upload_image_{upload}.json")
            if case:
                frames, entry = _run_case(http, ws, f"loadimage_scratch_{case}")
                trace = _frames_of(f"loadimage_scratch_{case}")
                assert types_collapsed(frames) == types_collapsed(trace[1:]), case
                outputs.append(entry["outputs"]["9"])
    assert outputs == [check["outputs_before"], check["outputs_after_overwrite"],
                       check["outputs_resubmit_unchanged"]]
    inputs = Path(__file__).parent / "recordings" / P / "inputs"
    for saved, source in [(outputs[0], "ep02_sh020_init_v2.png"),
                          (outputs[1], "ep02_sh020_init.png")]:
        with Image.open(inputs / source) as img:
            assert output_pixels(production_sim, saved["images"][0]) == \
                img.convert("RGB").tobytes()


def test_loadimage_of_a_non_image_is_an_execution_error(production_sim: SimulatorServer) -> None:
    runs = _run_chain(production_sim, ["execution_error_loadimage_txt"])
    _, entry = runs["execution_error_loadimage_txt"]
    expected = only_entry(recorded(f"{P}history_execution_error_loadimage_txt.json")
                          ["response"]["body"])
    assert [m[0] for m in entry["status"]["messages"]] == \
        [m[0] for m in expected["status"]["messages"]]
    error, recorded_error = entry["status"]["messages"][-1][1], \
        expected["status"]["messages"][-1][1]
    assert set(error) == set(recorded_error)
    path = production_sim.input_dir.resolve() / "ep02_notes.txt"
    assert error["exception_message"] == f"cannot identify image file '{path}'\n"
    for key in ("node_id", "node_type", "executed", "exception_type", "current_inputs"):
        assert error[key] == recorded_error[key], key
    assert sorted(error["current_outputs"]) == sorted(recorded_error["current_outputs"])
    assert (entry["outputs"], entry["status"]["status_str"]) == ({}, "error")
