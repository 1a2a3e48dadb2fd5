from __future__ import annotations

from pathlib import Path

import pytest

from tower.index import collapse_duplicates
from tower.outputs import shared_images, take_output_path
from tower.shots import Shot, ShotList, load_shot_list
from tower.storage import DataRoot
from tower.takes import resolve_takes

DEMO_LIST = Path(__file__).resolve().parents[1] / "shot_lists" / "ep01_demo.yaml"
SHOTS = ShotList(episode="ep01", shots=(
    Shot(id="sh030", prompt="Aoi on the rope bridge", takes=12, preset="high"),
    Shot(id="sh031", prompt="Aoi on the rope bridge", takes=1, preset="high"),
))


@pytest.mark.parametrize(("index", "expected_prefix"), [
    (0, "ep01/sh030/sh030_t00_"),
    (11, "ep01/sh030/sh030_t11_"),
    (12, "ep01/sh031/sh031_t00_"),
])
def test_path_names_episode_shot_take_and_key(index, expected_prefix):
    take = resolve_takes(SHOTS)[index]
    path = take_output_path(take)
    assert path == f"{expected_prefix}{take.key[:12]}.png"
    assert DataRoot().inside(path)  # never escapes the render root


def test_other_settings_of_the_same_take_get_their_own_file():
    take = resolve_takes(SHOTS)[0]
    other_preset = resolve_takes(SHOTS, preset_override="draft")[0]
    tiled = take.with_tiled_decode(512)
    paths = {take_output_path(t) for t in (take, other_preset, tiled)}
    assert len(paths) == 3
    assert take_output_path(take) == take_output_path(resolve_takes(SHOTS)[0])  # stable


def test_shared_images_show_the_rendered_twin_once_it_exists(tmp_path: Path) -> None:
    pairs = collapse_duplicates(resolve_takes(load_shot_list(DEMO_LIST))).same_as
    assert pairs, "the demo list has shots sharing an image"
    assert shared_images(pairs, tmp_path) == []  # nothing rendered yet: nothing shown
    dup, twin = pairs[0]
    path = tmp_path / take_output_path(twin)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"png")
    assert shared_images(pairs, tmp_path) == [
        (f"{dup.shot_id} t{dup.take}={twin.shot_id}", path)]
