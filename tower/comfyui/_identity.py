"""A server's identity: the one name a ComfyUI server goes by everywhere.

A server given as a bare URL is named ``host-port`` (``http://10.0.0.5:8188`` ->
``10.0.0.5-8188``): the client's default ``name``, the ``ComfyUIServer`` block's default
name, the ``server`` column of every metrics row, the Prefect concurrency limits and
``tower status`` all use :func:`server_identity`, so a name recorded by one is found by
the others. The spelling is the one the flows have recorded in the metrics from the
start; changing it would orphan every row already written.

The rule, for the host and port written in the URL (userinfo, path and query ignored):

- the host lowercased (DNS names are case-insensitive), then ``-<port>`` when the URL
  spells a port (``https://h`` is ``h``, ``https://h:443`` is ``h-443``: the flows have
  always recorded them apart);
- every character other than a letter, digit, ``.`` or ``-`` becomes ``-``
  (``[fe80::1]:8188`` -> ``fe80--1-8188``); an IPv6 address that starts or ends with
  ``::`` gets the ``0`` it stands for first (``[::1]`` -> ``0--1``), so the name still
  starts with a letter or digit;
- runs of dots become one dot; names over 64 characters keep 55 and end in
  ``-<8 hex of sha256>``.

The result always passes :func:`tower.shotlist.names.check_name`, so it can be a
block's name and a folder name.

Concurrency limits are derived from a server's name (the identity, or the name an
operator gave) by one rule, :func:`limit_name`: ``comfyui-<name>``, and
:func:`preview_limit_name`: ``comfyui-<name>-preview``. Prefect refuses only ``/ % & >
<`` in limit names; a server name has none of them, so the name is used verbatim and
two servers with different names never share a limit.

A model file's identity (its fingerprint in render keys) is defined below, with the
server's: see the comment before :func:`header_digest`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol
from urllib.parse import urlsplit

MAX_NAME_LENGTH = 64
_HASH_LENGTH = 8
_NOT_NAME_CHAR = re.compile(r"[^A-Za-z0-9.-]")
_DOTS = re.compile(r"\.{2,}")
LIMIT_PREFIX = "comfyui-"
PREVIEW_SUFFIX = "-preview"


def _host_and_port(url: str) -> tuple[str, int | None]:
    """The host (lowercased, no brackets) and the port written in ``url``.

    Raises:
        ValueError: no host, or a port that is not a number from 0 to 65535. The URL
            itself is left out of the message: it may carry a password.
    """
    parts = urlsplit(url.strip())
    try:
        port = parts.port
    except ValueError as err:
        raise ValueError(f"a server URL's port must be a number from 0 to 65535 ({err})") \
            from None
    if not parts.hostname:
        raise ValueError("a server URL needs a host: http(s)://host[:port]")
    return parts.hostname, port


def _pad_ipv6(host: str) -> str:
    """``::1`` -> ``0::1``, ``fe80::`` -> ``fe80::0``: the same address, no edge colon."""
    if ":" not in host:
        return host
    return ("0" if host.startswith(":") else "") + host + ("0" if host.endswith(":") else "")


def _fit(name: str) -> str:
    """``name`` cut to ``MAX_NAME_LENGTH`` with a hash of the whole, so cuts stay unique."""
    if len(name) <= MAX_NAME_LENGTH:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:_HASH_LENGTH]
    return f"{name[:MAX_NAME_LENGTH - _HASH_LENGTH - 1]}-{digest}"


def server_identity(url: str) -> str:
    """The name of the server at ``url``: ``host-port`` (see the module docstring).

    Raises:
        ValueError: ``url`` has no host or a bad port.
    """
    host, port = _host_and_port(url)
    raw = _pad_ipv6(host) + (f"-{port}" if port is not None else "")
    name = _DOTS.sub(".", _NOT_NAME_CHAR.sub("-", raw)).lstrip(".-")
    if not name:
        raise ValueError("a server URL's host has no letter or digit to name it by")
    return _fit(name)


def limit_name(server_name: str) -> str:
    """The Prefect global concurrency limit capping the batches queued on a server."""
    return f"{LIMIT_PREFIX}{server_name}"


def preview_limit_name(server_name: str) -> str:
    """The limit of a server's preview batches, beside :func:`limit_name`'s slots."""
    return f"{limit_name(server_name)}{PREVIEW_SUFFIX}"


# --- model files ------------------------------------------------------------------
#
# A model file's identity. ComfyUI offers no hash of a model file; the one thing it says
# about a file's content is ``GET /view_metadata/<folder>?filename=``: the safetensors
# header's ``__metadata__`` map (training settings, dates, often a hash the trainer
# wrote), or 404 when the file has none. Its digest tells a retrained or swapped file
# from the old one whenever the headers differ; a file re-written with an identical
# header (or none, like most ControlNet and upscale models) looks unchanged. The presets
# file's optional ``revision`` per file name covers that: the studio bumps it when it
# replaces a file, and the fingerprint changes whatever the header says.

_HEADER_HEX = 32
NO_HEADER = ""


def header_digest(metadata: Mapping[str, str] | None) -> str:
    """The first 32 hex of sha256 over the header as canonical JSON (keys sorted: the
    safetensors writer keeps no order); :data:`NO_HEADER` for no header or an empty one."""
    if not metadata:
        return NO_HEADER
    encoded = json.dumps(dict(metadata), sort_keys=True, ensure_ascii=False,
                         separators=(",", ":"))
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()[:_HEADER_HEX]


def model_fingerprint(header: str, revision: str | None = None) -> str:
    """``meta:<digest>``, ``rev:<revision>`` or both (space-separated); empty when the file
    has neither, and then it has no identity (a take keeps its name-based key for it)."""
    parts = [f"meta:{header}"] if header else []
    if revision:
        parts.append(f"rev:{revision}")
    return " ".join(parts)


class MetadataReader(Protocol):
    """What :func:`read_headers` needs of a client (``ComfyUIClient`` has it)."""

    def view_metadata(self, folder: str, filename: str) -> dict[str, str] | None: ...


class ServerModels(dict[str, frozenset[str]]):
    """A server's model inventory (folder -> file names) with the header digest of every
    file it was asked about (``"<folder>/<file>"`` -> :func:`header_digest`).

    It is an inventory wherever one is expected; ``headers`` travels with it from the
    run's one inventory pass to planning, so each server is asked once per run.
    """

    def __init__(self, folders: Mapping[str, frozenset[str]],
                 headers: Mapping[str, str] | None = None):
        super().__init__(folders)
        self.headers: dict[str, str] = dict(headers or {})

    def __reduce__(self) -> tuple[Any, ...]:
        return (ServerModels, (dict(self), self.headers))


def read_headers(client: MetadataReader, files: Iterable[tuple[str, str]],
                 workers: int = 8) -> dict[str, str]:
    """``"<folder>/<file>"`` -> header digest of each ``(folder, file)``, asked in
    ``workers`` parallel requests (ComfyUI reads only the header: each answer is quick).

    Raises:
        ComfyUIError: the server could not be asked (the first failure).
    """
    wanted = sorted(set(files))
    if not wanted:
        return {}
    with ThreadPoolExecutor(max_workers=min(workers, len(wanted))) as pool:
        answers = pool.map(lambda pair: client.view_metadata(*pair), wanted)
        return {f"{folder}/{name}": header_digest(meta)
                for (folder, name), meta in zip(wanted, answers, strict=True)}


def header_conflicts(headers: Mapping[str, Mapping[str, str]],
                     files: Iterable[str]) -> list[str]:
    """One line per file of ``files`` two servers describe differently (``headers``:
    server name -> its digests), naming the servers and what each holds; a render key
    names one model, so such a run would mix two models under one key."""
    lines = []
    for name in sorted(set(files)):
        seen: dict[str, list[str]] = {}
        for server, digests in sorted(headers.items()):
            if name in digests:
                seen.setdefault(digests[name], []).append(server)
        if len(seen) > 1:
            held = "; ".join(f"{', '.join(servers)}: "
                             f"{'header ' + digest if digest else 'no metadata header'}"
                             for digest, servers in sorted(seen.items()))
            lines.append(f"{name} differs between servers ({held})")
    return lines
