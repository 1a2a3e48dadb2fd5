"""Out-of-memory batches cap the next plan's batch size for that preset on that server."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import polars as pl
import pytest

from tower.planning.caps import BatchCap, batch_caps
from tower.planning.pipeline import build_models, plan_run, recent_metrics
from tower.planning.planner import ServerSpec
from tower.shotlist.presets import BUILTIN_PRESETS
from tower.shotlist.shots import Shot, ShotList
from tower.store.files import DataRoot
from tower.store.metrics import BatchMetrics, MetricsStore

T0 = datetime(2026, 11, 20, 22, 0, tzinfo=UTC)
DRAFT = BUILTIN_PRESETS["draft"]
EIGHT_DRAFTS = ShotList(episode="ep01", defaults={"negative": "lowres"},
                        shots=(Shot(id="sh010", prompt="harbour at dusk", preset="draft",
                                    takes=8),))


def row(server: str, size: int, status: str, minutes: int, preset: str = "draft",
        ) -> BatchMetrics:
    """One batch's metrics row as the runtime writes it (a render or its OOM attempt)."""
    return BatchMetrics(
        run_id="r", batch_id=f"{server}-{size}-{status}-{minutes}", server=server,
        episode="ep01", preset=preset, checkpoint=DRAFT.checkpoint, width=512, height=512,
        takes=size, batch_size=size, vae_tiled=False, status=status, attempt=1,
        finished_at=T0 + timedelta(minutes=minutes), vram_budget_mb=10000.0,
        images=size if status == "ok" else 0,
        error_type="ComfyUIOutOfMemory" if status == "oom" else None)


def frame(rows: list[BatchMetrics]) -> pl.DataFrame:
    return pl.DataFrame([r.__dict__ for r in rows])


@pytest.mark.parametrize(("rows", "caps"), [
    # 8 ran out of memory, the run went on with halves of 4
    ([row("a", 8, "ok", 0), row("a", 8, "oom", 10), row("a", 4, "ok", 11)], {"a": 4}),
    # the halves ran out too: the cap follows the halving down
    ([row("a", 8, "oom", 10), row("a", 4, "oom", 11), row("a", 2, "ok", 12)], {"a": 2}),
    ([row("a", 3, "oom", 10)], {"a": 2}),
    ([row("a", 1, "oom", 10)], {"a": 1}),
    # a later batch at least as big rendered there: the card fits it again
    ([row("a", 8, "oom", 10), row("a", 8, "ok", 20)], {}),
    ([row("a", 8, "oom", 10), row("a", 6, "ok", 20)], {"a": 4}),
    # other servers and presets keep their sizes; failed batches say nothing of memory
    ([row("a", 8, "oom", 10), row("b", 8, "ok", 11), row("a", 8, "ok", 12, "standard"),
      row("b", 8, "failed", 13)], {"a": 4}),
])
def test_each_server_and_preset_is_capped_at_the_half_the_run_went_on_with(rows, caps):
    found = batch_caps(frame(rows))
    assert {server: cap.size for (server, _), cap in found.items()} == caps
    assert all(preset == "draft" for _, preset in found)


def test_a_cap_says_where_it_comes_from():
    (cap,) = batch_caps(frame([row("gpu-a", 8, "oom", 10)])).values()
    assert cap == BatchCap("gpu-a", "draft", 4, 8, T0 + timedelta(minutes=10))
    assert cap.describe() == ("gpu-a: draft batches capped at 4 takes (out of memory at 8 "
                              "on 2026-11-20 22:10)")


def sizes(run, server: str) -> list[int]:
    return [b.size for b in run.plan.batches if b.server == server]


def test_the_next_plan_uses_the_smaller_size_for_that_preset_on_that_server(tmp_path):
    """Real metrics Parquet: one night's OOM on a, read back by the next night's plan."""
    root = DataRoot(tmp_path / "data")
    servers = [ServerSpec("a", 10000.0), ServerSpec("b", 10000.0)]
    before = plan_run(EIGHT_DRAFTS, presets=BUILTIN_PRESETS, servers=servers, data_root=root,
                      metrics=recent_metrics(root, date(2026, 11, 20)))
    assert [b.size for b in before.plan.batches] == [8]         # one chunk, one batch
    # The night: 8 ran out of memory on a, twice (two shots), halves of 4 rendered
    night = [row("a", 8, "ok", 0), row("b", 8, "ok", 1),
             row("a", 8, "oom", 10), row("a", 4, "ok", 11), row("a", 4, "ok", 12)]
    MetricsStore(root.metrics).append(night)

    models = build_models(recent_metrics(root, date(2026, 11, 21)), BUILTIN_PRESETS)
    assert list(models.caps) == [("a", "draft")] and not models.vram.fits
    assert "a: draft batches capped at 4 takes" in models.describe()[-1]
    on_a = plan_run(EIGHT_DRAFTS, presets=BUILTIN_PRESETS, servers=[servers[0]],
                    data_root=root, metrics=recent_metrics(root, date(2026, 11, 21)))
    on_b = plan_run(EIGHT_DRAFTS, presets=BUILTIN_PRESETS, servers=[servers[1]],
                    data_root=root, metrics=recent_metrics(root, date(2026, 11, 21)))
    assert sizes(on_a, "a") == [4, 4]
    assert sizes(on_b, "b") == [8]
    assert {t.key for b in on_a.plan.batches for t in b.takes} == {
        t.key for b in before.plan.batches for t in b.takes}   # the same takes, smaller

    # a month later the window no longer holds the OOM: back to what the model allows
    later = plan_run(EIGHT_DRAFTS, presets=BUILTIN_PRESETS, servers=[servers[0]],
                     data_root=root, metrics=recent_metrics(root, date(2027, 1, 5)))
    assert sizes(later, "a") == [8]
