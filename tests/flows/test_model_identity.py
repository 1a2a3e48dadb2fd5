"""Model identity in render keys, end to end: real simulators over loopback, real Prefect.

A checkpoint changed under the same name (its metadata header replaced on the simulator,
as copying a retrained file over the old one would) re-renders exactly the takes that
use it; a presets file's revision bump does the same; two servers holding different
files under one name refuse the run, naming both; rows indexed before identity still
dedup after the upgrade, once.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import yaml
from flow_helpers import SimFactory

from flows.render_episode import render_episode
from tower.store.files import DataRoot
from tower.store.index import OutputIndex

pytestmark = pytest.mark.usefixtures("prefect_backend")

FINAL = "anime-final-sd15.safetensors"
DRAFT = "anime-draft-sd15.safetensors"


def shot_list(folder: Path) -> Path:
    """Two draft shots and two standard shots (two checkpoints), one take each."""
    shots = [{"id": f"sh{n}0", "prompt": f"lantern street {n}",
              "preset": "draft" if n < 3 else "standard"} for n in range(1, 5)]
    data = {"episode": "ep07", "defaults": {"takes": 1, "negative": "lowres"},
            "shots": shots}
    path = folder / "ep07.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def small_presets(folder: Path, revision: str | None = None) -> Path:
    data: dict = {"presets": {"standard": {"width": 512, "height": 512, "steps": 4},
                              "draft": {"steps": 4}}}
    if revision:
        data["models"] = {FINAL: {"revision": revision}}
    path = folder / f"presets-{revision or 'none'}.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def run(tmp_path: Path, servers: list[str], **params: object) -> dict:
    params.setdefault("presets_file", str(small_presets(tmp_path)))
    state = render_episode(shot_list=str(shot_list(tmp_path)), servers=servers, retries=0,
                           data_root=str(tmp_path / "data"), return_state=True, **params)
    return state.result(raise_on_failure=False)


def rows_by_checkpoint(tmp_path: Path) -> dict[str, int]:
    frame = OutputIndex(DataRoot(tmp_path / "data").index).scan().collect()
    return {c: frame.filter(frame["checkpoint"] == c).height for c in (DRAFT, FINAL)}


def set_header(url: str, name: str, header: dict | None) -> None:
    httpx.post(f"{url}/_tower/models", json={name: header}, timeout=10).raise_for_status()


def test_changed_checkpoint_rerenders_exactly_its_takes(tmp_path: Path, sims: SimFactory):
    sim = sims("id-a")
    run(tmp_path, [sim.url])
    assert rows_by_checkpoint(tmp_path) == {DRAFT: 2, FINAL: 2}
    run(tmp_path, [sim.url])  # nothing changed: everything dedups
    assert rows_by_checkpoint(tmp_path) == {DRAFT: 2, FINAL: 2}
    set_header(sim.url, f"checkpoints/{FINAL}", {"note": "retrained", "epoch": "12"})
    run(tmp_path, [sim.url])
    assert rows_by_checkpoint(tmp_path) == {DRAFT: 2, FINAL: 4}
    run(tmp_path, [sim.url])
    assert rows_by_checkpoint(tmp_path) == {DRAFT: 2, FINAL: 4}


def test_revision_bump_rerenders_exactly_its_takes(tmp_path: Path, sims: SimFactory):
    sim = sims("id-r")
    run(tmp_path, [sim.url], presets_file=str(small_presets(tmp_path, "2026-11")))
    run(tmp_path, [sim.url], presets_file=str(small_presets(tmp_path, "2026-11")))
    assert rows_by_checkpoint(tmp_path) == {DRAFT: 2, FINAL: 2}
    run(tmp_path, [sim.url], presets_file=str(small_presets(tmp_path, "2026-12")))
    assert rows_by_checkpoint(tmp_path) == {DRAFT: 2, FINAL: 4}


def test_servers_disagreeing_about_a_file_refuse_the_run(tmp_path: Path, sims: SimFactory):
    a, b = sims("id-x"), sims("id-y")
    set_header(b.url, f"checkpoints/{FINAL}", {"note": "another file, same name"})
    state = render_episode(shot_list=str(shot_list(tmp_path)), servers=[a.url, b.url],
                           retries=0, data_root=str(tmp_path / "data"),
                           presets_file=str(small_presets(tmp_path)), return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception) as raised:
        state.result()
    message = str(raised.value)
    assert f"checkpoints/{FINAL}" in message
    assert "127.0.0.1-" in message and message.count("127.0.0.1-") >= 2
    assert not (tmp_path / "data" / "index").exists() or rows_by_checkpoint(tmp_path) == {
        DRAFT: 0, FINAL: 0}


def test_rows_indexed_before_identity_dedup_once(tmp_path: Path, sims: SimFactory):
    """Rows written with name-based keys (no identity columns), as before the upgrade."""
    sim = sims("id-m")
    run(tmp_path, [sim.url])
    index = OutputIndex(DataRoot(tmp_path / "data").index)
    frame = index.scan().collect()
    legacy = frame.with_columns(render_key=frame["name_key"]).drop(
        ["name_key", "model_identity"])
    for part in index.files():
        Path(part).unlink()
    legacy.write_parquet(Path(index.root) / "part-legacy.parquet")  # the old schema
    assert set(OutputIndex(index.root).scan().collect()["model_identity"]) == {None}
    # The upgrade's first night: all four served; the two takes of the checkpoint with a
    # header get a row recording their identity (the draft checkpoint has no header and
    # no revision, so its takes keep name-based keys and need none).
    result = run(tmp_path, [sim.url])
    assert result["takes_deduped"] == 4
    after = OutputIndex(index.root).scan().collect()
    assert after.height == 6 and after["model_identity"].null_count() == 4
    run(tmp_path, [sim.url])
    assert rows_by_checkpoint(tmp_path) == {DRAFT: 2, FINAL: 4}
    set_header(sim.url, f"checkpoints/{FINAL}", {"note": "retrained"})
    run(tmp_path, [sim.url])  # the old rows are not taken again: exactly FINAL's takes
    assert rows_by_checkpoint(tmp_path) == {DRAFT: 2, FINAL: 6}
