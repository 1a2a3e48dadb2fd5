"""Executing one render batch end to end, with nothing Prefect in it.

A batch is rendered under its planned prompt id (so a retry adopts the prompt a
previous attempt left on the server instead of rendering it twice), while a GPU
sampler watches the device. A forced batch (``batch.fresh``) has a prompt id and a
graph of its run's own (:func:`tower.spec.graph.build_graph`), so every node executes anew
even on a server that still holds the same render in its history and node cache.
Each image goes to its take's own path under the render root, with its provenance in
PNG text chunks (:mod:`tower.runtime.provenance`) and an output check's verdict
(:mod:`tower.runtime.checks`: a suspect image is kept and indexed with status
``suspect``), then the batch's index rows and one metrics row are written before
returning: a crash after that loses nothing. A failure also writes its metrics row
(status ``failed``, ``oom`` or ``interrupted``) and then re-raises, so the caller's retry
policy decides what happens next. ``tasks/`` only adds retries, logging and the
server's slot on top.

Rendering (:func:`render_prompt`) and storing (:func:`store_rendered`) are separate
steps because they need different things: the first occupies a place in the server's
queue, the second only the network and the disk. The caller frees the server's slot
between them, so the next batch is queued while this one's images download.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from tower.comfyui import (
    ComfyUIClient,
    ComfyUIOutOfMemory,
    ComfyUIProtocolError,
    DownloadedFile,
    ImageRef,
    ProgressEvent,
    RenderResult,
)
from tower.planning.planner import RenderBatch, narrow_batch, split_batch
from tower.runtime.checks import Verdict, pixel_reasons, verdicts
from tower.runtime.failures import classify
from tower.runtime.gpu import GpuSampler, GpuSummary, sampler_for
from tower.runtime.provenance import PngError, provenance_fields, stamp
from tower.spec.graph import CHECKPOINT_NODE, build_graph
from tower.spec.outputs import take_output_path
from tower.spec.takes import ResolvedTake
from tower.store.files import DataRoot, atomic_write_bytes, inside, stripe_lock
from tower.store.index import IndexRow, OutputIndex
from tower.store.metrics import BatchMetrics, MetricsStore

MAX_ERROR_CHARS = 2000


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class RenderContext:
    """Where a run writes and how it renders; shared by every batch of the run."""

    data_root: DataRoot
    index: OutputIndex
    metrics: MetricsStore
    run_id: str
    flow_run_id: str | None = None
    vram_budget_mb: float | None = None
    front: bool = False
    timeout_s: float | None = None
    measure_gpu: Callable[[ComfyUIClient], GpuSampler] = sampler_for
    on_progress: Callable[[ProgressEvent], None] | None = None
    now: Callable[[], datetime] = field(default=_utc_now, repr=False)
    # The latest attempt of each batch id, shared by every batch of the run (copies of
    # the context share it), so the run counts its retries without reading its metrics.
    attempts: dict[str, int] = field(default_factory=dict, repr=False)
    # The parts of each batch id already stored (after an OOM split, one part may be
    # stored before another fails), shared like ``attempts`` so a retry on this or
    # another server renders only the takes still missing.
    stored: dict[str, list[BatchOutcome]] = field(default_factory=dict, repr=False)

    def note_attempt(self, batch_id: str, attempt: int) -> None:
        self.attempts[batch_id] = max(attempt, self.attempts.get(batch_id, 0))

    def retries(self, batch_ids: Collection[str]) -> int:
        """Attempts after the first of ``batch_ids`` (OOM halves have ids of their own)."""
        return sum(max(0, self.attempts.get(batch_id, 0) - 1) for batch_id in batch_ids)


@dataclass
class BatchOutcome:
    """What one batch left behind: images on disk, the rows written for it."""

    batch: RenderBatch
    status: str  # "ok" | "cached" | "failed" | "oom" | "interrupted"
    images: list[Path]
    index_rows: list[IndexRow]
    metrics: BatchMetrics
    error: str | None = None


def server_name(client: ComfyUIClient, batch: RenderBatch) -> str:
    """The name rows record: the client's own name, else the server the batch was planned for."""
    return getattr(client, "name", None) or batch.server


