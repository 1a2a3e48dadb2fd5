"""Production graphs end to end: characters, layouts, line art and hires finals.

Each test runs the real flows on simulators over loopback with a small episode
written to a temporary folder: its input images are real PNG files next to the list.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest
import yaml
from flow_helpers import png_files
from PIL import Image
from prefect import get_client

from flows.draft_preview import draft_preview
from flows.render_episode import render_episode
from tower.shotlist.presets import load_presets
from tower.shotlist.shots import load_shot_list
from tower.spec.parts import UPLOAD_PREFIX
from tower.spec.takes import resolve_takes
from tower.store.index import OutputIndex

pytestmark = pytest.mark.usefixtures("prefect_backend")

FAST = {"retries": 0}
PRESETS = {"presets": {
    "tiny": {"extends": "draft", "width": 64, "height": 64, "steps": 2,
             "loras": [{"name": "style-cel-v1.safetensors", "strength": 0.5}]},
    "tiny_final": {"extends": "tiny", "max_batch": 1,
                   "hires": {"scale": 1.5, "denoise": 0.5, "steps": 2},
                   "upscale": {"model": "anime-x2-compact.safetensors", "scale": 2}},
}}
CAST = {"characters": {
    "aoi": {"lora": "char-aoi-v3.safetensors", "strength": 0.8, "trigger": "aoi, blue hair"},
    "ren": {"lora": "char-ren-v2.safetensors", "strength": 0.7, "trigger": ["ren"]},
}}


def _picture(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (64, 64)) -> None:
    image = Image.new("RGB", size, (0, 0, 0))
    image.paste(colour, (8, 8, size[0] - 8, size[1] - 8))
    image.save(path)


def episode(folder: Path) -> tuple[Path, Path]:
    """An episode with every production part, its input images, and its presets file."""
    (folder / "art").mkdir(parents=True, exist_ok=True)
    _picture(folder / "art" / "layout.png", (200, 120, 40))
    _picture(folder / "art" / "lineart.png", (255, 255, 255))
    (folder / "cast.yaml").write_text(yaml.safe_dump(CAST), encoding="utf-8")
    shot_list = {
        "episode": "ep02", "include": ["cast.yaml"],
        "defaults": {"preset": "tiny", "takes": 2, "negative": "lowres"},
        "shots": [
            {"id": "sh010", "prompt": "at the stairs", "characters": ["aoi", "ren"]},
            {"id": "sh020", "prompt": "on the bridge", "characters": ["aoi"],
             "layout": {"image": "art/layout.png", "denoise": 0.6}, "takes": 3},
            {"id": "sh030", "prompt": "the lighthouse",
             "control": {"image": "art/lineart.png",
                         "model": "layout-lineart-sd15.safetensors", "strength": 0.9}},
            {"id": "sh040", "prompt": "at dawn", "characters": ["ren"], "preset": "tiny_final",
             "takes": 1},
        ],
    }
    path = folder / "ep02.yaml"
    path.write_text(yaml.safe_dump(shot_list, sort_keys=False), encoding="utf-8")
    presets = folder / "presets.yaml"
    presets.write_text(yaml.safe_dump(PRESETS, sort_keys=False), encoding="utf-8")
    return path, presets


def render(shot_list: Path, presets: Path, data: Path, servers: list[str], **params):
    state = render_episode(shot_list=str(shot_list), presets_file=str(presets), servers=servers,
                           data_root=str(data), **{**FAST, **params}, return_state=True)
    return state, state.result(raise_on_failure=False)


def prompts_on(url: str) -> list[dict]:
    """Every prompt a simulator ran, from its own history."""
    return list(httpx.get(f"{url}/history", timeout=10).json().values())


def classes_run(url: str) -> set[str]:
    return {node["class_type"] for entry in prompts_on(url)
            for node in entry["prompt"][2].values()}


def uploads_on(sim) -> list[str]:
    """The pipeline's uploads in a simulator's input folder (ComfyUI ships example.png)."""
    return sorted(p.name for p in sim.config.input_dir.iterdir()
                  if p.name.startswith(UPLOAD_PREFIX))


def test_every_part_renders_and_a_rerun_renders_and_uploads_nothing(tmp_path, sims):
    sim = sims("gpu-a")
    shot_list, presets = episode(tmp_path)
    data = tmp_path / "data"
    state, summary = render(shot_list, presets, data, [f"gpu-a={sim.url}"])
    assert state.is_completed(), state.message
    assert summary["takes_rendered"] == 8 and summary["takes_failed"] == 0
    with get_client(sync_client=True) as client:  # named before its presets are read
        name = client.read_flow_run(state.state_details.flow_run_id).name
    assert name.startswith("ep02-nightly-")
    assert {"LoraLoader", "LoadImage", "ImageScale", "VAEEncode", "RepeatLatentBatch",
            "ControlNetLoader", "ControlNetApplyAdvanced", "LatentUpscaleBy",
            "UpscaleModelLoader", "ImageUpscaleWithModel"} <= classes_run(sim.url)
    # The hires final is 64 -> 96 (latent x1.5) -> 192 (x2 model).
    final = [p for p in png_files(data / "renders") if p.parent.name == "sh040"]
    assert [Image.open(p).size for p in final] == [(192, 192)]
    uploaded = uploads_on(sim)
    assert len(uploaded) == 2
    stamps = {n: (sim.config.input_dir / n).stat().st_mtime_ns for n in uploaded}

    state, again = render(shot_list, presets, data, [f"gpu-a={sim.url}"])
    assert state.is_completed(), state.message
    assert again["takes_rendered"] == 0 and again["takes_deduped"] == 8
    assert {n: (sim.config.input_dir / n).stat().st_mtime_ns for n in uploads_on(sim)} == stamps


def test_an_edited_layout_rerenders_only_its_shot(tmp_path, sims):
    sim = sims("gpu-a")
    shot_list, presets = episode(tmp_path)
    data = tmp_path / "data"
    state, _ = render(shot_list, presets, data, [f"gpu-a={sim.url}"])
    assert state.is_completed(), state.message
    before = {p.name for p in png_files(data / "renders")}

    _picture(tmp_path / "art" / "layout.png", (40, 120, 200))
    state, again = render(shot_list, presets, data, [f"gpu-a={sim.url}"])
    assert state.is_completed(), state.message
    assert again["takes_rendered"] == 3 and again["takes_deduped"] == 5
    new = {p.name for p in png_files(data / "renders")} - before
    assert len(new) == 3 and all(name.startswith("sh020_") for name in new)
    assert len(uploads_on(sim)) == 3  # the edited layout went up under its own name


def test_take_identity_holds_for_layouts_and_hires_whatever_the_batch(tmp_path, sims):
    """A layout take and a hires take render the same pixels alone or in a batch.

    Pixels, not file hashes: each PNG also carries its own graph as text.
    """
    sim = sims("gpu-a")
    shot_list, presets = episode(tmp_path)
    hashes = []
    for max_batch in (4, 1):
        edited = yaml.safe_load(presets.read_text())
        edited["presets"]["tiny"]["max_batch"] = max_batch
        edited["presets"]["tiny_final"]["max_batch"] = max_batch
        presets.write_text(yaml.safe_dump(edited), encoding="utf-8")
        data = tmp_path / f"data-{max_batch}"
        state, _ = render(shot_list, presets, data, [f"gpu-a={sim.url}"],
                          shots=["sh020", "sh040"])
        assert state.is_completed(), state.message
        rows = OutputIndex(data / "index").scan().collect().sort(["shot_id", "take"])
        hashes.append([(shot, take, key, _pixels(data / "renders" / path))
                       for shot, take, key, path in rows.select(
                           "shot_id", "take", "render_key", "output_path").rows()])
    assert hashes[0] == hashes[1]
    assert len({pixels for *_, pixels in hashes[0]}) == 4  # and every take differs


def _pixels(path: Path) -> str:
    return hashlib.sha256(Image.open(path).convert("RGB").tobytes()).hexdigest()


def test_batches_go_only_where_their_models_are(tmp_path, sims):
    full = sims("full")
    bare = sims("bare", loras=("style-cel-v1.safetensors",), controlnets=(),
                upscale_models=())
    shot_list, presets = episode(tmp_path)
    data = tmp_path / "data"
    state, summary = render(shot_list, presets, data,
                            [f"full={full.url}", f"bare={bare.url}"])
    assert state.is_completed(), state.message
    assert summary["takes_rendered"] == 8
    # Every shot needs a character LoRA, a ControlNet or the upscale model: none fits "bare".
    assert prompts_on(bare.url) == []
    assert uploads_on(bare) == []


def test_a_model_no_server_has_fails_before_anything_is_queued(tmp_path, sims):
    a = sims("gpu-a", loras=("style-cel-v1.safetensors", "char-aoi-v3.safetensors"))
    b = sims("gpu-b", loras=("style-cel-v1.safetensors",))
    shot_list, presets = episode(tmp_path)
    state, _ = render(shot_list, presets, tmp_path / "data", [f"gpu-a={a.url}", f"gpu-b={b.url}"])
    assert state.is_failed()
    message = str(state.message) + repr(state.result(raise_on_failure=False))
    assert "char-ren-v2.safetensors" in message
    assert "gpu-a" in message and "gpu-b" in message
    assert prompts_on(a.url) == [] and prompts_on(b.url) == []
    assert uploads_on(a) == [] and uploads_on(b) == []


def test_a_preview_renders_a_layout_shot(tmp_path, sims):
    sim = sims("front")
    shot_list, presets = episode(tmp_path)
    state = draft_preview(shot_list=str(shot_list), shots=["sh020"], presets_file=str(presets),
                          servers=[sim.url], data_root=str(tmp_path / "data"), retries=0,
                          return_state=True)
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary["takes_rendered"] == 3
    assert "LoadImage" in classes_run(sim.url)


def test_the_keys_follow_the_image_content_not_its_path(tmp_path):
    shot_list, presets = episode(tmp_path)
    catalog = load_presets(presets)
    before = [t.key for t in resolve_takes(load_shot_list(shot_list, catalog), catalog)]
    (tmp_path / "art" / "layout.png").rename(tmp_path / "art" / "moved.png")
    text = shot_list.read_text().replace("art/layout.png", "art/moved.png")
    shot_list.write_text(text, encoding="utf-8")
    after = [t.key for t in resolve_takes(load_shot_list(shot_list, catalog), catalog)]
    assert before == after


def test_a_missing_layout_fails_the_night_naming_file_line_and_field(tmp_path, sims):
    sim = sims("gpu-a")
    shot_list, presets = episode(tmp_path)
    (tmp_path / "art" / "layout.png").unlink()
    state, _ = render(shot_list, presets, tmp_path / "data", [f"gpu-a={sim.url}"])
    assert state.is_failed()
    line = next(number for number, text in enumerate(shot_list.read_text().splitlines(), 1)
                if "art/layout.png" in text)
    assert f"ep02.yaml:{line}" in state.message and "layout" in state.message
    assert "layout.png" in state.message
    assert prompts_on(sim.url) == [] and uploads_on(sim) == []
