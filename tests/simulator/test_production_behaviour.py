"""Simulator behaviour with production graphs, over loopback: the node cache follows an
uploaded file's content, LoRA strengths and ControlNet settings decide the pixels, a
take keeps its pixels in any batch through a hires pass, and the folders a server keeps."""

from __future__ import annotations

import copy
import io
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from simulator_helpers import (
    client,
    collect_until_done,
    next_message,
    open_ws,
    output_pixels,
    png,
    recorded,
    submit,
    upload,
    wait_history,
)

from tower.simulator import SimulatorConfig, SimulatorServer, start_simulator

RED, BLUE = png((200, 30, 30)), png((30, 30, 200))


def _graph(case: str, prefix: str = "ep02/test", **edits: dict[str, Any]) -> dict[str, Any]:
    """A recorded production graph, with some nodes' inputs changed."""
    graph = copy.deepcopy(recorded(f"production/post_prompt_{case}.json")["request"]["json"]
                          ["prompt"])
    graph["9"]["inputs"]["filename_prefix"] = prefix
    for node, inputs in edits.items():
        graph[node]["inputs"].update(inputs)
    return graph


def _render(sim: SimulatorServer, http: httpx.Client, graph: dict[str, Any]) -> list[bytes]:
    entry = wait_history(http, submit(http, graph)["prompt_id"])
    assert entry["status"]["status_str"] == "success", entry["status"]
    return [output_pixels(sim, image) for image in entry["outputs"]["9"]["images"]]


def test_load_image_reruns_when_the_uploaded_file_changes(simulator: SimulatorServer) -> None:
    graph = _graph("img2img_latent_from_batch", **{"10": {"image": "shot.png"}})
    runs = []
    with client(simulator) as http, open_ws(simulator, "c") as ws:
        next_message(ws)
        for data, overwrite in [(RED, "false"), (BLUE, "true"), (RED, "1"), (None, None)]:
            if data is not None:
                reply = upload(http, "shot.png", data, overwrite=overwrite).json()
                assert reply == {"name": "shot.png", "subfolder": "", "type": "input"}
            body = submit(http, copy.deepcopy(graph), client_id="c")
            frames = collect_until_done(ws, body["prompt_id"])
            entry = wait_history(http, body["prompt_id"])
            ran = [f["data"]["node"] for f in frames if f["type"] == "executing"][:-1]
            runs.append((ran, output_pixels(simulator, entry["outputs"]["9"]["images"][0])))
    (_, red), (second, blue), (third, red_again), (fourth, cached) = runs
    assert {"10", "11", "12", "13", "3", "8", "9"} <= set(second) and set(third) == set(second)
    assert fourth == []  # unchanged file: everything cached
    assert red != blue and red_again == red and cached == red


@pytest.mark.parametrize(("first", "second", "same"), [
    ((0.0, 0.0), None, True),  # both strengths 0 on a loader: no LoRA (fact 24)
    ((0.8, 0.8), None, False),
    ((0.8, 0.8), (0.0, 0.0), False),
    ((0.0, 0.8), (0.0, 0.0), False),  # the CLIP side alone still changes the prompt
])
def test_lora_strengths_against_no_lora(simulator: SimulatorServer, first: tuple[float, float],
                                        second: tuple[float, float] | None, same: bool) -> None:
    second = second or first
    lora = _graph("lora_chain_b2", **{
        "10": {"strength_model": first[0], "strength_clip": first[1]},
        "11": {"strength_model": second[0], "strength_clip": second[1]}})
    with client(simulator) as http:
        with_lora = _render(simulator, http, lora)
        without = _render(simulator, http, _graph("txt2img_no_lora_b2"))
    assert (with_lora == without) is same


def test_every_lora_strength_gives_other_pixels(simulator: SimulatorServer) -> None:
    strengths = [(0.8, 0.8), (0.7, 0.8), (0.8, 0.7), (-0.8, 0.8), (0.8, 0.0)]
    with client(simulator) as http:
        images = [_render(simulator, http, _graph("lora_chain_b2", **{
            "10": {"strength_model": m, "strength_clip": c}}))[0] for m, c in strengths]
        again = _render(simulator, http, _graph("lora_chain_b2", prefix="ep02/again"))[0]
    assert len(set(images)) == len(strengths)
    assert again == images[0]  # same inputs, same pixels


