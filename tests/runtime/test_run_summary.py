"""Run tallies, retry counts and the closing summary."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tower.planning.planner import RenderBatch
from tower.runtime.execute import BatchOutcome
from tower.runtime.summary import (
    RunInfo,
    RunTally,
    SheetRef,
    count_line,
    data_link,
    image_source,
    run_record,
    run_status,
    run_summary,
    sheet_key,
    sheet_markdown,
    sheet_ref,
    summary_markdown,
    with_picture,
    without_local_paths,
)
from tower.shotlist.presets import BUILTIN_PRESETS
from tower.shotlist.shots import ShotList
from tower.spec.outputs import SheetItem
from tower.spec.takes import resolve_takes
from tower.store.metrics import BatchMetrics, RunLog

T0 = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)


def _batch(takes: int = 2) -> RenderBatch:
    shot_list = ShotList(episode="ep01", shots=({"id": "sh010", "prompt": "x", "takes": takes},))
    resolved = tuple(resolve_takes(shot_list, BUILTIN_PRESETS, "draft"))
    return RenderBatch(batch_id="b1", server="gpu-a", takes=resolved, vram_estimate_mb=3000,
                       est_seconds=4.0)


def _metrics(batch_id: str, attempt: int, status: str = "ok",
             execution_s: float | None = 30.0, queued: bool = True) -> BatchMetrics:
    return BatchMetrics(run_id="r1", batch_id=batch_id, server="gpu-a", episode="ep01",
                        preset="draft", checkpoint="c", width=512, height=512, takes=2,
                        batch_size=2, vae_tiled=False, status=status, attempt=attempt,
                        execution_s=execution_s, finished_at=T0,
                        queued_at=T0 if queued else None)


def _outcome(status: str, execution_s: float, queued: bool = True) -> BatchOutcome:
    """A batch of two takes; ``queued=False`` is a prompt adopted from the server's history."""
    batch = _batch()
    images = [Path(f"/renders/ep01/sh010/t{t.take}.png") for t in batch.takes]
    return BatchOutcome(batch, status, images, [],
                        _metrics("b1", 1, status, execution_s, queued))


@pytest.mark.parametrize(("status", "queued", "source"), [
    ("ok", True, "rendered"),
    ("ok", False, "rendered"),       # adopted while still running: real work
    ("cached", True, "cached"),      # queued, every node from ComfyUI's cache
    ("cached", False, "adopted"),    # finished before we asked: nothing queued
])
def test_image_source(status, queued, source):
    assert image_source(_outcome(status, 0.0, queued)) == source


def test_tally_counts_images_busy_time_and_splits():
    tally = RunTally(takes_requested=8, takes_deduped=1)
    tally.add([_outcome("ok", 30.0), _outcome("ok", 30.0)], "gpu-a")   # an OOM split
    tally.add([_outcome("cached", 0.0)], "gpu-b")
    tally.add([_outcome("cached", 0.0, queued=False)], "gpu-b")
    tally.fail("ep01 sh020 t0-1 draft @gpu-b", 2, "ComfyUIExecutionError: boom")
    assert (tally.takes_rendered, tally.takes_adopted, tally.takes_cached,
            tally.takes_failed, tally.stored) == (4, 2, 2, 2, 8)
    assert tally.oom_splits == 1 and tally.batches_done == 3 and tally.batches_failed == 1
    assert tally.gpu_busy_share(wall_s=60.0, servers=2) == pytest.approx(0.5)
    assert tally.images_per_minute(wall_s=120.0) == pytest.approx(4.0)
    assert tally.gpu_busy_share(0.0, 2) is None and tally.images_per_minute(0) is None
    assert len(tally.images) == 8
    assert tally.images[0] == SheetItem("sh010 t0", Path("/renders/ep01/sh010/t0.png"),
                                        "ok", "sh010")
    assert run_status(tally) == "failed" and run_status(tally, cancelled=True) == "cancelled"
    assert run_status(RunTally()) == "completed"


