"""Everything Tower reads from the environment, and how a server entry is spelled.

The one place that knows the ``TOWER_*`` variables and reads them: the flows' setup
tasks and the command line ask here, nothing deeper in the library reads the
environment. Each function takes the environment as a mapping (``os.environ`` unless
given), so a test passes its own dict.

- ``TOWER_SERVERS``: the servers when none are given, entries separated by commas;
- ``TOWER_DATA_ROOT``: the data root when none is given (else ``data``).

(``TOWER_HOME``, the checkout a worker runs flows from, is read by ``prefect.yaml``'s
pull step, not by Python.)

A server entry (a ``--server`` option, an item of a flow's ``servers`` parameter or of
``TOWER_SERVERS``) is one of

- a URL, ``http(s)://host[:port][/prefix]``: the server is named ``host-port``
  (:func:`tower.comfyui.server_identity`);
- ``name=URL``: the same server under a name of one's own (a URL's query may hold ``=``:
  only an ``=`` before the first ``://`` names it);
- anything else: the name of a saved ``ComfyUIServer`` block (block names cannot hold
  ``=`` or ``://``, so the three never overlap).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tower.comfyui import server_identity
from tower.shotlist.names import check_name
from tower.store.files import DEFAULT_DATA_ROOT

SERVERS_ENV = "TOWER_SERVERS"
DATA_ROOT_ENV = "TOWER_DATA_ROOT"
ENV_VARS = (SERVERS_ENV, DATA_ROOT_ENV)
SCHEME_MARK = "://"


@dataclass(frozen=True)
class ServerEntry:
    """One server entry, parsed: a URL with or without a name, or a saved block's name.

    Exactly one of ``url`` and ``block`` is set; ``name`` only with ``url``.
    """

    url: str | None = None
    name: str | None = None
    block: str | None = None

    @property
    def server_name(self) -> str | None:
        """The name the server will go by; None for a block (its name is saved in it)."""
        if self.url is None:
            return None
        return self.name or server_identity(self.url)


def parse_server_entry(text: str) -> ServerEntry:
    """A server entry: ``URL``, ``name=URL`` or a saved block name (surrounding spaces dropped).

    The URL itself is checked by whoever connects to it (the client, the block); here
    only the form. Error messages leave the URL out: it may carry a password.

    Raises:
        ValueError: an empty entry, ``name=`` with no URL after it, or a name that
            :func:`tower.shotlist.names.check_name` refuses.
    """
    entry = text.strip()
    if not entry:
        raise ValueError("a server entry is empty")
    name, sep, url = entry.partition("=")
    if not sep or SCHEME_MARK in name:
        return ServerEntry(url=entry) if SCHEME_MARK in entry else ServerEntry(block=entry)
    name, url = name.strip(), url.strip()
    if SCHEME_MARK not in url:
        raise ValueError(f"server entry {name!r}=...: expected name=http(s)://host[:port]")
    try:
        check_name(name)
    except ValueError as err:
        raise ValueError(f"server name {name!r}: {err}") from None
    return ServerEntry(url=url, name=name)


def split_list(value: str | None) -> list[str]:
    """Comma-separated items, stripped, empty ones dropped (``"a, ,b"`` -> ``[a, b]``)."""
    return [item.strip() for item in (value or "").split(",") if item.strip()]


def env_servers(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The server entries of ``TOWER_SERVERS`` (empty when unset or blank)."""
    return split_list(environ.get(SERVERS_ENV))


def server_entries(given: Sequence[str] | None,
                   environ: Mapping[str, str] = os.environ) -> list[str]:
    """The entries given (a flow parameter, ``--server`` options), else ``TOWER_SERVERS``."""
    return list(given) if given else env_servers(environ)


def data_root_path(given: str | os.PathLike[str] | None = None,
                   environ: Mapping[str, str] = os.environ) -> Path:
    """The data root given, else ``TOWER_DATA_ROOT`` (when not blank), else ``data``."""
    if given:
        return Path(given)
    from_env = environ.get(DATA_ROOT_ENV, "").strip()
    return Path(from_env) if from_env else DEFAULT_DATA_ROOT
