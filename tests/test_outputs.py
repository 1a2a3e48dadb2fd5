from __future__ import annotations

import pytest

from tower.outputs import take_output_path
from tower.shots import Shot, ShotList
from tower.storage import DataRoot
from tower.takes import resolve_takes

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