@pytest.mark.parametrize(("counts", "line"), [
    ({"takes_rendered": 41, "takes_cached": 2, "takes_deduped": 2},
     "43 images stored (41 rendered, 2 from ComfyUI's cache), 2 from the index, 0 failed"),
    ({"takes_adopted": 43, "takes_deduped": 2},
     "43 images stored (43 adopted from a server), 2 from the index, 0 failed"),
    ({"takes_rendered": 1, "takes_adopted": 2, "takes_cached": 3, "takes_failed": 4},
     "6 images stored (1 rendered, 2 adopted from a server, 3 from ComfyUI's cache), "
     "0 from the index, 4 failed"),
    ({"takes_rendered": 1}, "1 image stored (1 rendered), 0 from the index, 0 failed"),
    ({"takes_deduped": 45}, "0 images stored, 45 from the index, 0 failed"),
])
def test_count_line(counts, line):
    assert count_line(RunTally(**counts)) == line


@pytest.mark.parametrize(("text", "roots", "expected"), [
    ("write failed: /srv/farm/data/renders/ep01/x.png", [Path("/srv/farm/data")],
     "write failed: renders/ep01/x.png"),
    ("/a/b/renders/x and /a/b/index/y", [Path("/a"), Path("/a/b/")],   # longest root first
     "renders/x and index/y"),
    ("data/renders/x stays", [Path("data")], "data/renders/x stays"),  # relative: kept
])
def test_without_local_paths(text, roots, expected):
    assert without_local_paths(text, roots) == expected


@pytest.mark.parametrize(("base_url", "expected"), [
    (None, "`renders/ep01/contact-sheets/r 1.png`"),
    ("https://renders.studio.lan/tower/",
     "[renders/ep01/contact-sheets/r 1.png]"
     "(https://renders.studio.lan/tower/renders/ep01/contact-sheets/r%201.png)"),
    ("https://renders.studio.lan/tower",
     "[renders/ep01/contact-sheets/r 1.png]"
     "(https://renders.studio.lan/tower/renders/ep01/contact-sheets/r%201.png)"),
])
def test_data_link(base_url, expected):
    assert data_link("renders/ep01/contact-sheets/r 1.png", base_url) == expected


def test_sheet_refs_count_marked_tiles_and_keys_derive_from_the_summary_key():
    items = [SheetItem("sh010 t0", Path("a.png"), shot="sh010"),
             SheetItem("sh010 t1", None, "failed", "sh010"),
             SheetItem("sh020 t0", Path("b.png"), "suspect", "sh020")]
    ref = sheet_ref(items, "renders/ep01/contact-sheets/r1-part-2.png")
    assert (ref.shots, ref.contents) == ("sh010 to sh020", "3 takes, 1 failed, 1 suspect")
    assert sheet_ref(items[:1], "x.png").contents == "1 take"
    assert sheet_key("render-ep01", 2) == "render-ep01-sheet-2"
    assert sheet_key("preview-preview", 10) == "preview-preview-sheet-10"


def _summary_text(tally: RunTally, **kwargs: object) -> str:
    return summary_markdown("ep01 render", tally, started=T0, finished=T0 + timedelta(seconds=60),
                            servers=["gpu-a", "gpu-b"], model_swaps={"gpu-a": 1, "gpu-b": 2},
                            out_of_rotation={"gpu-b": "2 batches failed in a row"},
                            status="failed", **kwargs)  # type: ignore[arg-type]


def test_summary_markdown_lists_what_a_supervisor_needs():
    tally = RunTally(takes_requested=8, takes_deduped=2, takes_rendered=2, takes_adopted=1,
                     takes_cached=2, retries=1)
    tally.fail("ep01 sh030 t0 high @gpu-b", 1, "ComfyUIUnavailable: refused")
    sheet = SheetRef("renders/ep01/contact-sheets/r1.png", "sh010", "sh030", 8, {"failed": 1})
    text = _summary_text(tally, sheets=[sheet])
    for needle in ("# ep01 render: failed", "| images stored | 5 |", "| rendered | 2 |",
                   "| adopted from a server | 1 |", "| from ComfyUI's cache | 2 |",
                   "| from the index (deduplicated) | 2 |", "| failed | 1 (1 batches) |",
                   "| wall time | 60.0 s |",
                   "| model swaps (planned) | 3 |", "| retries | 1 |", "**gpu-b**",
                   "ep01 sh030 t0 high @gpu-b: ComfyUIUnavailable: refused",
                   "## Contact sheet\n\n8 takes, 1 failed: `renders/ep01/contact-sheets/r1.png`"):
        assert needle in text
    # The state message's words are the table's.
    for words in ("rendered", "adopted from a server", "from ComfyUI's cache",
                  "from the index"):
        assert f"| {words}" in text
    assert "data:image" not in text and "](/" not in text
    linked = _summary_text(tally, sheets=[sheet], base_url="https://renders.studio.lan/tower/")
    assert ("[renders/ep01/contact-sheets/r1.png](https://renders.studio.lan/tower/renders/"
            "ep01/contact-sheets/r1.png)") in linked
    shown = _summary_text(tally, failures=["ep01 sh030 t0 high @gpu-b: cannot write x.png"])
    assert "cannot write x.png" in shown and "refused" not in shown and "Contact" not in shown


