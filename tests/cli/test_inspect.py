"""``tower inspect``: an image's provenance, and whether the index agrees with the file."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image
from typer.testing import CliRunner

from tower.cli import app
from tower.comfyui import ComfyUIClient
from tower.planning.planner import RenderBatch, batch_id_for
from tower.runtime.execute import RenderContext, execute_batch
from tower.runtime.provenance import read_chunks, stamp
from tower.shotlist.shots import Shot, ShotList
from tower.spec.takes import resolve_takes
from tower.store.files import DataRoot
from tower.store.index import OutputIndex
from tower.store.metrics import MetricsStore

runner = CliRunner()


@pytest.fixture
def stored(simulator, tmp_path):
    """A data root holding one rendered batch of two takes (take 1 rendered black)."""
    root = DataRoot(tmp_path / "data")
    ctx = RenderContext(data_root=root, index=OutputIndex(root.index),
                        metrics=MetricsStore(root.metrics), run_id="run-7")
    takes = resolve_takes(ShotList(episode="ep01", shots=(
        Shot(id="sh010", prompt="Aoi at the window [sim:black@1]", takes=2, preset="draft",
             seed=3),)))
    batch = RenderBatch(batch_id=batch_id_for(takes), server="sim", takes=tuple(takes),
                        vram_estimate_mb=2048.0, est_seconds=4.0)
    with ComfyUIClient(simulator.url, name="sim-a") as client:
        outcome = execute_batch(client, batch, ctx)
    return root, outcome


def inspect(*args: str):
    return runner.invoke(app, ["inspect", *args])


def test_a_stored_image_shows_its_provenance_and_the_index_agrees(stored):
    root, outcome = stored
    result = inspect(str(outcome.images[0]), "--data-root", str(root.root))
    assert result.exit_code == 0, result.output
    assert "render_key" in result.output and outcome.index_rows[0].render_key in result.output
    assert "run_id" in result.output and "run-7" in result.output
    assert "other text chunks: prompt" in result.output
    assert "output check: ok" in result.output
    assert result.output.rstrip().endswith("the index agrees: sha256 and path match")


def test_json_names_the_suspect_verdict(stored):
    root, outcome = stored
    result = inspect(str(outcome.images[1]), "--data-root", str(root.root), "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["provenance"]["take"] == "1" and shown["provenance"]["server"] == "sim-a"
    assert shown["index"]["agrees"] is True
    assert shown["index"]["row"]["status"] == "suspect"
    assert shown["sha256"] == outcome.index_rows[1].sha256


def test_a_copy_elsewhere_agrees_by_sha256(stored, tmp_path):
    root, outcome = stored
    copy = tmp_path / "review" / "pick.png"
    copy.parent.mkdir()
    shutil.copy(outcome.images[0], copy)
    result = inspect(str(copy), "--data-root", str(root.root))
    assert result.exit_code == 0, result.output
    assert "(a copy of ep01/sh010/" in result.output


def test_an_edited_file_or_another_data_root_disagrees(stored, tmp_path):
    root, outcome = stored
    edited = tmp_path / "edited.png"
    data = outcome.images[0].read_bytes()
    edited.write_bytes(stamp(data, read_chunks(outcome.images[0]).provenance
                             | {"run_id": "run-8"}))  # a sound PNG, other bytes
    result = inspect(str(edited), "--data-root", str(root.root))
    assert result.exit_code == 1
    assert "the index's row has sha256" in result.output
    edited.write_bytes(data.replace(b"run-7", b"run-8"))  # edited without fixing the CRC
    result = inspect(str(edited), "--data-root", str(root.root))
    assert result.exit_code == 1 and f"{edited}: chunk b'iTXt'" in result.output
    assert "bad CRC" in result.output
    result = inspect(str(outcome.images[0]), "--data-root", str(tmp_path / "elsewhere"))
    assert result.exit_code == 1 and "has no row for render key" in result.output


def test_a_png_without_provenance_and_a_non_png_fail_naming_the_file(tmp_path):
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    result = inspect(str(plain), "--data-root", str(tmp_path))
    assert result.exit_code == 1 and f"{plain} carries no tower provenance" in result.output
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    result = inspect(str(text), "--data-root", str(tmp_path))
    assert result.exit_code == 1
    assert f"{text}: not a PNG file" in result.output
