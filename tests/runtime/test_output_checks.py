"""A take the simulator renders black is stored, indexed ``suspect``, counted and flagged;
every stored file carries its provenance and the index holds the stored file's sha256."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest

from tower.comfyui import ComfyUIClient
from tower.planning.planner import RenderBatch, batch_id_for
from tower.runtime.execute import RenderContext, execute_batch
from tower.runtime.provenance import idat_bytes, read_chunks
from tower.runtime.summary import RunTally, count_line, sheet_ref, summary_markdown
from tower.shotlist.shots import Shot, ShotList
from tower.spec.outputs import sheet_items
from tower.spec.takes import resolve_takes
from tower.store.files import DataRoot
from tower.store.index import OutputIndex
from tower.store.metrics import MetricsStore

T0 = datetime(2026, 11, 26, 1, 0, tzinfo=UTC)


@pytest.fixture
def ctx(tmp_path) -> RenderContext:
    root = DataRoot(tmp_path / "data")
    return RenderContext(data_root=root, index=OutputIndex(root.index),
                         metrics=MetricsStore(root.metrics), run_id="run-1")


@pytest.fixture
def client(simulator):
    with ComfyUIClient(simulator.url, name="sim-a") as made:
        yield made


def takes_of(prompt: str, count: int = 3):
    return resolve_takes(ShotList(episode="ep01", shots=(
        Shot(id="sh040", prompt=prompt, takes=count, preset="draft", seed=5),)))


def batch_of(takes) -> RenderBatch:
    return RenderBatch(batch_id=batch_id_for(takes), server="sim", takes=tuple(takes),
                       vram_estimate_mb=2048.0, est_seconds=4.0)


def test_a_black_take_is_stored_indexed_suspect_counted_and_flagged(simulator, client, ctx):
    takes = takes_of("Ren alone in the dark corridor [sim:black@1]")
    batch = batch_of(takes)

    outcome = execute_batch(client, batch, ctx)

    assert outcome.status == "ok" and all(path.is_file() for path in outcome.images)
    rows = ctx.index.scan().collect().sort("take")
    assert rows["status"].to_list() == ["ok", "suspect", "ok"]
    [reason] = rows["suspect_reason"].drop_nulls().to_list()
    assert reason.startswith("all one colour (#000000); near-black; file ")
    [metrics] = ctx.metrics.scan().collect().iter_rows(named=True)
    assert (metrics["images"], metrics["suspect_images"]) == (3, 1)

    # Each file as stored: our provenance beside ComfyUI's chunks, the index's sha256.
    comfy_png = next((simulator.config.output_dir).rglob("*_00002_.png"))
    for path, row, take in zip(outcome.images, rows.iter_rows(named=True), takes, strict=True):
        data = path.read_bytes()
        assert (hashlib.sha256(data).hexdigest(), len(data)) == (row["sha256"],
                                                                 row["size_bytes"])
        found = read_chunks(path)
        assert found.provenance == {
            "render_key": take.key, "episode": "ep01", "shot": "sh040",
            "take": str(take.take), "seed": "5", "noise_index": str(take.take),
            "preset": "draft", "checkpoint": take.checkpoint, "checkpoint_fingerprint": "",
            "server": "sim-a", "prompt_id": batch.prompt_id, "run_id": "run-1"}
        assert set(found.other_text) >= {"prompt"}
    # Stamping did not re-encode: the pixels' compressed stream is ComfyUI's own.
    assert idat_bytes(outcome.images[1].read_bytes()) == idat_bytes(comfy_png.read_bytes())

    tally = RunTally(takes_requested=3)
    tally.add([outcome], "sim-a")
    assert tally.takes_suspect == 1
    assert [item.status for item in tally.images] == ["ok", "suspect", "ok"]
    # The flow redraws the tiles from the shot list; the verdicts stay on them.
    redrawn = tally.flag_suspects(sheet_items(takes, ctx.data_root.renders))
    assert [item.status for item in redrawn] == ["ok", "suspect", "ok"]
    assert sheet_ref(redrawn, "renders/ep01/sheet.png").contents == "3 takes, 1 suspect"
    assert count_line(tally).endswith(", 0 failed, 1 suspect")
    text = summary_markdown("ep01 render", tally, started=T0,
                            finished=T0 + timedelta(minutes=1), servers=["sim-a"],
                            model_swaps={}, out_of_rotation={}, status="completed")
    assert "| suspect (output check) | 1 |" in text
    assert "## Suspect images" in text and "sh040_t01_" in text


def test_clean_takes_are_all_ok(client, ctx):
    outcome = execute_batch(client, batch_of(takes_of("Aoi on the rope bridge", 2)), ctx)
    assert [row.status for row in outcome.index_rows] == ["ok", "ok"]
    assert outcome.metrics.suspect_images == 0