def _base_metrics(batch: RenderBatch, ctx: RenderContext, server: str, attempt: int,
                  result: RenderResult | None, gpu: GpuSummary | None) -> dict[str, object]:
    """The metrics fields known once the render has ended, whatever its outcome."""
    first = batch.takes[0]
    fields: dict[str, object] = {
        "run_id": ctx.run_id, "flow_run_id": ctx.flow_run_id, "batch_id": batch.batch_id,
        "server": server, "episode": batch.episode, "preset": batch.preset,
        "checkpoint": batch.checkpoint, "width": first.width, "height": first.height,
        "takes": batch.size, "batch_size": batch.size, "vae_tiled": batch.vae_tiled,
        "parts": batch.parts,
        "attempt": attempt, "vram_estimated_mb": batch.vram_estimate_mb,
        "vram_budget_mb": ctx.vram_budget_mb,
        "finished_at": (result.finished_at if result and result.finished_at else ctx.now()),
    }
    if gpu is not None and gpu.measured:
        fields |= {"vram_peak_mb": gpu.vram_peak_mb, "gpu_util_mean": gpu.util_mean}
    if result is not None:
        fields |= {
            "queued_at": result.queued_at, "started_at": result.started_at,
            "queue_wait_s": result.queue_wait_s, "execution_s": result.execution_s,
            "model_load_s": result.model_load_s, "sampling_s": result.sampling_s,
            "vae_decode_s": result.vae_decode_s, "cached_nodes": len(result.cached_nodes),
            "model_cache_hit": CHECKPOINT_NODE in result.cached_nodes,
        }
    return fields


def _record_failure(err: BaseException, batch: RenderBatch, ctx: RenderContext, server: str,
                    attempt: int, result: RenderResult | None,
                    gpu: GpuSummary | None) -> BatchMetrics:
    result = result or getattr(err, "result", None)
    row = BatchMetrics(**_base_metrics(batch, ctx, server, attempt, result, gpu),
                       status=classify(err).status, images=0,
                       error_type=type(err).__name__,
                       error_message=str(err)[:MAX_ERROR_CHARS] or type(err).__name__)
    ctx.metrics.append([row])
    return row


@dataclass(frozen=True)
class StoredImage:
    """One take's image as stored: its path relative to the render root, the file (sha256
    and size of the bytes on disk, provenance included) and the output check's verdict."""

    take: ResolvedTake
    relative: str
    file: DownloadedFile
    verdict: Verdict


def _download_one(client: ComfyUIClient, ref: ImageRef, take: ResolvedTake, dest: Path,
                  fields: dict[str, str]) -> tuple[DownloadedFile, list[str]]:
    """Fetch ``ref``, insert the provenance chunks (no pixel is decoded for that), look at
    the pixels, and write ``dest`` once: its sha256 and size are those of the file as
    stored."""
    try:
        data = stamp(client.fetch(ref), fields, name=f"{ref.relative_path} for {take.label}")
    except PngError as err:
        raise ComfyUIProtocolError(f"{fields['server']}: {err}") from err
    atomic_write_bytes(dest, data)
    return (DownloadedFile(path=dest, sha256=hashlib.sha256(data).hexdigest(), size=len(data)),
            pixel_reasons(data))


def _download_all(client: ComfyUIClient, batch: RenderBatch, result: RenderResult,
                  ctx: RenderContext, server: str,
                  kept: Collection[str] = ()) -> list[StoredImage]:
    """Image i to take i's path under the render root, each with its provenance and its
    output check (:mod:`tower.runtime.checks`; the size check compares the batch's files).
    Takes whose key is in ``kept`` are already stored and indexed: not downloaded."""
    if len(result.images) != batch.size:
        raise ComfyUIProtocolError(
            f"prompt {result.prompt_id} of batch {batch.label} produced "
            f"{len(result.images)} images for {batch.size} takes")
    stored = []
    for take, ref in zip(batch.takes, result.images, strict=True):
        if take.key in kept:
            continue
        relative = take_output_path(take)
        fields = provenance_fields(take, server=server, prompt_id=result.prompt_id,
                                   run_id=ctx.run_id)
        file, found = _download_one(client, ref, take, inside(ctx.data_root.renders, relative),
                                    fields)
        stored.append((take, relative, file, found))
    judged = verdicts([found for *_, found in stored], [file.size for _, _, file, _ in stored])
    return [StoredImage(take, relative, file, verdict)
            for (take, relative, file, _), verdict in zip(stored, judged, strict=True)]


