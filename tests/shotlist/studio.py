"""A studio's folder for the production-vocabulary tests: a cast file, images, lists.

Real files only: the images are PNGs written with Pillow, the lists are written as
the team would write them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tower.shotlist.errors import InputError
from tower.shotlist.shots import load_shot_list

CONTROL_MODEL = "layout-lineart-sd15.safetensors"

CAST = """\
characters:
  aoi:
    lora: char-aoi-v3.safetensors
    strength: 0.8
    trigger: "aoi, blue hair, school uniform"
  ren:
    lora: char-ren-v2.safetensors
    strength_model: 0.7
    strength_clip: 0.6
    trigger: [ren, red scarf, school uniform]
"""

LIST_YAML = f"""\
episode: ep01
include: characters.yaml
defaults:
  control_model: {CONTROL_MODEL}
shots:
  - id: sh010
    prompt: rooftop at dusk
    characters: [aoi, ren]
    takes: 2
  - id: sh020
    prompt: corridor
    characters: [ren]
    layout: {{image: layouts/sh020.png, denoise: 0.5}}
  - id: sh030
    prompt: bridge
    control: {{image: lineart/sh030.png, strength: 0.9, start: 0.1, end: 0.8}}
  - id: sh040
    prompt: plain street
"""

LIST_CSV = f"""\
episode,include,id,prompt,takes,characters,layout,layout_denoise,control,control_model,\
control_strength,control_start,control_end
ep01,characters.yaml,sh010,rooftop at dusk,2,aoi; ren,,,,,,,
ep01,characters.yaml,sh020,corridor,,ren,layouts/sh020.png,0.5,,,,,
ep01,characters.yaml,sh030,bridge,,,,,lineart/sh030.png,{CONTROL_MODEL},0.9,0.1,0.8
ep01,characters.yaml,sh040,plain street,,,,,,,,,
"""

LIST_JSON: dict[str, Any] = {
    "episode": "ep01", "include": ["characters.yaml"],
    "defaults": {"control_model": CONTROL_MODEL},
    "shots": [
        {"id": "sh010", "prompt": "rooftop at dusk", "characters": ["aoi", "ren"], "takes": 2},
        {"id": "sh020", "prompt": "corridor", "characters": ["ren"],
         "layout": {"image": "layouts/sh020.png", "denoise": 0.5}},
        {"id": "sh030", "prompt": "bridge",
         "control": {"image": "lineart/sh030.png", "strength": 0.9, "start": 0.1, "end": 0.8}},
        {"id": "sh040", "prompt": "plain street"},
    ],
}


def write_png(path: Path, size: tuple[int, int] = (768, 768), colour: str = "white") -> Path:
    """A real PNG of ``size`` at ``path`` (folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def studio(folder: Path) -> Path:
    """The cast, the images and the list as YAML, JSON and CSV under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "characters.yaml").write_text(CAST)
    write_png(folder / "layouts" / "sh020.png")
    write_png(folder / "lineart" / "sh030.png", colour="black")
    (folder / "ep.yaml").write_text(LIST_YAML)
    (folder / "ep.json").write_text(json.dumps(LIST_JSON, indent=1))
    (folder / "ep.csv").write_text(LIST_CSV)
    return folder


def problems_of(path: Path, load: Any = load_shot_list) -> list[str]:
    """The problems ``load(path)`` reports, each without the folder ``path`` is in."""
    with pytest.raises(InputError) as caught:
        load(path)
    return [str(p).removeprefix(f"{path.parent}/") for p in caught.value.problems]
