from __future__ import annotations

import dataclasses
import hashlib
import socket
import threading
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from conftest import SIM_TIME_SCALE
from PIL import Image

from tower.comfyui import (
    ComfyUIClient,
    ComfyUIExecutionError,
    ComfyUIInterrupted,
    ComfyUIOutOfMemory,
    ComfyUIProtocolError,
    ComfyUIUnavailable,
    RenderResult,
)
from tower.planning.planner import RenderBatch, batch_id_for, force_token
from tower.runtime.execute import (
    RenderContext,
    _no_new_work,
    execute_batch,
    execute_with_oom_split,
)
from tower.runtime.gpu import GpuReading, GpuSampler
from tower.shotlist.shots import Shot, ShotList
from tower.simulator import SimulatorConfig, start_simulator
from tower.spec.outputs import take_output_path
from tower.spec.takes import resolve_takes
from tower.store.files import DataRoot
from tower.store.index import OutputIndex
from tower.store.metrics import MetricsStore


def takes_of(count: int, shot_id: str = "sh030"):
    shot_list = ShotList(episode="ep01", shots=(
        Shot(id=shot_id, prompt="Aoi running across a rope bridge", takes=count, preset="draft",
             seed=7),))
    return resolve_takes(shot_list)


def batch_of(takes) -> RenderBatch:
    return RenderBatch(batch_id=batch_id_for(takes), server="sim", takes=tuple(takes),
                       vram_estimate_mb=2048.0, est_seconds=4.0)


@pytest.fixture
def ctx(tmp_path) -> RenderContext:
    root = DataRoot(tmp_path / "data")
    return RenderContext(data_root=root, index=OutputIndex(root.index),
                         metrics=MetricsStore(root.metrics), run_id="run-1",
                         flow_run_id="flow-1", vram_budget_mb=11000.0)


@pytest.fixture
def client(simulator):
    with ComfyUIClient(simulator.url, name="sim-a") as made:
        yield made


def index_rows(ctx):
    return ctx.index.scan().collect().sort("take")


def metrics_rows(ctx):
    return ctx.metrics.scan().collect().sort(["finished_at", "takes"], descending=[False, True])


def rendered_files(ctx):
    renders = ctx.data_root.renders
    return sorted(p.relative_to(renders).as_posix() for p in renders.rglob("*") if p.is_file())


def test_batch_lands_images_index_rows_and_metrics(client, ctx):
    takes = takes_of(3)
    batch = batch_of(takes)
    events = []
    ctx.on_progress = events.append

    outcome = execute_batch(client, batch, ctx)

    assert (outcome.status, outcome.error) == ("ok", None)
    assert {e.prompt_id for e in events} == {batch.prompt_id}
    assert "progress" in {e.event for e in events}
    assert outcome.images == [ctx.data_root.renders / take_output_path(t) for t in takes]
    index = index_rows(ctx)
    assert index["render_key"].to_list() == [t.key for t in takes]
    assert index["output_path"].to_list() == [take_output_path(t) for t in takes]
    assert set(index["server"]) == {"sim-a"} and set(index["prompt_id"]) == {batch.prompt_id}
    assert set(index["run_id"]) == {"run-1"}
    for path, row, take in zip(outcome.images, index.iter_rows(named=True), takes, strict=True):
        data = path.read_bytes()
        assert hashlib.sha256(data).hexdigest() == row["sha256"]
        assert len(data) == row["size_bytes"]
        with Image.open(path) as image:
            assert image.size == (take.width, take.height)
    assert [r.render_key for r in outcome.index_rows] == [t.key for t in takes]
    assert ctx.index.dedup(takes, ctx.data_root.renders).to_render == []

    [metrics] = metrics_rows(ctx).iter_rows(named=True)
    assert metrics["status"] == "ok" and metrics["attempt"] == 1
    assert (metrics["run_id"], metrics["flow_run_id"], metrics["batch_id"]) == \
        ("run-1", "flow-1", batch.batch_id)
    assert (metrics["takes"], metrics["batch_size"], metrics["images"]) == (3, 3, 3)
    assert metrics["bytes_downloaded"] == sum(index["size_bytes"])
    assert (metrics["width"], metrics["height"]) == (512, 512)
    assert (metrics["vram_estimated_mb"], metrics["vram_budget_mb"]) == (2048.0, 11000.0)
    assert metrics["execution_s"] > 0 and metrics["sampling_s"] > 0
    assert metrics["download_s"] >= 0 and metrics["queue_wait_s"] is not None
    assert metrics["model_cache_hit"] is False and metrics["cached_nodes"] == 0
    assert metrics["vram_peak_mb"] is not None  # measured through /system_stats or NVML
    assert metrics["error_type"] is None
    assert metrics == dataclasses.asdict(outcome.metrics) | {
        "finished_at": metrics["finished_at"], "queued_at": metrics["queued_at"],
        "started_at": metrics["started_at"]}