def test_a_take_keeps_its_pixels_in_any_batch(simulator: SimulatorServer) -> None:
    """LoRA + ControlNet + hires + upscale model: image k of a batch of 3 equals the
    same graph rendering only index k (LatentFromBatch), whatever the batch."""
    with client(simulator) as http:
        upload(http, "hint.png", png((255, 255, 255), (96, 64)))
        graph = _graph("hires_plus_model_upscale", **{"5": {"batch_size": 3}})
        graph["20"] = {"class_type": "LoraLoaderModelOnly", "inputs": {
            "model": ["4", 0], "lora_name": "char-aoi-v3.safetensors", "strength_model": 0.6}}
        for sampler in ("3", "11"):
            graph[sampler]["inputs"]["model"] = ["20", 0]
        graph["21"] = {"class_type": "LoadImage", "inputs": {"image": "hint.png"}}
        graph["22"] = {"class_type": "ControlNetLoader", "inputs": {
            "control_net_name": "layout-lineart-sd15.safetensors"}}
        graph["23"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": ["6", 0], "negative": ["7", 0], "control_net": ["22", 0],
            "image": ["21", 0], "strength": 0.9, "start_percent": 0.0, "end_percent": 1.0}}
        graph["3"]["inputs"].update(positive=["23", 0], negative=["23", 1])
        batch = _render(simulator, http, graph)
        for k in (2, 0):
            single = copy.deepcopy(graph)
            single["24"] = {"class_type": "LatentFromBatch", "inputs": {
                "samples": ["5", 0], "batch_index": k, "length": 1}}
            single["3"]["inputs"]["latent_image"] = ["24", 0]
            assert _render(simulator, http, single) == [batch[k]], k
    assert len(set(batch)) == 3


def test_image_scale_center_crop_equals_a_precropped_upload(simulator: SimulatorServer) -> None:
    wide = Image.linear_gradient("L").resize((96, 64)).convert("RGB")
    wide.save(simulator.input_dir / "x.png")
    wide.crop((16, 0, 80, 64)).save(simulator.input_dir / "y.png")
    scaled = {"10": {"class_type": "LoadImage", "inputs": {"image": "x.png"}},
              "11": {"class_type": "ImageScale", "inputs": {
                  "image": ["10", 0], "upscale_method": "nearest-exact", "width": 64,
                  "height": 64, "crop": "center"}},
              "9": {"class_type": "SaveImage", "inputs": {"images": ["11", 0],
                                                          "filename_prefix": "a"}}}
    plain = {"10": {"class_type": "LoadImage", "inputs": {"image": "y.png"}},
             "9": {"class_type": "SaveImage", "inputs": {"images": ["10", 0],
                                                         "filename_prefix": "b"}}}
    with client(simulator) as http:
        assert _render(simulator, http, scaled) == _render(simulator, http, plain)


def test_controlnet_settings_change_the_pixels(simulator: SimulatorServer) -> None:
    with client(simulator) as http:
        upload(http, "ep02_sh030_lineart.png", png((255, 255, 255)))
        base = _render(simulator, http, _graph("txt2img_no_controlnet"))
        variants = [_render(simulator, http, _graph("controlnet", **{"12": edit}))
                    for edit in ({}, {"strength": 0.5}, {"end_percent": 0.5},
                                 {"start_percent": 0.2}, {"strength": 0.0})]
    assert variants[-1] == base  # strength 0: ControlNetApplyAdvanced passes through
    assert len({v[0] for v in variants[:-1]} | {base[0]}) == 5


def test_vae_encode_crops_to_a_multiple_of_8(simulator: SimulatorServer) -> None:
    with client(simulator) as http:
        upload(http, "odd.png", png((10, 200, 10), (70, 77)))
        entry = wait_history(http, submit(http, _graph(
            "img2img_latent_from_batch", **{"10": {"image": "odd.png"}}))["prompt_id"])
    image = entry["outputs"]["9"]["images"][0]
    with Image.open(simulator.output_dir / image["subfolder"] / image["filename"]) as img:
        assert img.size == (64, 72)


@pytest.mark.parametrize(("upload_type", "name", "ok"), [
    ("temp", "t.png [temp]", True), ("input", "t.png [input]", True),
    ("output", "t.png [output]", True), ("input", "t.png [temp]", False),
    ("input", "t.png", True), ("temp", "t.png", False),
])
def test_load_image_annotated_names(simulator: SimulatorServer, upload_type: str, name: str,
                                    ok: bool) -> None:
    graph = {"10": {"class_type": "LoadImage", "inputs": {"image": name}},
             "9": {"class_type": "SaveImage", "inputs": {"images": ["10", 0],
                                                         "filename_prefix": "t"}}}
    with client(simulator) as http:
        upload(http, "t.png", RED, type=upload_type)
        response = http.post("/prompt", json={"prompt": graph})
        assert (response.status_code == 200) is ok
        if ok:
            entry = wait_history(http, response.json()["prompt_id"])
            with Image.open(io.BytesIO(RED)) as red:
                assert output_pixels(simulator, entry["outputs"]["9"]["images"][0]) == \
                    red.convert("RGB").tobytes()
    if not ok:
        error = response.json()["node_errors"]["10"]["errors"][0]
        assert error == {"type": "custom_validation_failed",
                         "message": "Custom validation failed for node",
                         "details": f"image - Invalid image file: {name}",
                         "extra_info": {"input_name": "image"}}


