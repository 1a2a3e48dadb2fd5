"""Simulator behaviour beyond response shapes: queue order, node cache, simulated GPU,
restart, deterministic pixels, and every injectable fault."""

from __future__ import annotations

import copy
import io
import json
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from simulator_helpers import (
    client,
    collect_until_done,
    long_graph,
    next_message,
    open_ws,
    recorded_graph,
    submit,
    wait_history,
    wait_idle,
)
from websockets.exceptions import ConnectionClosed

from tower.simulator import Faults, SimulatorConfig, SimulatorServer, start_simulator
from tower.spec.graph import FRESH_INPUT, build_graph, root_nodes
from tower.spec.takes import ResolvedTake


def _seeded(seed: int, prefix: str = "ep01/sh010", **sizes: int) -> dict[str, Any]:
    graph = recorded_graph()
    graph["3"]["inputs"]["seed"] = seed
    graph["5"]["inputs"].update(sizes)
    graph["9"]["inputs"]["filename_prefix"] = prefix
    return graph


def _run(http: httpx.Client, ws: Any, graph: dict[str, Any],
         client_id: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    body = submit(http, graph, client_id=client_id)
    frames = collect_until_done(ws, body["prompt_id"])
    return frames, wait_history(http, body["prompt_id"])


def _executing(frames: list[dict[str, Any]]) -> list[str]:
    return [f["data"]["node"] for f in frames
            if f["type"] == "executing" and f["data"]["node"] is not None]


def _cached(frames: list[dict[str, Any]]) -> list[str]:
    return next(f["data"]["nodes"] for f in frames if f["type"] == "execution_cached")


def _error(entry: dict[str, Any]) -> dict[str, Any]:
    event, data = entry["status"]["messages"][-1]
    assert event == "execution_error", entry["status"]
    return data


def _wait_running(http, prompt_id: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(item[1] == prompt_id for item in http.get("/queue").json()["queue_running"]):
            return
        time.sleep(0.01)
    raise AssertionError(f"{prompt_id} never started")


def test_queue_order_follows_number_and_front(simulator: SimulatorServer) -> None:
    with client(simulator) as http:
        a = submit(http, long_graph(seed=1, prefix="ep01/shA"), client_id="q")
        _wait_running(http, a["prompt_id"])  # else a busy machine may start a later one first
        b = submit(http, _seeded(2, "ep01/shB"))
        c = submit(http, _seeded(3, "ep01/shC"), front=True)
        d = submit(http, _seeded(4, "ep01/shD"), number=0.5)
        e = submit(http, _seeded(5, "ep01/shE"), front=True)
        f = submit(http, _seeded(6, "ep01/shF"), prompt_id="client-chosen-id")
        g = submit(http, _seeded(7, "ep01/shG"), number=-1000, front=True)
        http.post("/queue", json={"delete": [b["prompt_id"], a["prompt_id"]]})
        pending = http.get("/queue").json()["queue_pending"]
        http.post("/interrupt", json={"prompt_id": a["prompt_id"]})
        wait_idle(http)
        order = list(http.get("/history").json())
    assert [x["number"] for x in (a, b, c, d, e, f, g)] == [0, 1, -2, 0.5, -3, 4, -1000.0]
    assert f["prompt_id"] == "client-chosen-id"
    assert sorted(item[0] for item in pending) == [-1000.0, -3, -2, 0.5, 4]
    # deleting the running prompt is a no-op: A still ends (interrupted) in history
    assert order == [x["prompt_id"] for x in (a, g, e, c, d, f)]


def test_node_cache_like_comfyui(simulator: SimulatorServer) -> None:
    output = simulator.output_dir / "ep01"
    with client(simulator) as http, open_ws(simulator, "c") as ws:
        next_message(ws)
        first, entry1 = _run(http, ws, _seeded(1), "c")
        again, entry2 = _run(http, ws, _seeded(1), "c")
        files_after_repeat = sorted(p.name for p in output.iterdir())
        reseeded, entry3 = _run(http, ws, _seeded(2), "c")
        other = _seeded(2)
        other["4"]["inputs"]["ckpt_name"] = "anime-final-sd15.safetensors"
        switched, _ = _run(http, ws, other, "c")
        http.post("/free", json={"free_memory": True})
        freed, _ = _run(http, ws, copy.deepcopy(other), "c")
    assert _cached(first) == [] and _executing(first)[0] == "4"
    assert _cached(again) == ["4", "6", "7", "5", "3", "8", "9"] and _executing(again) == []
    assert entry2["outputs"] == entry1["outputs"]
    assert files_after_repeat == ["sh010_00001_.png"]
    assert _cached(reseeded) == ["4", "6", "7", "5"]
    assert _executing(reseeded) == ["3", "8", "9"]
    assert entry3["outputs"]["9"]["images"][0]["filename"] == "sh010_00002_.png"
    assert "4" in _executing(switched)
    assert _cached(freed) == []


def test_frame_times_show_model_load_sampling_and_decode(tmp_path: Path) -> None:
    config = SimulatorConfig(time_scale=0.02, output_dir=tmp_path, model_load_s=10.0)
    graph = _seeded(1, width=512, height=768)
    graph["3"]["inputs"]["steps"] = 20
    with start_simulator(config) as sim, client(sim) as http, open_ws(sim, "t") as ws:
        next_message(ws)
        submit(http, graph, client_id="t")
        stamped = []
        while not stamped or stamped[-1][1]["type"] != "execution_success":
            frame = next_message(ws)
            stamped.append((time.monotonic(), frame))
    starts = {f["data"]["node"]: t for t, f in stamped if f["type"] == "executing"}
    load = starts["6"] - starts["4"]  # 10 s simulated = 200 ms
    sampling = starts["8"] - starts["3"]  # 20 steps x 0.25 s/MP x 0.39 MP = 39 ms
    decode = starts["9"] - starts["8"]  # 0.4 s/MP x 0.39 MP = 3 ms
    assert 0.19 <= load < 1.0
    assert 0.035 <= sampling < 0.19
    assert decode < sampling


def test_oom_when_the_batch_does_not_fit(simulator: SimulatorServer) -> None:
    big = _seeded(1, width=1024, height=1536, batch_size=7)
    tiled = copy.deepcopy(big)
    tiled["8"] = {"class_type": "VAEDecodeTiled", "inputs": {
        "samples": ["3", 0], "vae": ["4", 2], "tile_size": 512, "overlap": 64,
        "temporal_size": 64, "temporal_overlap": 8}}
    with client(simulator) as http:
        full = wait_history(http, submit(http, big)["prompt_id"])
        ok = wait_history(http, submit(http, tiled)["prompt_id"])
        simulator.faults.oom_above_batch = 2
        forced = wait_history(http, submit(http, _seeded(9, batch_size=3))["prompt_id"])
        fits = wait_history(http, submit(http, _seeded(9, batch_size=2))["prompt_id"])
    error = _error(full)
    assert error["exception_type"] == "torch.OutOfMemoryError"
    assert error["node_id"] == "8" and error["node_type"] == "VAEDecode"
    assert error["exception_message"].startswith("Allocation on device 0 would exceed")
    assert ok["status"]["status_str"] == "success"
    assert len(ok["outputs"]["9"]["images"]) == 7
    assert _error(forced)["node_id"] == "3"
    assert _error(forced)["exception_type"] == "torch.OutOfMemoryError"
    assert fits["status"]["status_str"] == "success"


def test_small_card_runs_out_sooner(tmp_path: Path) -> None:
    config = SimulatorConfig(time_scale=0, vram_mb=4096, output_dir=tmp_path)
    with start_simulator(config) as sim, client(sim) as http:
        entry = wait_history(http, submit(http, _seeded(1, width=768, height=768,
                                                        batch_size=3))["prompt_id"])
        stats = http.get("/system_stats").json()["devices"][0]
    assert _error(entry)["exception_type"] == "torch.OutOfMemoryError"
    assert stats["vram_total"] == 4096 * 1024 * 1024


def test_restart_loses_queue_history_cache_and_sockets(simulator: SimulatorServer) -> None:
    port = simulator.port
    with client(simulator) as http, open_ws(simulator, "r") as ws:
        next_message(ws)
        done = submit(http, _seeded(1), client_id="r")
        collect_until_done(ws, done["prompt_id"])
        submit(http, long_graph(), client_id="r")
        submit(http, _seeded(2), client_id="r")
        simulator.restart()
        with pytest.raises(ConnectionClosed):
            while True:
                next_message(ws, timeout=5)
    assert simulator.port == port
    with client(simulator) as http, open_ws(simulator, "r") as ws:
        assert next_message(ws)["data"]["status"]["exec_info"]["queue_remaining"] == 0
        assert http.get("/queue").json() == {"queue_running": [], "queue_pending": []}
        assert http.get("/history").json() == {}
        again = submit(http, _seeded(1), client_id="r")
        frames = collect_until_done(ws, again["prompt_id"])
        assert http.post("/_tower/restart").status_code == 200
        assert submit(http, _seeded(1))["number"] == 0
    assert again["number"] == 0
    assert _cached(frames) == [] and _executing(frames)[0] == "4"


def _takes(count: int, **changes: Any) -> list[ResolvedTake]:
    base = ResolvedTake(episode="ep01", shot_id="sh010", take=0, prompt="a girl, sakura",
                        negative="lowres", seed=1234, preset="draft",
                        checkpoint="anime-draft-sd15.safetensors", sampler="euler",
                        scheduler="normal", steps=4, cfg=7.0, width=96, height=64)
    base = replace(base, **changes)
    return [replace(base, take=k) for k in range(count)]


def _pixels(sim: SimulatorServer, http: httpx.Client, graph: dict[str, Any]) -> list[bytes]:
    entry = wait_history(http, submit(http, graph)["prompt_id"])
    images = []
    for ref in entry["outputs"]["save"]["images"]:
        response = http.get("/view", params=ref)
        with Image.open(io.BytesIO(response.content)) as image:
            assert image.size == (96, 64)
            images.append(image.convert("RGB").tobytes())
    return images


def test_take_pixels_do_not_depend_on_the_batch(simulator: SimulatorServer) -> None:
    takes = _takes(4)
    with client(simulator) as http:
        whole = _pixels(simulator, http, build_graph(takes, "ep01/sh010/whole"))
        tail = _pixels(simulator, http, build_graph(takes[2:], "ep01/sh010/tail"))
        alone = _pixels(simulator, http, build_graph(takes[1:2], "ep01/sh010/alone"))
        reseeded = _pixels(simulator, http, build_graph(_takes(1, seed=99), "ep01/x/s"))
        other = _takes(1, checkpoint="anime-final-sd15.safetensors")
        other_ckpt = _pixels(simulator, http, build_graph(other, "ep01/x/c"))
    assert tail == whole[2:]
    assert alone == whole[1:2]
    assert len(set(whole)) == 4
    assert reseeded[0] != whole[0] and other_ckpt[0] != whole[0]


def test_png_carries_prompt_and_extra_pnginfo(simulator: SimulatorServer) -> None:
    graph = _seeded(5)
    with client(simulator) as http:
        body = submit(http, graph, extra_data={"extra_pnginfo": {"workflow": {"v": 1}}})
        entry = wait_history(http, body["prompt_id"])
        ref = entry["outputs"]["9"]["images"][0]
        content = http.get("/view", params=ref).content
    with Image.open(io.BytesIO(content)) as image:
        text = dict(image.text)
    assert json.loads(text["prompt"]) == graph
    assert json.loads(text["workflow"]) == {"v": 1}
    assert (simulator.output_dir / ref["subfolder"] / ref["filename"]).read_bytes() == content


def test_save_counter_continues_after_existing_files(simulator: SimulatorServer) -> None:
    folder = simulator.output_dir / "ep01"
    folder.mkdir(parents=True)
    (folder / "sh010_00041_.png").write_bytes(b"")
    (folder / "other_00099_.png").write_bytes(b"")
    with client(simulator) as http:
        entry = wait_history(http, submit(http, _seeded(1, batch_size=2))["prompt_id"])
    names = [i["filename"] for i in entry["outputs"]["9"]["images"]]
    assert names == ["sh010_00042_.png", "sh010_00043_.png"]


def test_prefix_escaping_the_output_folder_fails_the_prompt(simulator: SimulatorServer) -> None:
    with client(simulator) as http:
        entry = wait_history(http, submit(http, _seeded(1, "../../escape/x"))["prompt_id"])
    assert _error(entry)["node_type"] == "SaveImage"
    assert not (simulator.output_dir.parent / "escape").exists()


def test_http_500_faults(simulator: SimulatorServer) -> None:
    simulator.faults.http_500_next = 2
    with client(simulator) as http:
        codes = [http.get("/queue").status_code for _ in range(3)]
        simulator.faults.http_500_next = 1
        assert http.get("/_tower/faults").status_code == 200  # control routes are exempt
        assert http.get("/queue").status_code == 500
        http.post("/_tower/faults", json={"http_500_rate": 1.0})
        failed = http.post("/prompt", json={"prompt": _seeded(1)})
        http.post("/_tower/faults", json={"http_500_rate": 0.0})
        after = http.get("/queue").status_code
    assert codes == [500, 500, 200]
    assert failed.status_code == 500 and failed.headers["content-type"].startswith("text/plain")
    assert after == 200


def test_http_500_rate_is_seeded(tmp_path: Path) -> None:
    patterns = []
    for run in range(2):
        faults = Faults(http_500_rate=0.5, seed=7)
        config = SimulatorConfig(time_scale=0, output_dir=tmp_path / str(run))
        with start_simulator(config, faults=faults) as sim, client(sim) as http:
            patterns.append([http.get("/prompt").status_code for _ in range(20)])
    assert patterns[0] == patterns[1]
    assert set(patterns[0]) == {200, 500}


def test_slow_responses(simulator: SimulatorServer) -> None:
    simulator.faults.slow_response_s = 0.2
    with client(simulator) as http:
        start = time.monotonic()
        http.get("/queue")
        slow = time.monotonic() - start
        start = time.monotonic()
        http.get("/_tower/busy")
        control = time.monotonic() - start
    assert slow >= 0.2 and control < 0.2


def test_dropped_websocket(simulator: SimulatorServer) -> None:
    simulator.faults.drop_ws_after = 2
    with client(simulator) as http, open_ws(simulator, "d") as ws:
        received = [next_message(ws)]
        submit(http, _seeded(1), client_id="d")
        received.append(next_message(ws))
        with pytest.raises(ConnectionClosed):
            next_message(ws, timeout=5)
    assert [f["type"] for f in received] == ["status", "status"]


def test_history_delay(simulator: SimulatorServer) -> None:
    simulator.faults.history_delay_s = 0.3
    with client(simulator) as http, open_ws(simulator, "h") as ws:
        next_message(ws)
        body = submit(http, _seeded(1), client_id="h")
        while next_message(ws)["type"] != "execution_success":
            pass
        early = http.get(f"/history/{body['prompt_id']}").json()
        collect_until_done(ws, body["prompt_id"])
        late = http.get(f"/history/{body['prompt_id']}").json()
    assert early == {}
    assert late[body["prompt_id"]]["status"]["status_str"] == "success"


def test_execution_error_rate_is_seeded(tmp_path: Path) -> None:
    outcomes = []
    for run in range(2):
        faults = Faults(execution_error_rate=0.5, seed=3)
        config = SimulatorConfig(time_scale=0, output_dir=tmp_path / str(run))
        with start_simulator(config, faults=faults) as sim, client(sim) as http:
            ids = [submit(http, _seeded(seed))["prompt_id"] for seed in range(12)]
            outcomes.append([wait_history(http, i)["status"]["status_str"] for i in ids])
    assert outcomes[0] == outcomes[1]
    assert set(outcomes[0]) == {"success", "error"}


def test_faults_route(simulator: SimulatorServer) -> None:
    with client(simulator) as http:
        changed = http.post("/_tower/faults", json={"drop_ws_after": 5, "seed": 9})
        bad_name = http.post("/_tower/faults", json={"explode": True})
        bad_value = http.post("/_tower/faults", json={"http_500_rate": 2})
        current = http.get("/_tower/faults").json()
    assert changed.status_code == 200 and changed.json()["drop_ws_after"] == 5
    assert simulator.faults.drop_ws_after == 5 and simulator.faults.seed == 9
    assert bad_name.status_code == 400 and "explode" in bad_name.json()["error"]
    assert bad_value.status_code == 400 and "http_500_rate" in bad_value.json()["error"]
    assert current == {**Faults().to_json(), "drop_ws_after": 5, "seed": 9}


def test_busy_intervals_and_utilisation(simulator: SimulatorServer) -> None:
    with client(simulator) as http:
        for seed in (1, 2):
            wait_history(http, submit(http, _seeded(seed))["prompt_id"])
        wait_history(http, submit(http, _seeded(2))["prompt_id"])  # fully cached: no work
        busy = http.get("/_tower/busy").json()
    intervals = simulator.busy_intervals()
    assert len(intervals) == 2
    assert intervals[0][0] < intervals[0][1] <= intervals[1][0] < intervals[1][1]
    assert [tuple(i) for i in busy["intervals"]] == intervals
    assert 0 < busy["utilisation"] <= 1
    assert busy["busy_s"] == pytest.approx(sum(e - s for s, e in intervals))
    middle = (intervals[0][0] + intervals[0][1]) / 2
    with client(simulator) as http:
        window = http.get("/_tower/busy", params={"since": middle}).json()
        bad = http.get("/_tower/busy", params={"since": "yesterday"})
    assert window["intervals"] == [[middle, intervals[0][1]], list(intervals[1])]
    assert window["since"] == middle
    assert bad.status_code == 400


def test_free_unload_keeps_cache_but_frees_vram(simulator: SimulatorServer) -> None:
    with client(simulator) as http, open_ws(simulator, "f") as ws:
        next_message(ws)
        _run(http, ws, _seeded(1), "f")
        loaded = http.get("/system_stats").json()["devices"][0]
        http.post("/free", json={"unload_models": True})
        deadline = time.monotonic() + 5
        while http.get("/system_stats").json()["devices"][0]["vram_free"] < \
                loaded["vram_total"] and time.monotonic() < deadline:
            time.sleep(0.01)
        unloaded = http.get("/system_stats").json()["devices"][0]
        frames, _ = _run(http, ws, _seeded(1), "f")
    assert loaded["vram_free"] < loaded["vram_total"] == unloaded["vram_free"]
    assert _executing(frames) == []


def test_several_simulators_in_one_process(tmp_path: Path) -> None:
    configs = [SimulatorConfig(time_scale=0, name=f"gpu{i}", output_dir=tmp_path / str(i))
               for i in range(3)]
    servers = [start_simulator(c) for c in configs]
    try:
        results = []
        for sim in servers:
            with client(sim) as http:
                body = submit(http, _seeded(1))
                results.append((body["number"], wait_history(http, body["prompt_id"])))
    finally:
        for sim in servers:
            sim.stop()
    assert len({sim.port for sim in servers}) == 3
    assert [number for number, _ in results] == [0, 0, 0]
    for i, _ in enumerate(servers):
        assert (tmp_path / str(i) / "ep01" / "sh010_00001_.png").is_file()


def test_reusing_a_client_id_replaces_the_socket(simulator: SimulatorServer) -> None:
    with client(simulator) as http, open_ws(simulator, "same") as old:
        next_message(old)
        with open_ws(simulator, "same") as new:
            next_message(new)
            body = submit(http, _seeded(1), client_id="same")
            frames = collect_until_done(new, body["prompt_id"])
            with pytest.raises(ConnectionClosed):
                while True:
                    next_message(old, timeout=5)
    assert frames[-1]["data"]["prompt_id"] == body["prompt_id"]


def test_interrupt_for_another_prompt_is_ignored(simulator: SimulatorServer) -> None:
    with client(simulator) as http, open_ws(simulator, "n") as ws:
        next_message(ws)
        body = submit(http, _seeded(1, width=512, height=512), client_id="n")
        http.post("/interrupt", json={"prompt_id": "someone-else"})
        collect_until_done(ws, body["prompt_id"])
        entry = wait_history(http, body["prompt_id"])
    assert entry["status"]["status_str"] == "success"


def test_busy_port_fails_cleanly(simulator: SimulatorServer) -> None:
    before = threading.active_count()
    with pytest.raises(OSError):
        start_simulator(SimulatorConfig(time_scale=0), port=simulator.port)
    assert threading.active_count() == before
    with client(simulator) as http:
        assert http.get("/queue").status_code == 200


# -- forced renders: undeclared inputs, the node cache and /free ---------------------

def _fresh(graph: dict[str, Any], token: str = "tower-x-f1") -> dict[str, Any]:
    """``graph`` as tower.spec.graph forces it: the token on every root node."""
    forced = copy.deepcopy(graph)
    for node_id in root_nodes(forced):
        forced[node_id]["inputs"][FRESH_INPUT] = token
    return forced


def _entry_cached(entry: dict[str, Any]) -> list[str]:
    return next(data["nodes"] for event, data in entry["status"]["messages"]
                if event == "execution_cached")


def test_an_undeclared_input_is_accepted_kept_and_never_passed_to_the_node(
        simulator: SimulatorServer) -> None:
    graph = _seeded(3)
    graph["4"]["inputs"][FRESH_INPUT] = "tower-x-f1"
    graph["3"]["inputs"][FRESH_INPUT] = "tower-x-f1"
    simulator.faults.oom_above_batch = 0  # fail in KSampler to see what it was given
    with client(simulator) as http:
        body = submit(http, graph)
        entry = wait_history(http, body["prompt_id"])
    assert body["node_errors"] == {}
    assert entry["prompt"][2]["4"]["inputs"][FRESH_INPUT] == "tower-x-f1"
    error = _error(entry)
    assert error["node_id"] == "3"
    assert set(error["current_inputs"]) == {
        "model", "seed", "steps", "cfg", "sampler_name", "scheduler", "positive", "negative",
        "latent_image", "denoise"}


def test_an_undeclared_input_is_part_of_the_cache_key_of_the_node_and_its_descendants(
        simulator: SimulatorServer) -> None:
    with client(simulator) as http, open_ws(simulator, "c") as ws:
        next_message(ws)
        _run(http, ws, _seeded(1), "c")
        on_sampler = _seeded(1)
        on_sampler["3"]["inputs"][FRESH_INPUT] = "tower-x-f1"
        sampler_only, _ = _run(http, ws, on_sampler, "c")
        _run(http, ws, _seeded(1), "c")
        forced, entry = _run(http, ws, _fresh(_seeded(1)), "c")
        again, _ = _run(http, ws, _fresh(_seeded(1)), "c")
    assert _cached(sampler_only) == ["4", "6", "7", "5"]
    assert _executing(sampler_only) == ["3", "8", "9"]
    assert _cached(forced) == [] and _entry_cached(entry) == []
    assert sorted(_executing(forced)) == sorted(_seeded(1))  # the checkpoint load included
    assert _cached(again) == ["4", "6", "7", "5", "3", "8", "9"]  # same token: a cache hit


def test_free_resets_the_cache_once_between_queue_items_not_right_before_the_next_prompt(
        simulator: SimulatorServer) -> None:
    """Why ``/free {free_memory}`` cannot force a re-render (contract README item 9, 15).

    As ComfyUI's ``prompt_worker``, the simulator resets its cache once, after the item
    running when the ``/free`` came. An identical graph queued before ours (another
    run's) runs first, after the reset, and refills the cache: ours is then served
    entirely from it, with no new file. A forced graph executes every node regardless.
    """
    graph = _seeded(5, prefix="ep01/shFree")
    with client(simulator) as http:
        wait_history(http, submit(http, graph)["prompt_id"])  # rendered once already
        running = submit(http, long_graph(seed=11), client_id="other")
        deadline = time.monotonic() + 10
        while running["prompt_id"] not in {
                item[1] for item in http.get("/queue").json()["queue_running"]}:
            assert time.monotonic() < deadline, "the long prompt never started"
            time.sleep(0.005)
        theirs = submit(http, copy.deepcopy(graph), client_id="other")
        assert http.post("/free", json={"free_memory": True}).status_code == 200
        ours = submit(http, copy.deepcopy(graph), client_id="ours")
        forced = submit(http, _fresh(graph), client_id="ours")
        assert http.get("/queue").json()["queue_running"][0][1] == running["prompt_id"]
        wait_idle(http)
        entries = {name: wait_history(http, body["prompt_id"]) for name, body in
                   (("theirs", theirs), ("ours", ours), ("forced", forced))}
    assert _entry_cached(entries["theirs"]) == []  # the reset came after the long prompt
    assert _entry_cached(entries["ours"]) == list(graph)  # ...and ours ran from cache
    assert entries["ours"]["outputs"] == entries["theirs"]["outputs"]  # no new file
    assert _entry_cached(entries["forced"]) == []
    assert entries["forced"]["outputs"] != entries["theirs"]["outputs"]


def test_queue_log_is_the_servers_own_account_of_its_queue(tmp_path: Path) -> None:
    config = SimulatorConfig(time_scale=0.01, output_dir=tmp_path / "out")
    with start_simulator(config) as sim, client(sim) as http:
        first = submit(http, _seeded(1, "ep01/shA"))["prompt_id"]
        second = submit(http, _seeded(2, "ep01/shB"))["prompt_id"]
        front = submit(http, _seeded(3, "ep01/shC"), front=True)["prompt_id"]
        doomed = submit(http, _seeded(4, "ep01/shD"))["prompt_id"]
        http.post("/queue", json={"delete": [doomed]})
        for prompt_id in (first, second, front):
            wait_history(http, prompt_id)
        log = http.get("/_tower/queue_log").json()
    events = [(e["event"], e["prompt_id"]) for e in log["events"]]
    assert [e for e in events if e[0] == "queued"] == [
        ("queued", first), ("queued", second), ("queued", front), ("queued", doomed)]
    assert ("deleted", doomed) in events and ("started", doomed) not in events
    finished = [p for kind, p in events if kind == "finished"]
    assert finished.index(front) < finished.index(second)  # overtook the pending one
    numbers = {e["prompt_id"]: e["number"] for e in log["events"]}
    assert numbers[front] < 0 <= numbers[second]
    depths = [e["depth"] for e in log["events"]]
    assert log["max_depth"] == max(depths) >= 3 and depths[-1] == 0
    times = [e["t"] for e in log["events"]]
    assert times == sorted(times)