def test_second_execution_adopts_the_finished_prompt(simulator, client, ctx):
    takes = takes_of(2)
    batch = batch_of(takes)
    first = execute_batch(client, batch, ctx)
    hashes = [r.sha256 for r in first.index_rows]

    with ComfyUIClient(simulator.url, name="sim-a") as other:  # e.g. a retry in a new process
        again = execute_batch(other, batch, ctx, attempt=2)

    assert again.status == "cached"
    assert again.images == first.images
    assert [r.sha256 for r in again.index_rows] == hashes
    assert index_rows(ctx).height == 2  # nothing indexed twice
    metrics = metrics_rows(ctx)
    assert metrics["status"].to_list() == ["ok", "cached"]
    assert metrics["attempt"].to_list() == [1, 2]
    assert len(simulator.busy_intervals()) == 1  # rendered once


def test_oom_splits_the_batch_until_it_fits(simulator, client, ctx):
    simulator.faults.oom_above_batch = 1
    takes = takes_of(3)

    outcomes = execute_with_oom_split(client, batch_of(takes), ctx)

    assert [o.batch.size for o in outcomes] == [1, 1, 1]
    assert [o.batch.takes[0].take for o in outcomes] == [0, 1, 2]
    assert {o.status for o in outcomes} == {"ok"}
    metrics = metrics_rows(ctx)
    assert sorted(zip(metrics["status"], metrics["takes"], strict=True)) == \
        [("ok", 1), ("ok", 1), ("ok", 1), ("oom", 2), ("oom", 3)]
    assert set(metrics.filter(metrics["status"] == "oom")["error_type"]) == \
        {"ComfyUIOutOfMemory"}
    assert index_rows(ctx)["render_key"].to_list() == [t.key for t in takes]
    assert rendered_files(ctx) == sorted(take_output_path(t) for t in takes)


def test_a_retry_renders_only_the_takes_no_earlier_attempt_stored(simulator, client, ctx,
                                                                   tmp_path):
    """After an OOM split the first half is stored and storing the second fails (its
    path is taken by a folder). The batch moves to another server, which renders the
    second take only: the stored take keeps its one row and its file."""
    simulator.faults.oom_above_batch = 1
    takes = takes_of(2)
    batch = batch_of(takes)
    blocker = ctx.data_root.renders / take_output_path(takes[1])
    blocker.mkdir(parents=True)

    with pytest.raises(OSError):
        execute_with_oom_split(client, batch, ctx)
    first = ctx.data_root.renders / take_output_path(takes[0])
    stored = first.read_bytes()
    assert index_rows(ctx)["render_key"].to_list() == [takes[0].key]

    blocker.rmdir()
    config = SimulatorConfig(time_scale=SIM_TIME_SCALE, output_dir=tmp_path / "other-output")
    with start_simulator(config) as other, ComfyUIClient(other.url, name="sim-b") as moved:
        outcomes = execute_with_oom_split(moved, batch, ctx, attempt=2)
        assert len(other.busy_intervals()) == 1
        assert len(list((tmp_path / "other-output").rglob("*.png"))) == 1

    assert [o.batch.takes for o in outcomes] == [(takes[0],), (takes[1],)]
    index = index_rows(ctx)
    assert index["render_key"].to_list() == [t.key for t in takes]
    assert index["server"].to_list() == ["sim-a", "sim-b"]
    assert first.read_bytes() == stored
    assert execute_with_oom_split(client, batch, ctx, attempt=3) == outcomes
    assert index_rows(ctx).height == 2