def _no_new_work(result: RenderResult, asked_at: datetime) -> bool:
    """Whether the server did nothing for this call: all nodes cached, or the prompt was
    adopted after it had already finished (a retry of an attempt that rendered it).

    A prompt adopted while queued or running is real work whose earlier attempt left no
    successful metrics row, so it counts as ``ok``.
    """
    if result.cached:
        return True
    return result.adopted and result.finished_at is not None and result.finished_at <= asked_at


def _already_stored(batch: RenderBatch, ctx: RenderContext,
                    prompt_id: str) -> dict[str, IndexRow]:
    """Takes of ``batch`` whose image from this very prompt is on disk and indexed, by
    key: stored by another run that adopted the same prompt, by an earlier attempt or by
    an earlier run killed before it finished.

    Keeping them leaves one row per image and the file as its row describes it; storing
    them again would stamp the file with this run's provenance and index it twice. Only
    takes whose file exists are looked up, so a fresh batch costs one ``stat`` per take.
    Rows of other prompts (a forced run re-renders what an earlier one stored) are not
    kept.
    """
    renders = ctx.data_root.renders
    present = [take for take in batch.takes if (renders / take_output_path(take)).is_file()]
    if not present:
        return {}
    return {take.key: row for take, row in ctx.index.dedup(present, renders).rendered
            if row.prompt_id == prompt_id}


@dataclass
class Rendered:
    """A batch whose prompt ComfyUI has finished; its images are still on the server."""

    batch: RenderBatch
    result: RenderResult
    gpu: GpuSummary | None
    asked_at: datetime


def render_prompt(client: ComfyUIClient, batch: RenderBatch, ctx: RenderContext, *,
                  attempt: int = 1) -> Rendered:
    """Queue ``batch`` under its prompt id and wait until ComfyUI has executed it.

    Raises:
        ComfyUIError: after writing the attempt's metrics row (``failed``/``oom``/
            ``interrupted``).
    """
    graph = build_graph(batch.takes, batch.filename_prefix, fresh=batch.cache_buster)
    sampler = ctx.measure_gpu(client)
    asked_at = ctx.now()
    try:
        with sampler:
            result = client.render(graph, prompt_id=batch.prompt_id, front=ctx.front,
                                   timeout=ctx.timeout_s, on_progress=ctx.on_progress)
    except Exception as err:
        _record_failure(err, batch, ctx, server_name(client, batch), attempt, None,
                        sampler.summary())
        raise
    return Rendered(batch, result, sampler.summary(), asked_at)


