"""``tower status``: are the servers up, what are they doing, how did the last run go.

:func:`gather_status` asks each ComfyUI server for its devices and queue and reads the
run log and the output index under the data root; the flows call it too, to log the
state of the farm before a night's work. A server that does not answer is reported as
unreachable with the reason, never raised, so one dead machine does not hide the rest.

Running flows (:class:`RunningFlow`) come from the Prefect API, which this module does
not import: the command line reads each running render's or preview's ETA table
(:class:`tower.runtime.progress.Progress` rows) and :func:`render_running` words them,
the time left counted from the reader's ``now``, not from when the table was written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import polars as pl

from tower.comfyui import ComfyUIClient, ComfyUIError
from tower.runtime.progress import Progress, ServerProgress, minutes
from tower.store.files import DataRoot
from tower.store.index import OutputIndex
from tower.store.metrics import MetricsStore, RunLog

DEDUP_WINDOW = timedelta(days=7)
MODEL_LOOKBACK = timedelta(days=2)
MB = 1024 * 1024


@dataclass(frozen=True)
class DeviceState:
    name: str
    vram_total_mb: float
    vram_free_mb: float


@dataclass(frozen=True)
class ServerState:
    """One server as seen just now; ``error`` says why it was not reachable."""

    name: str
    url: str
    reachable: bool
    error: str | None = None
    version: str | None = None
    running: int = 0
    pending: int = 0
    devices: tuple[DeviceState, ...] = ()
    last_checkpoint: str | None = None   # from the metrics: the model last rendered with
    last_batch_at: datetime | None = None


@dataclass(frozen=True)
class LastRun:
    run_id: str
    flow: str
    episode: str
    status: str
    finished_at: datetime
    takes_requested: int
    takes_deduped: int
    takes_rendered: int
    takes_failed: int


@dataclass(frozen=True)
class Status:
    """Servers, the last run and the output index."""

    servers: tuple[ServerState, ...]
    last_run: LastRun | None
    index_rows: int
    index_unique: int
    index_bytes: int
    dedup_hit_rate: float | None          # over the last DEDUP_WINDOW of runs


def probe(client: ComfyUIClient) -> ServerState:
    """Devices and queue of one server, or why it could not be asked."""
    try:
        stats = client.system_stats()
        queue = client.queue()
    except ComfyUIError as err:
        return ServerState(client.name, client.base_url, False, error=str(err))
    devices = tuple(DeviceState(d.name, d.vram_total / MB, d.vram_free / MB)
                    for d in stats.devices)
    return ServerState(client.name, client.base_url, True, version=stats.comfyui_version,
                       running=len(queue.running), pending=len(queue.pending), devices=devices)


def last_checkpoints(data: DataRoot, now: datetime) -> dict[str, tuple[str, datetime]]:
    """Per server name, the checkpoint of its latest batch in the last two days."""
    frame = (MetricsStore(data.metrics).scan((now - MODEL_LOOKBACK).date(), now.date())
             .filter(pl.col("status").is_in(("ok", "cached")))
             .sort("finished_at").group_by("server")
             .agg(pl.col("checkpoint").last(), pl.col("finished_at").last()).collect())
    return {server: (ckpt, at) for server, ckpt, at in frame.iter_rows()}


def last_run(runs: RunLog) -> LastRun | None:
    """The run that finished last, from the newest day of the run log."""
    days = runs.days()
    if not days:
        return None
    frame = runs.scan(datetime.fromisoformat(days[-1]).date()).sort("finished_at").collect()
    if frame.is_empty():
        return None
    r = frame.row(-1, named=True)
    return LastRun(r["run_id"], r["flow"], r["episode"], r["status"], r["finished_at"],
                   r["takes_requested"], r["takes_deduped"], r["takes_rendered"],
                   r["takes_failed"])


def dedup_hit_rate(runs: RunLog, now: datetime) -> float | None:
    """Takes served from the index over takes requested, for runs of the last week."""
    requested, deduped = (runs.scan((now - DEDUP_WINDOW).date(), now.date())
                          .filter(pl.col("started_at") >= now - DEDUP_WINDOW)
                          .select(pl.col("takes_requested").sum(), pl.col("takes_deduped").sum())
                          .collect().row(0))
    return deduped / requested if requested else None


def gather_status(clients: Sequence[ComfyUIClient], data: DataRoot, now: datetime) -> Status:
    """Probe ``clients`` and summarise the data root as of ``now``.

    A server's last model is found under its client's name: for a bare URL that is
    ``host-port`` (:func:`tower.comfyui.server_identity`), the name the flows record.
    """
    models = last_checkpoints(data, now)
    servers = []
    for client in clients:
        state = probe(client)
        known = models.get(client.name)
        if known:
            state = replace(state, last_checkpoint=known[0], last_batch_at=known[1])
        servers.append(state)
    runs = RunLog(data.runs)
    stats = OutputIndex(data.index).stats()
    return Status(tuple(servers), last_run(runs), stats.rows, stats.unique_keys,
                  stats.total_bytes, dedup_hit_rate(runs, now))


def _server_lines(s: ServerState) -> list[str]:
    if not s.reachable:
        return [f"{s.name} ({s.url}): UNREACHABLE: {s.error}"]
    lines = [f"{s.name} ({s.url}): up, ComfyUI {s.version or '?'}, "
             f"{s.running} running, {s.pending} pending"]
    lines += [f"  {d.name}: {d.vram_free_mb:,.0f} of {d.vram_total_mb:,.0f} MB VRAM free"
              for d in s.devices]
    if s.last_checkpoint:
        at = f"{s.last_batch_at:%Y-%m-%d %H:%M}" if s.last_batch_at else "?"
        lines.append(f"  last model: {s.last_checkpoint} (last batch {at} UTC)")
    return lines


def render_status(status: Status) -> str:
    """The status as lines of text for the terminal or a flow log."""
    lines = ["Servers:"]
    lines += [f"  {line}" for s in status.servers for line in _server_lines(s)] or \
        ["  none given (use --server URL)"]
    run = status.last_run
    if run is None:
        lines.append("Last run: none recorded")
    else:
        lines.append(f"Last run: {run.flow} {run.episode} {run.status} at "
                     f"{run.finished_at:%Y-%m-%d %H:%M} UTC ({run.run_id}): "
                     f"{run.takes_requested} takes requested, {run.takes_deduped} from the index, "
                     f"{run.takes_rendered} rendered, {run.takes_failed} failed")
    rate = "n/a" if status.dedup_hit_rate is None else f"{status.dedup_hit_rate:.0%}"
    lines.append(f"Output index: {status.index_rows:,} rows, {status.index_unique:,} unique "
                 f"images, {status.index_bytes / MB:,.1f} MB; dedup hit rate (7 days): {rate}")
    return "\n".join(lines)


@dataclass(frozen=True)
class RunningFlow:
    """A render or preview flow run in state Running, with its latest ETA table if any."""

    flow: str
    name: str
    started_at: datetime | None
    progress: Progress | None = None


def render_running(running: Sequence[RunningFlow] | None, now: datetime,
                   unavailable: str | None = None) -> str:
    """``Running flows:`` and one line per flow run (its progress line and how old it is),
    or why they could not be listed (``unavailable``, one line)."""
    if unavailable is not None or running is None:
        return f"Running flows: {unavailable or 'unknown'}"
    if not running:
        return "Running flows: none"
    lines = ["Running flows:"]
    for run in running:
        since = f" since {run.started_at:%H:%M} UTC" if run.started_at else ""
        head = f"  {run.flow} {run.name}{since}"
        if run.progress is None:
            lines.append(f"{head}: no progress published yet")
            continue
        age = minutes(max(now - run.progress.at, timedelta(0)))
        lines.append(f"{head}: {run.progress.line(now)} (as of {age} ago)")
        lines += [f"    {s.name}: {_server_progress(s, run.progress, now)}"
                  for s in run.progress.servers]
    return "\n".join(lines)


def _server_progress(server: ServerProgress, progress: Progress, now: datetime) -> str:
    """One server's share in the words of :meth:`Progress.line`, less the run's label."""
    line = Progress("", progress.at, server).line(now).removeprefix(": ")
    return f"{line} ({server.note})" if server.note else line
