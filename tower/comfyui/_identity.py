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
"""

from __future__ import annotations

import hashlib
import re
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
