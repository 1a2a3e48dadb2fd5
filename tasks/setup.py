"""Turning flow parameters into servers, a data root and presets; creating the limits.

Saved blocks are optional: a server entry is either a saved ``ComfyUIServer`` block
name or a URL (``http://host:port``, or ``name=http://host:port`` to name it), so a
first run needs nothing saved. Environment defaults are read by the flows, not here.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path

from prefect import get_client
from prefect.exceptions import ObjectAlreadyExists

from blocks.comfyui_server import ComfyUIServer
from blocks.render_store import RenderPresets, RenderStore
from tower.planning.planner import ServerSpec
from tower.runtime.execute import RenderContext
from tower.runtime.runs import run_id
from tower.shotlist.presets import Preset, load_presets
from tower.store.files import DEFAULT_DATA_ROOT, DataRoot
from tower.store.index import OutputIndex
from tower.store.metrics import MetricsStore

DEFAULT_SERVER_URL = "http://127.0.0.1:8188"
SERVERS_ENV = "TOWER_SERVERS"
DATA_ROOT_ENV = "TOWER_DATA_ROOT"


def resolve_server(entry: str) -> ComfyUIServer:
    """A server from a URL, ``name=URL`` or the name of a saved ComfyUIServer block."""
    entry = entry.strip()
    name, sep, url = entry.partition("=")
    if sep and "://" in url and "://" not in name:
        return ComfyUIServer.from_url(url.strip(), name=name.strip())
    if "://" in entry:
        return ComfyUIServer.from_url(entry)
    try:
        return ComfyUIServer.load(entry)
    except ValueError as err:
        raise ValueError(f"server {entry!r} is neither a URL nor a saved ComfyUIServer block "
                         f"({err})") from None


def resolve_servers(entries: Sequence[str] | None) -> list[ComfyUIServer]:
    """Every server of a run, with unique names (``DEFAULT_SERVER_URL`` when none given).

    Raises:
        ValueError: an entry that is not a URL or a saved block, or a name used twice.
    """
    servers = [resolve_server(e) for e in (entries or [DEFAULT_SERVER_URL]) if e.strip()]
    names = [s.name for s in servers]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"servers named more than once: {', '.join(twice)}")
    return servers


def split_env_list(value: str | None) -> list[str] | None:
    """``TOWER_SERVERS``-style comma-separated values, or None when unset/empty."""
    items = [item.strip() for item in (value or "").split(",") if item.strip()]
    return items or None


def server_entries(entries: Sequence[str] | None) -> list[str] | None:
    """A flow's ``servers`` parameter, else ``TOWER_SERVERS``, else None."""
    return list(entries) if entries else split_env_list(os.environ.get(SERVERS_ENV))


def resolve_data_root(path: str | None, store_block: str | None) -> DataRoot:
    """The data root: a path, else a saved RenderStore block, else ``TOWER_DATA_ROOT``,
    else data/."""
    if path:
        return DataRoot(Path(path))
    if store_block:
        return RenderStore.load(store_block).get_data_root()
    env_default = os.environ.get(DATA_ROOT_ENV)
    return DataRoot(Path(env_default) if env_default else DEFAULT_DATA_ROOT)


def render_context(root: DataRoot, label: str, started: datetime, flow_run_id: str | None,
                   *, front: bool = False) -> RenderContext:
    """The stores and ids every batch of one run writes with.

    The run id (:func:`tower.runtime.runs.run_id`) is what index rows, metrics rows and
    the run log of the run share.
    """
    return RenderContext(data_root=root, index=OutputIndex(root.index),
                         metrics=MetricsStore(root.metrics),
                         run_id=run_id(label, started, flow_run_id),
                         flow_run_id=flow_run_id, front=front)


def resolve_presets(presets_file: str | None, presets_block: str | None) -> dict[str, Preset]:
    """Built-in presets, overridden by a presets file or a saved RenderPresets block."""
    if presets_file:
        return load_presets(Path(presets_file))
    if presets_block:
        return RenderPresets.load(presets_block).get_presets()
    return load_presets(None)


def server_specs(servers: Iterable[ComfyUIServer]) -> list[ServerSpec]:
    """What the planner needs to know about each server."""
    return [ServerSpec(name=s.name, vram_budget_mb=s.budget_mb, speed=s.speed) for s in servers]


PREVIEW_SLOTS = 1


def ensure_concurrency_limits(servers: Iterable[ComfyUIServer]) -> None:
    """Create (or resize) each server's global concurrency limits; safe to run concurrently.

    ``render_batch`` acquires them with ``strict=True``: a missing limit is an error
    rather than, silently, no limit at all.
    """
    with get_client(sync_client=True) as client:
        for server in servers:
            for name, slots in ((server.limit_name, server.max_queue_depth),
                                (server.preview_limit_name, PREVIEW_SLOTS)):
                # Another run may create it between the upsert's read and its create.
                with contextlib.suppress(ObjectAlreadyExists):
                    client.upsert_global_concurrency_limit_by_name(name, slots)
