"""A server's identity (``host-port``) and the concurrency limit names derived from it."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest

from tower.comfyui import ComfyUIClient, limit_name, preview_limit_name, server_identity
from tower.shotlist.names import check_name

LONG_HOST = "render-node-" + "a" * 70 + ".studio.example"


def recorded_by_the_flows(url: str) -> str:
    """The name the flows have written into the metrics since the start (old name_from_url)."""
    parts = urlsplit(url)
    host = parts.hostname or "comfyui"
    return re.sub(r"[^A-Za-z0-9.-]", "-", f"{host}-{parts.port}" if parts.port else host)


@pytest.mark.parametrize(("url", "name"), [
    ("http://10.0.0.5:8188", "10.0.0.5-8188"),
    ("http://127.0.0.1:8188/", "127.0.0.1-8188"),
    ("  http://gpu-a:8188  ", "gpu-a-8188"),                      # whitespace
    ("http://gpu-a", "gpu-a"),                                    # no port: none added
    ("https://render.example/comfy", "render.example"),           # https, port implied
    ("https://render.example:443/comfy", "render.example-443"),   # https, port written
    ("http://render:hunter2@gpu-a:8188", "gpu-a-8188"),           # userinfo stripped
    ("http://GPU-A.Studio:8188", "gpu-a.studio-8188"),            # uppercase
    ("http://gpu-a:8188/prefix?x=1&y=2#top", "gpu-a-8188"),       # path, query, fragment
    ("http://[::1]:8188", "0--1-8188"),                           # IPv6 loopback
    ("http://[fe80::1]:8188", "fe80--1-8188"),                    # IPv6
    ("http://[2001:DB8::7]/", "2001-db8--7"),                     # IPv6, no port, uppercase
    ("http://[fe80::]:8188", "fe80--0-8188"),                     # IPv6 ending in ::
    ("http://gpu_a:8188", "gpu-a-8188"),                          # odd characters
    ("http://gp%41:1", "gp-41-1"),
    ("http://gpü:8188", "gp--8188"),
    ("http://a..b:1", "a.b-1"),                                   # '..' is no name
    ("http://-gpu:1", "gpu-1"),                                   # starts with a letter/digit
    ("http://gpu.example.:8188", "gpu.example.-8188"),            # absolute DNS name
])
def test_server_identity(url: str, name: str) -> None:
    assert server_identity(url) == name
    assert check_name(name) == name  # it can name a block and a folder


def _is_a_name(text: str) -> bool:
    try:
        check_name(text)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("url", [
    "http://10.0.0.5:8188", "http://gpu-a", "https://render.example:443/x", "http://gpu_a:1",
    "http://render:pw@GPU-A.Studio:8188/", "http://[::1]:8188", "http://a..b:1",
])
def test_names_the_flows_recorded_are_kept(url: str) -> None:
    # every name the old rule gave that a block accepted is still the name: the metrics'
    # server column and `tower status` go on matching
    old = recorded_by_the_flows(url)
    if _is_a_name(old):
        assert server_identity(url) == old


def test_long_hosts_are_cut_and_stay_apart() -> None:
    a, b = (server_identity(f"http://{LONG_HOST}{suffix}:8188") for suffix in ("1", "2"))
    assert a.startswith(LONG_HOST[:55]) and re.fullmatch(r".{55}-[0-9a-f]{8}", a)
    assert a != b and check_name(a) == a


@pytest.mark.parametrize(("url", "why"), [
    ("http://", "needs a host"),
    ("gpu-a:8188", "needs a host"),
    ("", "needs a host"),
    ("http://user:s3cret@gpu-a:99999", "port"),
    ("http://user:s3cret@gpu-a:port", "port"),
    ("http://_", "no letter or digit"),
])
def test_server_identity_refuses(url: str, why: str) -> None:
    with pytest.raises(ValueError, match=why) as caught:
        server_identity(url)
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize("url", [
    "http://10.0.0.5:8188", "https://user:pw@Render.Example/comfy/", "http://[::1]:8188",
])
def test_the_client_is_named_by_its_identity(url: str) -> None:
    with ComfyUIClient(url) as client:
        assert client.name == server_identity(url)
    with ComfyUIClient(url, name="gpu-a") as named:
        assert named.name == "gpu-a"


@pytest.mark.parametrize(("server", "limit", "preview"), [
    ("10.0.0.5-8188", "comfyui-10.0.0.5-8188", "comfyui-10.0.0.5-8188-preview"),
    ("gpu-a", "comfyui-gpu-a", "comfyui-gpu-a-preview"),
    ("GPU_A", "comfyui-GPU_A", "comfyui-GPU_A-preview"),  # verbatim: GPU_A and gpu-a differ
])
def test_limit_names_are_the_server_name_verbatim(server: str, limit: str,
                                                  preview: str) -> None:
    assert (limit_name(server), preview_limit_name(server)) == (limit, preview)
    # Prefect refuses only these in a limit's name (prefect.types.names.BANNED_CHARACTERS)
    assert not set("/%&><") & set(limit + preview)