def test_several_sheets_are_listed_with_their_artifacts():
    sheets = [SheetRef(f"renders/ep01/contact-sheets/r1-part-{n}.png", f"sh{n}10", f"sh{n}90",
                       48, key=sheet_key("render-ep01", n),
                       url=f"http://ui/artifacts/artifact/{n}" if n == 1 else None)
              for n in (1, 2)]
    text = _summary_text(RunTally(), sheets=sheets)
    assert "## Contact sheets" in text and "2 sheets, each its own artifact" in text
    assert ("| 1 | sh110 to sh190 | 48 takes | [render-ep01-sheet-1](http://ui/artifacts/"
            "artifact/1) | `renders/ep01/contact-sheets/r1-part-1.png` |") in text
    assert "| 2 | sh210 to sh290 | 48 takes | `render-ep01-sheet-2` |" in text
    own = sheet_markdown("ep01 render", sheets[1], number=2, of=2, summary_key="render-ep01")
    assert own.startswith("# ep01 render: contact sheet 2 of 2")
    assert "`render-ep01`" in own and "`renders/ep01/contact-sheets/r1-part-2.png`" in own
    assert with_picture(own, None) == own
    assert with_picture(own, "![x](data:image/jpeg;base64,AA==)").endswith(
        "\n![x](data:image/jpeg;base64,AA==)\n")


def test_the_run_log_row_and_the_summary_agree_with_the_tally(tmp_path):
    tally = RunTally(takes_requested=8, takes_deduped=2, retries=1)
    tally.add([_outcome("ok", 30.0)], "gpu-a")
    tally.add([_outcome("cached", 0.0)], "gpu-b")
    tally.fail("ep01 sh030 t0-1 draft @gpu-b", 2, "ComfyUIExecutionError: boom")
    info = RunInfo(run_id="ep01-20261127T020000-abcd1234", flow_run_id="abcd1234-ef",
                   flow="render_episode", episode="ep01", preset=None,
                   servers=("gpu-a", "gpu-b"), started=T0, batches=3,
                   model_swaps={"gpu-a": 1, "gpu-b": 2})
    finished = T0 + timedelta(minutes=2)
    RunLog(tmp_path / "runs").append([run_record(info, tally, "failed", finished)])
    [row] = RunLog(tmp_path / "runs").scan().collect().to_dicts()
    assert (row["takes_requested"], row["takes_deduped"], row["takes_rendered"],
            row["takes_failed"]) == (8, 2, 4, 2)           # adopted/cached count as rendered
    assert (row["model_swaps"], row["retries"], row["status"]) == (3, 1, "failed")
    assert row["servers"] == ["gpu-a", "gpu-b"] and row["finished_at"] == finished
    summary = run_summary(info, tally, status="failed", finished=finished,
                          out_of_rotation={"gpu-b": "2 batches failed in a row"},
                          contact_sheet="/data/renders/ep01/contact-sheets/r.png",
                          contact_sheets=["renders/ep01/contact-sheets/r.png"],
                          markdown="# ep01")
    assert (summary["takes_rendered"], summary["takes_cached"]) == (2, 2)
    assert (summary["takes_adopted"], summary["takes_stored"]) == (0, 4)
    assert summary["contact_sheets"] == ["renders/ep01/contact-sheets/r.png"]
    assert summary["wall_s"] == 120.0 and summary["images_per_minute"] == pytest.approx(2.0)
    assert summary["gpu_busy_share"] == pytest.approx(30.0 / 240.0)
    assert summary["failures"] == ["ep01 sh030 t0-1 draft @gpu-b: ComfyUIExecutionError: boom"]
    assert len(summary["images"]) == 4 and summary["model_swaps"] == 3
