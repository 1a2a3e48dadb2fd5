"""A preset with ``on_suspect: rerender`` gets one more take of a shot whose image the
output check flagged, in the same run, at the shot's next noise index."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from flow_helpers import SimFactory

from flows.render_episode import render_episode
from tower.runtime.retakes import suspect_retakes
from tower.shotlist.presets import BUILTIN_PRESETS
from tower.shotlist.shots import Shot, ShotList
from tower.spec.outputs import take_output_path
from tower.spec.takes import resolve_takes
from tower.store.index import OutputIndex

pytestmark = pytest.mark.usefixtures("prefect_backend")


def write(folder: Path, on_suspect: str) -> tuple[Path, Path]:
    presets = folder / f"presets-{on_suspect}.yaml"
    presets.write_text(yaml.safe_dump({"presets": {"draft": {"on_suspect": on_suspect}}}))
    shots = folder / "ep09.yaml"
    shots.write_text(yaml.safe_dump({"episode": "ep09", "shots": [
        {"id": "sh010", "prompt": "Ren in the dark corridor [sim:black@1]", "takes": 3,
         "preset": "draft", "seed": 5},
        {"id": "sh020", "prompt": "Aoi on the rooftop", "takes": 2, "preset": "draft",
         "seed": 6}]}))
    return presets, shots


@pytest.mark.parametrize(("on_suspect", "takes"), [
    ("flag", {("sh010", 0): "ok", ("sh010", 1): "suspect", ("sh010", 2): "ok",
              ("sh020", 0): "ok", ("sh020", 1): "ok"}),
    ("rerender", {("sh010", 0): "ok", ("sh010", 1): "suspect", ("sh010", 2): "ok",
                  ("sh010", 3): "ok", ("sh020", 0): "ok", ("sh020", 1): "ok"}),
])
def test_a_suspect_image_is_flagged_or_rerendered_once_as_the_preset_says(
        tmp_path: Path, sims: SimFactory, on_suspect: str, takes: dict) -> None:
    sim = sims("retake")
    presets, shots = write(tmp_path, on_suspect)
    data = tmp_path / "data"
    state = render_episode(shot_list=str(shots), servers=[f"retake={sim.url}"],
                           data_root=str(data), presets_file=str(presets),
                           return_state=True)
    assert state.is_completed(), state.message
    rows = OutputIndex(data / "index").scan().collect()
    assert {(r["shot_id"], r["take"]): r["status"] for r in rows.iter_rows(named=True)} \
        == takes
    for row in rows.iter_rows(named=True):
        assert (data / "renders" / row["output_path"]).stat().st_size == row["size_bytes"]
    assert "1 suspect" in (state.message or "")
    summary = state.result()
    assert len(summary["contact_sheets"]) == 1


def test_retakes_take_the_next_unused_noise_index_of_their_shot_only_when_asked() -> None:
    shot_list = ShotList(episode="ep09", shots=(
        Shot(id="sh010", prompt="a", takes=3, preset="draft", seed=5),
        Shot(id="sh020", prompt="b", takes=2, preset="standard", seed=6)))
    takes = resolve_takes(shot_list)
    presets = {**BUILTIN_PRESETS,
               "draft": BUILTIN_PRESETS["draft"].model_copy(update={"on_suspect": "rerender"})}
    renders = Path("/data/renders")
    flagged = {renders / take_output_path(t) for t in takes if t.take in (0, 1)}
    retakes = suspect_retakes(takes, flagged, renders, presets)
    # sh010 t0 and t1 are flagged and rerender: t3 and t4; sh020 only flags.
    assert [(t.shot_id, t.take) for t in retakes] == [("sh010", 3), ("sh010", 4)]
    assert {t.seed for t in retakes} == {5}
    assert len({t.key for t in [*takes, *retakes]}) == len(takes) + 2
    assert suspect_retakes(takes, set(), renders, presets) == []