def test_a_non_image_named_png_fails_when_it_runs(simulator: SimulatorServer) -> None:
    graph = {"10": {"class_type": "LoadImage", "inputs": {"image": "fake.png"}},
             "9": {"class_type": "SaveImage", "inputs": {"images": ["10", 0],
                                                         "filename_prefix": "f"}}}
    with client(simulator) as http:
        assert upload(http, "fake.png", b"not an image").status_code == 200
        entry = wait_history(http, submit(http, graph)["prompt_id"])
    event, data = entry["status"]["messages"][-1]
    assert (event, data["exception_type"]) == ("execution_error", "PIL.UnidentifiedImageError")


def test_default_models_and_metadata(tmp_path: Path) -> None:
    config = SimulatorConfig(time_scale=0, output_dir=tmp_path / "out",
                             model_metadata={"loras/char-ren-v2.safetensors": {"b": "2", "a": "1"}})
    with start_simulator(config) as sim, client(sim) as http:
        loras = http.get("/models/loras").json()
        info = http.get("/object_info/LoraLoader").json()["LoraLoader"]
        ren = http.get("/view_metadata/loras", params={"filename": "char-ren-v2.safetensors"})
        aoi = http.get("/view_metadata/loras", params={"filename": "char-aoi-v3.safetensors"})
        empty = http.get("/models/vae").json()
    assert loras == ["char-aoi-v3.safetensors", "char-ren-v2.safetensors",
                     "style-cel-v1.safetensors"]
    assert info["input"]["required"]["lora_name"][0] == loras
    assert ren.text == '{"b": "2", "a": "1"}'  # the given order
    assert (aoi.status_code, aoi.content, empty) == (404, b"", [])


def test_a_model_header_can_be_replaced_or_removed_as_a_copied_file_would(
        tmp_path: Path) -> None:
    config = SimulatorConfig(time_scale=0, output_dir=tmp_path / "out")
    with start_simulator(config) as sim, client(sim) as http:
        view = {"params": {"filename": "anime-final-sd15.safetensors"}}
        before = http.get("/view_metadata/checkpoints", **view).json()
        served = http.post("/_tower/models", json={
            "checkpoints/anime-final-sd15.safetensors": {"epoch": 12}}).json()
        after = http.get("/view_metadata/checkpoints", **view)
        http.post("/_tower/models", json={"checkpoints/anime-final-sd15.safetensors": None})
        gone = http.get("/view_metadata/checkpoints", **view)
        bad = http.post("/_tower/models", json={"checkpoints/x.safetensors": "text"})
    assert before and before != {"epoch": "12"}
    assert after.json() == {"epoch": "12"} == served["checkpoints/anime-final-sd15.safetensors"]
    assert (gone.status_code, gone.content) == (404, b"")      # like a file without a header
    assert bad.status_code == 400 and "header object or null" in bad.json()["error"]


def test_folders_beside_the_output_or_in_the_temp_folder(tmp_path: Path) -> None:
    with start_simulator(SimulatorConfig(time_scale=0, output_dir=tmp_path / "out")) as sim:
        assert sim.input_dir == sim.config.input_dir == tmp_path / "out-input"
        assert sorted(p.name for p in sim.input_dir.iterdir()) == ["example.png"]
    assert (tmp_path / "out-input" / "example.png").is_file()  # kept: not a temp folder
    config = SimulatorConfig(time_scale=0, output_dir=tmp_path / "out",
                             input_dir=tmp_path / "refs")
    with start_simulator(config) as sim, client(sim) as http:
        upload(http, "r.png", RED)
        assert (tmp_path / "refs" / "r.png").read_bytes() == RED
    with start_simulator(SimulatorConfig(time_scale=0)) as sim:
        temp_input, temp_output = sim.input_dir, sim.output_dir
        assert temp_input.is_dir() and temp_output.is_dir()
    assert not temp_input.exists() and not temp_output.exists()


def test_httpx_file_uploads_are_read(simulator: SimulatorServer) -> None:
    """A client using httpx's own multipart encoder (it sends ``"`` as ``%22``, which the
    server keeps, as aiohttp does) gets its file stored and served back."""
    with client(simulator) as http:
        reply = http.post("/upload/image", files={"image": ('a "b".png', RED, "image/png")},
                          data={"subfolder": "ep02", "overwrite": "true"})
        served = http.get("/view", params={"filename": "a %22b%22.png", "subfolder": "ep02",
                                           "type": "input"})
    assert reply.json() == {"name": "a %22b%22.png", "subfolder": "ep02", "type": "input"}
    assert (served.content, served.headers["content-type"]) == (RED, "image/png")
