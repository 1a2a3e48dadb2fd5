"""The ComfyUI client against the simulator over loopback HTTP and WebSocket.

No transport is mocked: each test starts a simulator on a free 127.0.0.1 port and
injects the failure it is about through the simulator's faults.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tower.comfyui import (
    ComfyUIClient,
    ComfyUIExecutionError,
    ComfyUIInterrupted,
    ComfyUIOutOfMemory,
    ComfyUIPreflightError,
    ComfyUIProtocolError,
    ComfyUITimeout,
    ComfyUIUnavailable,
    ComfyUIValidationError,
    ImageRef,
    ProgressEvent,
)
from tower.comfyui._preflight import combo_inputs
from tower.comfyui._wait import WaitSpec
from tower.runtime.failures import classify
from tower.shotlist.shots import Shot, ShotList
from tower.simulator import SimulatorConfig, SimulatorServer, start_simulator
from tower.spec.graph import build_graph
from tower.spec.takes import resolve_takes

FAST = 0.002


def graph_for(takes: int = 2, prefix: str = "ep01/sh010/t", seed: int = 7,
              **shot: Any) -> dict[str, Any]:
    """A draft-preset render graph (512 px keeps the simulator quick)."""
    shot_list = ShotList(episode="ep01", shots=(
        Shot(id="sh010", prompt="Aoi on the rope bridge", preset="draft", takes=takes,
             seed=seed, **shot),))
    return build_graph(resolve_takes(shot_list), prefix)


@pytest.fixture
def slow_sim(tmp_path: Path) -> Iterator[SimulatorServer]:
    """Loading a checkpoint takes ~0.6 s and each sampler step ~0.03 s."""
    with start_simulator(SimulatorConfig(time_scale=0.2, output_dir=tmp_path / "out")) as s:
        yield s


@pytest.fixture
def client(simulator: SimulatorServer) -> Iterator[ComfyUIClient]:
    with ComfyUIClient(simulator.url, timeout=5, connect_timeout=1) as c:
        yield c


def pngs(simulator: SimulatorServer) -> list[Path]:
    return sorted(simulator.output_dir.rglob("*.png"))


def in_thread(fn: Any, *args: Any, **kwargs: Any) -> tuple[threading.Thread, dict[str, Any]]:
    """Run ``fn`` in a thread; the dict gets ``result`` or ``error``."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = fn(*args, **kwargs)
        except BaseException as err:
            out["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def wait_until(check: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


# -- server facts ------------------------------------------------------------------


def test_system_stats_and_object_info(client: ComfyUIClient, simulator: SimulatorServer) -> None:
    stats = client.system_stats()
    assert stats.comfyui_version
    (device,) = stats.devices
    assert device.type == "cuda" and device.vram_total == 12288 * 1024 * 1024
    checkpoint = combo_inputs(client.object_info(), "CheckpointLoaderSimple")["ckpt_name"]
    sampler = combo_inputs(client.object_info(), "KSampler")
    assert checkpoint == list(simulator.config.checkpoints)
    assert "dpm_fast" in sampler["sampler_name"] and "karras" in sampler["scheduler"]
    assert client.object_info() is client.object_info()  # fetched once


def test_preflight_names_everything_missing(client: ComfyUIClient) -> None:
    client.preflight([graph_for()])
    bad = graph_for()
    bad["checkpoint"]["inputs"]["ckpt_name"] = "mecha-v9.safetensors"
    bad["sampler"]["inputs"]["sampler_name"] = "warp_drive"
    bad["extra"] = {"class_type": "UpscaleWithMagic", "inputs": {}}
    with pytest.raises(ComfyUIPreflightError) as caught:
        client.preflight([graph_for(), bad])
    text = str(caught.value)
    assert "checkpoints: missing 'mecha-v9.safetensors' (available: " \
           "anime-draft-sd15.safetensors, anime-final-sd15.safetensors)" in text
    assert "samplers: missing 'warp_drive'" in text and "UpscaleWithMagic" in text
    assert not classify(caught.value).transient


# -- rendering ---------------------------------------------------------------------


def test_render_confirms_images_timings_and_progress(client: ComfyUIClient,
                                                     simulator: SimulatorServer,
                                                     tmp_path: Path) -> None:
    events: list[ProgressEvent] = []
    graph = graph_for(takes=3)
    result = client.render(graph, prompt_id="ep01-sh010-a", on_progress=events.append)
    assert result.status == "success" and not result.adopted and not result.cached
    assert [i.subfolder for i in result.images] == ["ep01/sh010"] * 3
    assert set(result.node_seconds) == set(graph)
    assert result.model_load_s is not None and result.model_load_s > 0
    assert result.sampling_s is not None and result.vae_decode_s is not None
    assert result.queued_at <= result.started_at <= result.finished_at
    assert result.queue_wait_s is not None and result.execution_s is not None
    kinds = {(e.event, e.node) for e in events}
    assert ("executing", "sampler") in kinds and ("execution_start", None) in kinds
    assert any(e.event == "progress" and e.value == e.max for e in events)
    for n, image in enumerate(result.images):
        got = client.download(image, tmp_path / "renders" / f"take{n}.png")
        data = got.path.read_bytes()
        assert data == (simulator.output_dir / image.relative_path).read_bytes()
        assert got.sha256 == hashlib.sha256(data).hexdigest() and got.size == len(data)
    assert sorted(p.name for p in (tmp_path / "renders").iterdir()) == \
        ["take0.png", "take1.png", "take2.png"]


def test_submit_then_wait(client: ComfyUIClient) -> None:
    prompt_id = client.submit(graph_for(takes=1), prompt_id="chosen-id")
    assert prompt_id == "chosen-id"
    result = client.wait(prompt_id, timeout=10)
    assert result.status == "success" and len(result.images) == 1
    assert client.find(prompt_id) == "done" and client.find("never-seen") == "unknown"


def test_same_graph_twice_is_cached(client: ComfyUIClient, simulator: SimulatorServer) -> None:
    graph = graph_for()
    first = client.render(graph, prompt_id="first")
    files = pngs(simulator)
    again = client.render(graph, prompt_id="second")
    assert again.cached and set(again.cached_nodes) == set(graph)
    assert again.images == first.images and pngs(simulator) == files  # old files, none new
    assert (again.model_load_s, again.sampling_s, again.vae_decode_s) == (0.0, 0.0, 0.0)


def test_free_memory_drops_the_cache(client: ComfyUIClient) -> None:
    graph = graph_for(takes=1)
    client.render(graph, prompt_id="a")
    client.free(unload_models=True, free_memory=True)
    assert not client.render(graph, prompt_id="b").cached


def test_concurrent_renders_on_one_client(client: ComfyUIClient) -> None:
    runs = [in_thread(client.render, graph_for(takes=1, seed=s), prompt_id=f"p{s}",
                      timeout=20) for s in (1, 2, 3)]
    for thread, out in runs:
        thread.join(30)
        assert out["result"].status == "success", out


# -- errors ------------------------------------------------------------------------


def test_validation_error_names_node_class_input_and_reason(client: ComfyUIClient) -> None:
    graph = graph_for()
    graph["sampler"]["inputs"]["sampler_name"] = "bogus"
    with pytest.raises(ComfyUIValidationError) as caught:
        client.render(graph, prompt_id="bad")
    assert "node sampler (KSampler) input sampler_name: value_not_in_list: 'bogus' not in" \
        in str(caught.value)
    assert set(caught.value.node_errors) == {"sampler"}
    assert not classify(caught.value).transient


def test_execution_error(client: ComfyUIClient, simulator: SimulatorServer) -> None:
    simulator.faults.execution_error_rate = 1.0
    with pytest.raises(ComfyUIExecutionError) as caught:
        client.render(graph_for(), prompt_id="boom", timeout=10)
    err = caught.value
    assert type(err) is ComfyUIExecutionError and err.exception_type == "RuntimeError"
    assert err.node_id and err.node_type and err.node_type in str(err)
    assert err.result is not None and err.result.status == "error" and not err.result.images
    assert not classify(err).transient
    simulator.faults.execution_error_rate = 0.0
    retry = client.render(graph_for(), prompt_id="boom", timeout=10)  # failed id: resubmitted
    assert retry.status == "success" and not retry.adopted and len(retry.images) == 2


def test_out_of_memory_is_its_own_class(client: ComfyUIClient, simulator: SimulatorServer) -> None:
    simulator.faults.oom_above_batch = 1
    with pytest.raises(ComfyUIOutOfMemory) as caught:
        client.render(graph_for(takes=2), prompt_id="big")
    assert "OutOfMemoryError" in (caught.value.exception_type or "")
    assert not classify(caught.value).transient
    assert client.render(graph_for(takes=1), prompt_id="small").status == "success"


def test_interrupt(slow_sim: SimulatorServer) -> None:
    with ComfyUIClient(slow_sim.url) as client:
        started = threading.Event()
        thread, out = in_thread(
            client.render, graph_for(), prompt_id="long", timeout=20,
            on_progress=lambda e: e.event == "executing" and started.set())
        assert started.wait(10)
        client.interrupt("long")
        thread.join(20)
    assert isinstance(out.get("error"), ComfyUIInterrupted), out
    assert out["error"].result.status == "interrupted"


def test_stall_and_overall_timeouts(tmp_path: Path) -> None:
    config = SimulatorConfig(time_scale=1.0, output_dir=tmp_path / "out")
    # A 3 s checkpoint load sends no frames at all.
    with start_simulator(config) as server, ComfyUIClient(server.url) as client:
        began = time.monotonic()
        with pytest.raises(ComfyUITimeout, match="no progress"):
            client.render(graph_for(), prompt_id="stuck", stall_timeout=0.4)
        assert time.monotonic() - began < 2.5
        with pytest.raises(ComfyUITimeout, match="not finished after"):
            client.wait("stuck", timeout=0.3)
        assert classify(ComfyUITimeout("x")).transient
        client.interrupt()


# -- the protocol's traps ----------------------------------------------------------


def test_history_written_after_success_frame(client: ComfyUIClient,
                                             simulator: SimulatorServer) -> None:
    simulator.faults.history_delay_s = 0.3
    began = time.monotonic()
    result = client.render(graph_for(takes=1), prompt_id="late-history", timeout=10)
    assert time.monotonic() - began >= 0.3
    assert result.status == "success" and len(result.images) == 1


def test_dropped_websocket_falls_back_to_polling(client: ComfyUIClient,
                                                 simulator: SimulatorServer,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    simulator.faults.drop_ws_after = 3
    caplog.set_level(logging.WARNING, logger="tower.comfyui")
    result = client.render(graph_for(takes=2), prompt_id="dropped", timeout=20)
    assert result.status == "success" and len(result.images) == 2
    assert "WebSocket closed" in caplog.text


def test_render_adopts_a_prompt_whose_answer_was_lost(client: ComfyUIClient,
                                                      simulator: SimulatorServer) -> None:
    graph = graph_for(takes=2)
    client.submit(graph, prompt_id="batch-7")  # queued; pretend the answer never came
    result = client.render(graph, prompt_id="batch-7", timeout=10)
    assert result.adopted and len(result.images) == 2
    threads = threading.active_count()
    done = client.render(graph, prompt_id="batch-7")  # finished: adopted, not re-run
    assert threading.active_count() <= threads  # its socket was closed, not leaked
    assert done.adopted and done.images == result.images
    assert len(pngs(simulator)) == 2 and len(simulator.busy_intervals()) == 1


def test_lost_post_answer_is_checked_before_resubmitting(slow_sim: SimulatorServer,
                                                        caplog: pytest.LogCaptureFixture
                                                        ) -> None:
    """The first POST queued the prompt; the retry's 500 must not lead to a second one."""
    caplog.set_level(logging.INFO, logger="tower.comfyui")
    graph = graph_for(takes=1)
    with ComfyUIClient(slow_sim.url) as client:
        client.submit(graph, prompt_id="once")
        slow_sim.faults.http_500_next = 1
        spec = WaitSpec("once", client.client_id, 10, 10)
        _, adopted = client._submit_once(graph, spec, front=False)
        assert adopted and "queued despite the error" in caplog.text
        assert client.wait("once", timeout=10).status == "success"
    assert len(slow_sim.busy_intervals()) == 1 and len(pngs(slow_sim)) == 1


def test_resubmitted_failure_ignores_its_old_history(tmp_path: Path) -> None:
    """A failed id is rendered again; until the new run ends, /history still holds the
    old error under the same id and must not be taken for the new outcome."""
    config = SimulatorConfig(time_scale=1.0, model_load_s=0.1, output_dir=tmp_path / "out")
    with start_simulator(config) as server, ComfyUIClient(server.url) as client:
        server.faults.execution_error_rate = 1.0
        with pytest.raises(ComfyUIExecutionError):
            client.render(graph_for(), prompt_id="again", timeout=10)
        server.faults.execution_error_rate = 0.0
        server.faults.drop_ws_after = 1  # polling only: the stale entry is seen first
        result = client.render(graph_for(), prompt_id="again", timeout=10)
    assert result.status == "success" and len(result.images) == 2


def test_500_on_post_then_render_submits_once(client: ComfyUIClient,
                                              simulator: SimulatorServer) -> None:
    simulator.faults.http_500_next = 1
    with pytest.raises(ComfyUIUnavailable) as caught:
        client.submit(graph_for(), prompt_id="p500")
    assert caught.value.status_code == 500 and classify(caught.value).transient
    assert client.find("p500") == "unknown"
    result = client.render(graph_for(), prompt_id="p500", timeout=10)
    assert not result.adopted and len(pngs(simulator)) == 2


def test_idempotent_gets_ride_out_a_few_500s(client: ComfyUIClient,
                                             simulator: SimulatorServer) -> None:
    simulator.faults.http_500_next = 2
    assert client.queue().running == ()
    simulator.faults.http_500_next = 10
    with pytest.raises(ComfyUIUnavailable, match="500"):
        client.queue()


def test_restart_mid_wait_raises_instead_of_hanging(slow_sim: SimulatorServer) -> None:
    with ComfyUIClient(slow_sim.url) as client:
        thread, out = in_thread(client.render, graph_for(), prompt_id="lost", timeout=30)
        wait_until(lambda: client.find("lost") == "running")
        slow_sim.restart()
        thread.join(15)
    assert not thread.is_alive()
    assert isinstance(out.get("error"), ComfyUIUnavailable), out
    assert "lost it" in str(out["error"]) and classify(out["error"]).transient


def test_server_gone_mid_wait_raises_after_a_short_grace(tmp_path: Path) -> None:
    server = start_simulator(SimulatorConfig(time_scale=1.0, output_dir=tmp_path / "o"))
    with ComfyUIClient(server.url, connect_timeout=0.5) as client:
        thread, out = in_thread(client.render, graph_for(), prompt_id="orphan",
                                timeout=30, stall_timeout=1.0)
        wait_until(lambda: client.find("orphan") == "running")
        server.stop()
        thread.join(15)
    assert isinstance(out.get("error"), ComfyUIUnavailable), out
    assert "unreachable" in str(out["error"])


def test_partially_valid_graph_is_refused(client: ComfyUIClient) -> None:
    graph = graph_for(takes=1)
    graph["decode2"] = {"class_type": "VAEDecode",
                        "inputs": {"samples": ["sampler", 0], "vae": ["positive", 0]}}
    graph["save2"] = {"class_type": "SaveImage",
                      "inputs": {"images": ["decode2", 0], "filename_prefix": "x"}}
    with pytest.raises(ComfyUIValidationError, match=r"node decode2 \(VAEDecode\) input vae"):
        client.submit(graph, prompt_id="half")


def test_unreachable_server_is_transient() -> None:
    with start_simulator(SimulatorConfig(time_scale=FAST)) as gone:
        url = gone.url
    with ComfyUIClient(url, connect_timeout=0.5) as client:
        began = time.monotonic()
        with pytest.raises(ComfyUIUnavailable) as caught:
            client.system_stats()
        assert time.monotonic() - began < 5 and classify(caught.value).transient


# -- queue control -----------------------------------------------------------------


def test_queue_order_cancel_and_interrupt(tmp_path: Path) -> None:
    # Eight takes sample for ~4 s in steps of ~0.5 s: time to look, and a quick interrupt.
    config = SimulatorConfig(time_scale=1.0, model_load_s=0.1, output_dir=tmp_path / "out")
    with start_simulator(config) as server, ComfyUIClient(server.url) as client:
        client.submit(graph_for(takes=8, seed=1), prompt_id="running")
        wait_until(lambda: client.find("running") == "running")
        client.submit(graph_for(seed=2), prompt_id="b")
        client.submit(graph_for(seed=3), prompt_id="c")
        client.submit(graph_for(seed=4), prompt_id="urgent", front=True)
        state = client.queue()
        assert state.running == ("running",) and state.pending == ("urgent", "b", "c")
        client.cancel(["b", "c"])
        assert client.queue().pending == ("urgent",)
        client.cancel(["urgent"])
        client.interrupt()
        with pytest.raises(ComfyUIInterrupted):
            client.wait("running", timeout=10)
        assert client.find("b") == "unknown"


def test_withdraw_stops_only_the_given_prompts(tmp_path: Path) -> None:
    config = SimulatorConfig(time_scale=1.0, model_load_s=0.1, output_dir=tmp_path / "out")
    with start_simulator(config) as server, ComfyUIClient(server.url) as client:
        client.submit(graph_for(takes=8, seed=1), prompt_id="ours-running")
        wait_until(lambda: client.find("ours-running") == "running")
        client.submit(graph_for(seed=2), prompt_id="ours-waiting")
        client.submit(graph_for(seed=3), prompt_id="theirs")
        deleted, interrupted = client.withdraw(["ours-running", "ours-waiting", "gone"])
        assert (deleted, interrupted) == (["ours-waiting"], ["ours-running"])
        with pytest.raises(ComfyUIInterrupted):
            client.wait("ours-running", timeout=10)
        assert client.find("ours-waiting") == "unknown"
        assert client.find("theirs") in {"queued", "running"}
        client.withdraw(["theirs"])


# -- files and secrets -------------------------------------------------------------


def test_download_rides_out_a_500(client: ComfyUIClient, simulator: SimulatorServer,
                                  tmp_path: Path) -> None:
    (image,) = client.render(graph_for(takes=1), prompt_id="one").images
    simulator.faults.http_500_next = 1
    got = client.download(image, tmp_path / "take.png")
    assert got.path.read_bytes() == (simulator.output_dir / image.relative_path).read_bytes()
    assert [p.name for p in tmp_path.glob("*.png")] == ["take.png"]


def test_download_of_a_missing_image_leaves_nothing(client: ComfyUIClient,
                                                    tmp_path: Path) -> None:
    dest = tmp_path / "renders" / "x.png"
    with pytest.raises(ComfyUIProtocolError, match="404"):
        client.download(ImageRef("nope_00001_.png", "ep01", "output"), dest)
    assert not dest.parent.exists() or list(dest.parent.iterdir()) == []


def test_secrets_stay_out_of_repr_and_logs(simulator: SimulatorServer,
                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    url = simulator.url.replace("http://", "http://render:hunter2@")
    with ComfyUIClient(url, token="tok-s3cr3t-value") as client:
        text = repr(client)
        assert "token=***" in text and "hunter2" not in text and "s3cr3t" not in text
        assert client.name == f"127.0.0.1-{simulator.port}"  # userinfo is no part of it
        client.render(graph_for(takes=1), prompt_id="secret-run")
        simulator.faults.http_500_next = 1
        with pytest.raises(ComfyUIUnavailable) as caught:
            client.submit(graph_for(takes=1))
    assert "s3cr3t" not in str(caught.value) and "hunter2" not in str(caught.value)
    assert caplog.records, "expected request logs"
    assert "s3cr3t" not in caplog.text and "hunter2" not in caplog.text


@pytest.mark.parametrize(("userinfo", "header", "token", "sent"), [
    ("", "Authorization", "abc123", "Bearer abc123"),
    ("", "Authorization", "Basic dXNlcjpwdw==", "Basic dXNlcjpwdw=="),
    ("", "X-Api-Key", "abc123", "abc123"),
    ("user:pw@", "Authorization", None, "Basic dXNlcjpwdw=="),
    ("user:pw@", "Authorization", "abc123", "Bearer abc123"),
])
def test_injected_http_client_carries_the_credentials(simulator: SimulatorServer,
                                                      userinfo: str, header: str,
                                                      token: str | None, sent: str) -> None:
    seen: list[httpx.Request] = []
    http = httpx.Client(event_hooks={"request": [seen.append]})
    url = simulator.url.replace("http://", f"http://{userinfo}")
    with ComfyUIClient(url, http_client=http, token=token, auth_header=header) as client:
        client.render(graph_for(takes=1), prompt_id="hooked")
    assert "/prompt" in {r.url.path for r in seen} and not http.is_closed
    assert {r.headers.get(header) for r in seen} == {sent}
    http.close()