def store_rendered(client: ComfyUIClient, rendered: Rendered, ctx: RenderContext, *,
                   attempt: int = 1) -> BatchOutcome:
    """Download a rendered batch's images to their takes' paths, then write its index rows
    and metrics row.

    Status ``cached`` means the server did no new work (every node cached, or the prompt
    had already finished under this id). Images already stored and indexed (another run
    adopted the same prompt and stored it first) are kept as they are, rows included.

    Raises:
        ComfyUIError: after writing the attempt's metrics row; a result with a wrong number
            of images is a ComfyUIProtocolError. Other errors (disk, stores) are recorded
            and re-raised too.
    """
    batch, result = rendered.batch, rendered.result
    server = server_name(client, batch)
    status = "cached" if _no_new_work(result, rendered.asked_at) else "ok"
    rendered_at = result.finished_at or ctx.now()
    try:
        # One prompt's images are stored by one process at a time (see _already_stored).
        with stripe_lock(ctx.data_root.root, result.prompt_id):
            kept = _already_stored(batch, ctx, result.prompt_id)
            started = time.monotonic()
            files = _download_all(client, batch, result, ctx, server, kept)
            download_s = time.monotonic() - started
            new = {image.take.key: IndexRow.from_take(
                image.take, output_path=image.relative, sha256=image.file.sha256,
                size_bytes=image.file.size, rendered_at=rendered_at, server=server,
                prompt_id=result.prompt_id, run_id=ctx.run_id, status=image.verdict.status,
                suspect_reason=image.verdict.reason) for image in files}
            ctx.index.append(list(new.values()))
    except Exception as err:
        _record_failure(err, batch, ctx, server, attempt, result, rendered.gpu)
        raise
    rows = [new.get(take.key) or kept[take.key] for take in batch.takes]
    paths = [ctx.data_root.renders / row.output_path for row in rows]
    metrics = BatchMetrics(**_base_metrics(batch, ctx, server, attempt, result, rendered.gpu),
                           status=status, download_s=download_s, images=len(rows),
                           suspect_images=sum(row.status == "suspect" for row in rows),
                           bytes_downloaded=sum(image.file.size for image in files))
    ctx.metrics.append([metrics])
    return BatchOutcome(batch, status, paths, rows, metrics)


def execute_batch(client: ComfyUIClient, batch: RenderBatch, ctx: RenderContext, *,
                  attempt: int = 1) -> BatchOutcome:
    """Render ``batch`` on ``client`` and store it (:func:`render_prompt`, then
    :func:`store_rendered`)."""
    return store_rendered(client, render_prompt(client, batch, ctx, attempt=attempt), ctx,
                          attempt=attempt)


def render_with_oom_split(client: ComfyUIClient, batch: RenderBatch, ctx: RenderContext, *,
                          attempt: int = 1) -> list[Rendered]:
    """Render ``batch``, halving it (recursively) each time the GPU runs out of memory.

    The OOM attempt is recorded by :func:`render_prompt`; each half is a batch of its
    own (its own id and prompt id; a forced batch's halves stay forced). Takes keep
    their noise indices, so halves render the same images the whole batch would have.

    Raises:
        ComfyUIOutOfMemory: a single take does not fit.
        ComfyUIError: any other failure, as :func:`render_prompt`.
    """
    try:
        return [render_prompt(client, batch, ctx, attempt=attempt)]
    except ComfyUIOutOfMemory:
        if batch.size <= 1:
            raise
    rendered: list[Rendered] = []
    for half in split_batch(batch):
        rendered += render_with_oom_split(client, half, ctx, attempt=attempt)
    return rendered


def execute_with_oom_split(client: ComfyUIClient, batch: RenderBatch, ctx: RenderContext, *,
                           attempt: int = 1,
                           queue_place: AbstractContextManager[object] | None = None,
                           ) -> list[BatchOutcome]:
    """Render ``batch`` with :func:`render_with_oom_split` while holding ``queue_place``
    (the server's slot), then, with the place given up, store every part of it.

    Returns the outcomes of every part of the batch, including parts an earlier attempt
    stored: an attempt only renders the takes no earlier attempt of this run stored, so
    a retry (here or on another server) never renders an indexed take a second time
    and never overwrites its file.
    """
    done = ctx.stored.setdefault(batch.batch_id, [])
    left = remaining_batch(batch, done)
    if left is None:
        return list(done)
    with queue_place or nullcontext():
        rendered = render_with_oom_split(client, left, ctx, attempt=attempt)
    for part in rendered:
        done.append(store_rendered(client, part, ctx, attempt=attempt))
    return list(done)


def remaining_batch(batch: RenderBatch, done: Sequence[BatchOutcome]) -> RenderBatch | None:
    """``batch`` less the takes of its parts in ``done``; None when nothing is left."""
    stored = {take.key for outcome in done for take in outcome.batch.takes}
    if not stored:
        return batch
    left = [take for take in batch.takes if take.key not in stored]
    return narrow_batch(batch, left) if left else None