def test_a_single_take_that_does_not_fit_is_raised(simulator, client, ctx):
    simulator.faults.oom_above_batch = 0
    with pytest.raises(ComfyUIOutOfMemory):
        execute_with_oom_split(client, batch_of(takes_of(1)), ctx)
    assert metrics_rows(ctx)["status"].to_list() == ["oom"]
    assert index_rows(ctx).height == 0 and rendered_files(ctx) == []


def test_execution_failure_is_recorded_then_raised(simulator, client, ctx):
    simulator.faults.execution_error_rate = 1.0
    ctx.measure_gpu = lambda _client: GpuSampler(lambda: GpuReading(4321.0, 87.5), "test")

    with pytest.raises(ComfyUIExecutionError) as caught:
        execute_batch(client, batch_of(takes_of(2)), ctx, attempt=3)

    assert not isinstance(caught.value, ComfyUIOutOfMemory)
    [row] = metrics_rows(ctx).iter_rows(named=True)
    assert (row["status"], row["attempt"], row["images"]) == ("failed", 3, 0)
    assert row["error_type"] == "ComfyUIExecutionError"
    assert "simulated sampler failure" in row["error_message"]
    assert (row["vram_peak_mb"], row["gpu_util_mean"]) == (4321.0, 87.5)
    assert row["started_at"] is not None  # timings of the failed prompt are kept
    assert index_rows(ctx).height == 0 and rendered_files(ctx) == []


def test_unreachable_server_is_recorded_then_raised(ctx):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with ComfyUIClient(f"http://127.0.0.1:{port}", connect_timeout=0.5) as dead, \
            pytest.raises(ComfyUIUnavailable):
        execute_batch(dead, batch_of(takes_of(1)), ctx)
    [row] = metrics_rows(ctx).iter_rows(named=True)
    assert (row["status"], row["error_type"], row["server"]) == \
        ("failed", "ComfyUIUnavailable", f"127.0.0.1-{port}")
    assert row["vram_peak_mb"] is None  # nothing to measure: null, not zero


class DroppingClient(ComfyUIClient):
    """A real client whose server loses one image of every batch."""

    def render(self, graph, **kwargs) -> RenderResult:
        result = super().render(graph, **kwargs)
        return dataclasses.replace(result, images=result.images[:-1])


def test_wrong_number_of_images_is_a_protocol_error(simulator, ctx):
    with DroppingClient(simulator.url) as dropping, \
            pytest.raises(ComfyUIProtocolError, match="2 images for 3 takes"):
        execute_batch(dropping, batch_of(takes_of(3)), ctx)
    assert metrics_rows(ctx)["error_type"].to_list() == ["ComfyUIProtocolError"]
    assert index_rows(ctx).height == 0 and rendered_files(ctx) == []


NOW = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)


@pytest.mark.parametrize(("cached", "adopted", "finished_at", "no_new_work"), [
    (False, False, NOW, False),
    (True, False, NOW, True),                          # every node served from cache
    (False, True, NOW - timedelta(minutes=5), True),   # finished before we asked
    (False, True, NOW + timedelta(seconds=30), False),  # adopted while queued or running
    (False, True, None, False),
])
def test_no_new_work(cached, adopted, finished_at, no_new_work):
    result = RenderResult(prompt_id="p", status="success", cached=cached, adopted=adopted,
                          finished_at=finished_at)
    assert _no_new_work(result, NOW) is no_new_work


def test_interrupted_render_is_recorded_as_interrupted(simulator, client, ctx):
    simulator.config.time_scale = 0.05  # long enough to interrupt mid-sampling
    batch = batch_of(takes_of(2))
    started = threading.Event()
    ctx.on_progress = lambda event: started.set()

    def interrupt_when_running():
        if started.wait(10):
            client.interrupt(batch.prompt_id)

    helper = threading.Thread(target=interrupt_when_running)
    helper.start()
    with pytest.raises(ComfyUIInterrupted):
        execute_batch(client, batch, ctx)
    helper.join()
    [row] = metrics_rows(ctx).iter_rows(named=True)
    assert (row["status"], row["error_type"]) == ("interrupted", "ComfyUIInterrupted")
    assert index_rows(ctx).height == 0 and rendered_files(ctx) == []


