from __future__ import annotations

from pathlib import Path

import pytest
from paths import DEMO_SHOT_LIST

from tower.shotlist.shots import Shot, ShotList, load_shot_list
from tower.spec.outputs import sheet_items, take_output_path
from tower.spec.takes import resolve_takes
from tower.store.files import DataRoot
from tower.store.index import collapse_duplicates

DEMO_LIST = DEMO_SHOT_LIST
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



def test_sheet_shows_every_take_in_list_order_with_shared_and_indexed_images(tmp_path: Path):
    takes = resolve_takes(load_shot_list(DEMO_LIST))
    dedup = collapse_duplicates(takes)
    dup, twin = dedup.same_as[0]
    before = sheet_items(takes, tmp_path, dedup.served_paths())   # nothing rendered yet
    assert [(i.path, i.status) for i in before] == [(None, "failed")] * len(takes)
    for take in dedup.to_render[:-1]:  # the last take "failed": a tile saying so
        path = tmp_path / take_output_path(take)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"png")
    items = sheet_items(takes, tmp_path, dedup.served_paths(), suspect={takes[0].key})
    assert [i.label.split(" =")[0] for i in items] == [f"{t.shot_id} t{t.take}" for t in takes]
    assert [i.shot for i in items] == [t.shot_id for t in takes]
    lost = dedup.to_render[-1]
    assert {i.label for i in items if i.status == "failed"} == {f"{lost.shot_id} t{lost.take}"}
    assert items[0].status == "suspect" and items[0].path is not None
    shown = {i.label: i.path for i in items}
    assert shown[f"{dup.shot_id} t{dup.take} ={twin.shot_id}"] == \
        tmp_path / take_output_path(twin)
    cancelled = sheet_items(takes, tmp_path, dedup.served_paths(), missing="cancelled")
    assert {i.status for i in cancelled} == {"ok", "cancelled"}
