"""Turning flow parameters into servers, a data root and presets; creating the limits.

Saved blocks are optional: a server entry is either a saved ``ComfyUIServer`` block
name or a URL (``http://host:port``, or ``name=http://host:port`` to name it), so a
first run needs nothing saved. Entries are parsed, and ``TOWER_*`` defaults read, by
:mod:`tower.settings`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path

from prefect import get_client
from prefect.exceptions import ObjectAlreadyExists

from blocks.comfyui_server import ComfyUIServer
from blocks.render_store import RenderPresets, RenderStore
from tower import settings
from tower.planning.planner import ServerSpec
from tower.runtime.execute import RenderContext
from tower.runtime.inputs import Inventory
from tower.runtime.runs import run_id
from tower.shotlist.presets import Preset, load_presets
from tower.store.files import DataRoot
from tower.store.index import OutputIndex
from tower.store.metrics import MetricsStore

DEFAULT_SERVER_URL = "http://127.0.0.1:8188"


def resolve_server(entry: str) -> ComfyUIServer:
    """A server from a URL, ``name=URL`` or the name of a saved ComfyUIServer block.

    Raises:
        ValueError: a malformed entry (:func:`tower.settings.parse_server_entry`), or a
            block name that is not saved.
    """
    parsed = settings.parse_server_entry(entry)
    if parsed.url is not None:
        return ComfyUIServer.from_url(parsed.url, name=parsed.name)
    try:
        return ComfyUIServer.load(parsed.block)
    except ValueError as err:
        raise ValueError(f"server {parsed.block!r} is neither a URL nor a saved ComfyUIServer "
                         f"block ({err})") from None


def resolve_servers(entries: Sequence[str] | None) -> list[ComfyUIServer]:
    """Every server of a run, with unique names (``DEFAULT_SERVER_URL`` when none given).

    Unique names give unique concurrency limits too, except that a server named
    ``x-preview`` would share its limit with the previews of ``x``: refused as well.

    Raises:
        ValueError: an entry that is not a URL or a saved block, or a name used twice.
    """
    servers = [resolve_server(e) for e in (entries or [DEFAULT_SERVER_URL]) if e.strip()]
    names = [s.name for s in servers]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"servers named more than once: {', '.join(twice)}")
    limits = [limit for s in servers for limit in (s.limit_name, s.preview_limit_name)]
    shared = sorted({n for n in limits if limits.count(n) > 1})
    if shared:
        raise ValueError(f"servers whose names give the same concurrency limit: "
                         f"{', '.join(shared)}")
    return servers


def server_entries(entries: Sequence[str] | None) -> list[str] | None:
    """A flow's ``servers`` parameter, else ``TOWER_SERVERS``, else None."""
    return settings.server_entries(entries) or None


def resolve_store(path: str | None, store_block: str | None) -> tuple[DataRoot, str | None]:
    """The data root and the address the studio serves it under, reading the block once.

    The root: a path, else a saved RenderStore block, else ``TOWER_DATA_ROOT``, else
    data/. The address is the block's ``base_url``; None for a folder given as a path or
    from ``TOWER_DATA_ROOT`` (summaries then name files relative to the data root).
    """
    if path:
        return DataRoot(Path(path)), None
    if store_block:
        store = RenderStore.load(store_block)
        return store.get_data_root(), store.base_url
    return DataRoot(settings.data_root_path()), None


def resolve_data_root(path: str | None, store_block: str | None) -> DataRoot:
    """The data root alone (:func:`resolve_store`)."""
    return resolve_store(path, store_block)[0]


def resolve_data_url(path: str | None, store_block: str | None) -> str | None:
    """The data root's address alone (:func:`resolve_store`)."""
    return resolve_store(path, store_block)[1]


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


def server_specs(servers: Iterable[ComfyUIServer],
                 inventories: Mapping[str, Inventory | None] | None = None) -> list[ServerSpec]:
    """What the planner needs to know about each server (its model files when known)."""
    inventories = inventories or {}
    return [ServerSpec(name=s.name, vram_budget_mb=s.budget_mb, speed=s.speed,
                       models=inventories.get(s.name)) for s in servers]


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
