"""The README's section on characters, layouts, line art and hires passes is true."""

from __future__ import annotations

import re
from pathlib import Path

from paths import REPO
from studio import problems_of, write_png

from tower.shotlist.presets import load_presets
from tower.shotlist.shots import CSV_COLUMNS, CSV_PARTS, load_shot_list
from tower.spec.parts import LoraSpec
from tower.spec.takes import resolve_takes

TITLE = "## Characters, layouts, line art and hires passes\n"


def _section() -> str:
    readme = (REPO / "README.md").read_text()
    start = readme.index(TITLE)
    end = readme.find("\n## ", start + len(TITLE))
    return readme[start:end if end > 0 else None]


def _blocks() -> tuple[str, str, str]:
    """The example list, the included cast file and the presets, as the README shows them."""
    blocks = re.findall(r"```yaml\n(.*?)```", _section(), re.S)
    shot_list = next(b for b in blocks if "shots:" in b)
    cast = next(b for b in blocks if b.startswith("characters:"))
    presets = next(b for b in blocks if b.startswith("presets:"))
    return shot_list, cast, presets


def _write(folder: Path) -> Path:
    shot_list, cast, presets = _blocks()
    (folder / "characters.yaml").write_text(cast)
    (folder / "presets.yaml").write_text(presets)
    write_png(folder / "layouts" / "sh020.png")
    write_png(folder / "lineart" / "sh030.png", colour="black")
    path = folder / "ep02.yaml"
    path.write_text(shot_list)
    return path


def test_the_example_loads_and_resolves_as_described(tmp_path: Path) -> None:
    path = _write(tmp_path)
    presets = load_presets(tmp_path / "presets.yaml")
    takes = resolve_takes(load_shot_list(path, presets), presets)
    first, layout, control = takes
    assert first.loras == (LoraSpec("char-aoi-v3.safetensors", 0.8, 0.8),
                           LoraSpec("char-mio-v1.safetensors", 0.9, 0.9))
    assert first.prompt == ("anime key visual, cel shading, aoi, short blue hair, mio, "
                            "silver braid, Aoi and Mio at the foot of the lighthouse stairs, "
                            "evening")
    assert (layout.parts, layout.denoise) == ("lora+img2img", 0.6)
    assert control.parts == "lora+control+hires+upscale"
    assert control.loras == (LoraSpec("style-cel-v1.safetensors", 0.5, 0.5),)
    assert control.output_size == (2304, 2304)


def test_the_example_error_is_the_one_the_loader_reports(tmp_path: Path) -> None:
    path = _write(tmp_path)
    (tmp_path / "layouts" / "sh020.png").unlink()
    [shown] = re.findall(r"`(ep02\.yaml:\d+ shot sh020: layout\.image: missing file)\s+"
                         r"/studio/ep02/(layouts/sh020\.png)`", _section())
    assert problems_of(path, lambda p: load_shot_list(p, load_presets(tmp_path / "presets.yaml"))
                       ) == [f"{shown[0]} {tmp_path}/{shown[1]}"]


def test_every_csv_column_the_loader_knows_is_documented() -> None:
    section = _section()
    for column in [*CSV_PARTS, "characters", "include"]:
        assert column in CSV_COLUMNS and f"`{column}`" in section, column
