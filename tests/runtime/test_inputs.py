"""A run's input images on the servers, and what each server is checked for."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from tower.comfyui import ComfyUIClient
from tower.runtime.inputs import InputChanged, preflight_scope, upload_inputs
from tower.simulator import SimulatorConfig, start_simulator
from tower.spec.parts import InputImage, LoraSpec
from tower.spec.takes import ResolvedTake

TAKE = ResolvedTake(episode="ep02", shot_id="sh010", take=0, prompt="x", negative="", seed=1,
                    preset="draft", checkpoint="a.safetensors", sampler="euler",
                    scheduler="normal", steps=2, cfg=5.0, width=64, height=64)


def _image(path: Path, colour: tuple[int, int, int]) -> InputImage:
    Image.new("RGB", (64, 64), colour).save(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return InputImage(str(path), digest, 64, 64)


def test_each_server_is_checked_for_the_takes_its_files_allow():
    lora = replace(TAKE, shot_id="sh020", loras=(LoraSpec("aoi.safetensors"),))
    full = {"checkpoints": frozenset({"a.safetensors"}), "loras": frozenset({"aoi.safetensors"})}
    bare = {"checkpoints": frozenset({"a.safetensors"}), "loras": frozenset()}
    empty = {"checkpoints": frozenset()}
    own, skipped = preflight_scope([TAKE, lora], ["full", "bare", "empty", "unknown"],
                                   {"full": full, "bare": bare, "empty": empty})
    assert own == {"full": [TAKE, lora], "bare": [TAKE], "empty": [], "unknown": [TAKE, lora]}
    assert skipped == ["empty gets none of these takes: it lacks checkpoints/a.safetensors, "
                       "loras/aoi.safetensors"]


@pytest.fixture
def client(tmp_path):
    server = start_simulator(SimulatorConfig(output_dir=tmp_path / "out"))
    with ComfyUIClient(server.url) as comfy:
        yield comfy, server
    server.stop()


def test_images_go_up_once_under_their_content_names(tmp_path, client):
    comfy, server = client
    red = _image(tmp_path / "red.png", (255, 0, 0))
    blue = _image(tmp_path / "blue.png", (0, 0, 255))
    assert upload_inputs(comfy, [red, blue, red]) == [red.upload_name, blue.upload_name]
    assert upload_inputs(comfy, [red, blue]) == []
    stored = server.input_dir / red.upload_name
    assert stored.read_bytes() == Path(red.path).read_bytes()


def test_a_file_changed_since_planning_is_not_uploaded(tmp_path, client):
    comfy, server = client
    planned = _image(tmp_path / "layout.png", (255, 0, 0))
    _image(tmp_path / "layout.png", (0, 255, 0))  # edited after the list was read
    with pytest.raises(InputChanged, match="changed since the shot list was read"):
        upload_inputs(comfy, [planned])
    assert not (server.input_dir / planned.upload_name).exists()
