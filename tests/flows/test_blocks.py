"""Blocks: saved and loaded for real, secrets kept out of reprs, used by a flow by name."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from flow_helpers import write_shot_list
from prefect import get_client
from prefect.settings import PREFECT_API_URL
from pydantic import ValidationError

from blocks import ComfyUIServer, RenderPresets, RenderStore
from flows.render_episode import render_episode
from tasks.setup import (
    ensure_concurrency_limits,
    resolve_data_root,
    resolve_presets,
    resolve_server,
    resolve_servers,
)
from tower.comfyui import limit_name, preview_limit_name, server_identity
from tower.planning.vram import GPU_PROFILES
from tower.shotlist.errors import InputError

pytestmark = pytest.mark.usefixtures("prefect_backend")


def test_server_block_round_trip_keeps_the_token_secret():
    ComfyUIServer(name="gpu-a", base_url="https://gpu-a.studio:8188/", token="s3cret",
                  gpu_profile="24gb", max_queue_depth=3).save("blk-gpu-a", overwrite=True)
    loaded = ComfyUIServer.load("blk-gpu-a")
    assert loaded.token.get_secret_value() == "s3cret"
    assert loaded.base_url == "https://gpu-a.studio:8188"
    assert "s3cret" not in repr(loaded) and "s3cret" not in repr(loaded.get_client())
    assert loaded.budget_mb == GPU_PROFILES["24gb"].budget_mb and loaded.max_queue_depth == 3
    assert loaded.limit_name == "comfyui-gpu-a"


@pytest.mark.parametrize(("fields", "field"), [
    ({"base_url": "ftp://x"}, "base_url"),
    ({"gpu_profile": "7gb"}, "gpu_profile"),
    ({"max_queue_depth": 0}, "max_queue_depth"),
    ({"name": "../etc"}, "name"),
])
def test_server_block_rejects_bad_fields_by_name(fields, field):
    with pytest.raises(ValidationError, match=field):
        ComfyUIServer(**{"name": "gpu", "base_url": "http://h:1", **fields})


@pytest.mark.parametrize(("entry", "name", "url"), [
    ("http://10.0.0.5:8188", "10.0.0.5-8188", "http://10.0.0.5:8188"),
    ("gpu-b=http://10.0.0.6:8188", "gpu-b", "http://10.0.0.6:8188"),
    (" http://GPU-C:8188/ ", "gpu-c-8188", "http://GPU-C:8188"),
    ("http://[::1]:8188", "0--1-8188", "http://[::1]:8188"),
])
def test_servers_from_urls_need_no_saved_block(entry, name, url):
    server = resolve_server(entry)
    assert (server.name, server.base_url, server.max_queue_depth) == (name, url, 2)


@pytest.mark.parametrize("url", ["http://10.0.0.5:8188", "https://u:pw@Render.Example/c/"])
def test_a_bare_url_is_named_alike_by_block_client_and_limits(url):
    server = ComfyUIServer.from_url(url)
    identity = server_identity(url)
    with server.get_client() as client:
        assert server.name == client.name == identity
    assert server.limit_name == limit_name(identity) == f"comfyui-{identity}"
    assert server.preview_limit_name == preview_limit_name(identity)
    assert (server.slot_limit(front=False), server.slot_limit(front=True)) == (
        server.limit_name, server.preview_limit_name)


@pytest.mark.parametrize(("entries", "why"), [
    (["no-such-block"], "neither a URL nor a saved ComfyUIServer block"),
    (["a=http://h:1", "a=http://h:2"], "more than once: a"),
    (["http://h:1", "http://h:1/"], "more than once: h-1"),
    (["x=http://h:1", "x-preview=http://h:2"], "same concurrency limit: comfyui-x-preview"),
    (["gpu-a="], "expected name=http"),
    (["../x=http://h:1"], "server name '../x'"),
])
def test_bad_entries_unknown_blocks_and_duplicates_are_reported(entries, why):
    with pytest.raises(ValueError, match=re.escape(why)):
        resolve_servers(entries)


def test_prefect_accepts_the_limits_of_a_bare_url():
    server = ComfyUIServer.from_url("http://10.0.0.5:8188")
    ensure_concurrency_limits([server])
    with get_client(sync_client=True) as client:
        for name, slots in (("comfyui-10.0.0.5-8188", server.max_queue_depth),
                            ("comfyui-10.0.0.5-8188-preview", 1)):
            assert client.read_global_concurrency_limit_by_name(name).limit == slots


def test_store_and_presets_blocks(tmp_path, monkeypatch):
    monkeypatch.setenv("TOWER_DATA_ROOT", "y")
    RenderStore(data_root=str(tmp_path / "farm")).save("blk-store", overwrite=True)
    assert resolve_data_root(None, "blk-store").root == tmp_path / "farm"
    assert resolve_data_root("x", "blk-store").root.name == "x"
    assert resolve_data_root(None, None).root.name == "y"
    RenderPresets(presets={"draft": {"steps": 6}}).save("blk-presets", overwrite=True)
    assert resolve_presets(None, "blk-presets")["draft"].steps == 6
    RenderPresets(presets={"draft": {"steps": 0}}).save("blk-bad", overwrite=True)
    with pytest.raises(InputError, match=r"blk-bad.*steps"):
        resolve_presets(None, "blk-bad")


def test_a_flow_renders_with_saved_blocks(tmp_path, sims):
    sim = sims("blk")
    ComfyUIServer(name="blk", base_url=sim.url).save("blk-sim", overwrite=True)
    RenderStore(data_root=str(tmp_path / "farm")).save("blk-farm", overwrite=True)
    shot_list = write_shot_list(tmp_path, shots=1, takes=2)
    state = render_episode(shot_list=str(shot_list), servers=["blk-sim"],
                           render_store="blk-farm", retries=0, return_state=True)
    assert state.is_completed(), state.message
    assert state.result()["takes_rendered"] == 2
    assert len(list((tmp_path / "farm" / "renders" / "ep01").rglob("sh010_*.png"))) == 2


def test_prefect_block_register_finds_the_three_blocks():
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    prefect = Path(sys.executable).with_name("prefect")
    result = subprocess.run([str(prefect), "block", "register", "-m", "blocks"],
                            capture_output=True, text=True, env=env, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "Successfully registered 3 blocks" in text, result.stdout