# -- forced batches ------------------------------------------------------------------

def server_cached_nodes(simulator, prompt_id: str) -> list[str]:
    """``execution_cached`` nodes of a prompt, read from the server's ``/history``."""
    entry = httpx.get(f"{simulator.url}/history/{prompt_id}", timeout=10).json()[prompt_id]
    return next(data["nodes"] for event, data in entry["status"]["messages"]
                if event == "execution_cached")


def pixels_of(path) -> bytes:
    with Image.open(path) as image:
        return image.tobytes()


def test_a_forced_batch_renders_anew_where_the_plain_one_is_adopted(simulator, client, ctx):
    takes = takes_of(2)
    plain = batch_of(takes)
    first = execute_batch(client, plain, ctx)
    pixels = [pixels_of(path) for path in first.images]
    forced = dataclasses.replace(plain, fresh=force_token("flow-run-2"))

    again = execute_batch(client, plain, ctx)
    fresh = execute_batch(client, forced, ctx)

    assert (first.status, again.status, fresh.status) == ("ok", "cached", "ok")
    assert forced.prompt_id != plain.prompt_id
    assert server_cached_nodes(simulator, forced.prompt_id) == []
    assert fresh.metrics.cached_nodes == 0 and fresh.metrics.model_cache_hit is False
    assert len(simulator.busy_intervals()) == 2  # the plain repeat rendered nothing
    assert fresh.images == first.images  # same takes, same paths
    assert [r.prompt_id for r in fresh.index_rows] == [forced.prompt_id] * 2
    # Same pixels; the file differs only in the PNG's embedded prompt (it names the token).
    assert [pixels_of(path) for path in fresh.images] == pixels
    assert [r.sha256 for r in fresh.index_rows] == [
        hashlib.sha256(path.read_bytes()).hexdigest() for path in fresh.images]
    assert ctx.index.dedup(takes, ctx.data_root.renders).to_render == []


def test_a_retry_of_a_forced_batch_in_the_same_run_adopts_its_prompt(simulator, client, ctx):
    batch = dataclasses.replace(batch_of(takes_of(2)), fresh=force_token("flow-run-1"))
    first = execute_batch(client, batch, ctx)
    retried = dataclasses.replace(batch_of(takes_of(2)), fresh=force_token("flow-run-1"))

    with ComfyUIClient(simulator.url, name="sim-a") as other:  # e.g. a retry in a new process
        again = execute_batch(other, retried, ctx, attempt=2)

    assert retried.prompt_id == batch.prompt_id
    assert (first.status, again.status) == ("ok", "cached")
    assert len(simulator.busy_intervals()) == 1  # rendered once
    assert index_rows(ctx).height == 2
    assert metrics_rows(ctx)["attempt"].to_list() == [1, 2]


def test_oom_halves_of_a_forced_batch_render_anew_too(simulator, client, ctx):
    takes = takes_of(2)
    execute_batch(client, batch_of(takes), ctx)  # the server now holds every take
    simulator.faults.oom_above_batch = 1
    forced = dataclasses.replace(batch_of(takes), fresh=force_token("flow-run-3"))

    outcomes = execute_with_oom_split(client, forced, ctx)

    assert [o.status for o in outcomes] == ["ok", "ok"]
    assert all(o.batch.fresh == forced.fresh for o in outcomes)
    for outcome in outcomes:
        assert outcome.batch.prompt_id.endswith(forced.fresh)
        assert server_cached_nodes(simulator, outcome.batch.prompt_id) == []


def test_every_copy_of_a_run_context_counts_the_same_retries(ctx):
    per_batch = dataclasses.replace(ctx, vram_budget_mb=8000.0)   # as render_batch makes
    per_batch.note_attempt("b1", 1)
    per_batch.note_attempt("b1", 3)
    ctx.note_attempt("b2", 2)
    ctx.note_attempt("b1", 2)                                     # a late, older attempt
    ctx.note_attempt("half", 2)                                   # an OOM half: not planned
    assert ctx.retries(["b1", "b2", "b3"]) == 3
