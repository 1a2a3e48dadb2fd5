"""The batch planner: takes still to render become ComfyUI prompts on servers.

A render batch is one prompt: consecutive takes of one shot at one preset with
identical settings (see :func:`tower.spec.graph.check_batch`), as many as fit the server's
VRAM budget, capped by the preset's ``max_batch``.

How work is placed:

1. Takes are cut into *chunks*: consecutive takes sharing every setting, at most
   ``max_batch`` long. A chunk goes to one server, which renders it in one or more
   batches sized for its own budget.
2. Chunks are grouped by checkpoint, the most constrained group (the fewest servers
   that can hold its chunks) first, then the heaviest; within a group, chunks of the
   same prompt sit next to each other (ComfyUI reuses the text encoding).
3. A whole group goes to one server when one can take it and stay within a fair share
   of the total work (total estimated seconds over total speed, plus one chunk); the
   server that already has the checkpoint loaded is preferred. A group too big for
   any share fills one server up to its share, then the next, so a checkpoint spans
   as few servers as the balance allows; the little left over (model loads push
   servers past their share) goes chunk by chunk to whichever server finishes it
   first, a model load counted when its checkpoint differs.
4. Each server renders its batches grouped by checkpoint (its loaded one first), so
   its model swaps equal the distinct checkpoints it serves, less one if it starts
   with the right one.

The VAE decode (full or tiled) is part of the render key, so it is decided once, before
dedup, by :func:`apply_decode_policy` (tiled only for a take no server can decode whole
under the default VRAM model; :class:`PlanningError` when not even tiled fits, saying
the estimate, the largest budget and what to change). The planner never switches a
decode, whatever model it sizes batches with (see :mod:`tower.planning.pipeline`): a
chunk its model says fits no server is planned one take per batch on the largest
budget. Everything is deterministic:
the same takes and servers give the same plan and the same batch ids (a hash of the
takes' render keys), so submitting a plan twice is idempotent. A forced run passes its
``fresh`` token (:func:`tower.planning.batches.force_token`): the same plan, but every batch (and
every OOM half) gets prompt ids and graphs of that run's own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import groupby

from tower.planning.batches import Plan, RenderBatch, ServerSpec, batch_id_for, force_token
from tower.planning.timing import TimeModel
from tower.planning.vram import VramModel
from tower.shotlist.presets import Preset
from tower.spec.takes import ResolvedTake

__all__ = [
    "Plan", "PlanningError", "RenderBatch", "ServerSpec", "TimeModel", "apply_decode_policy",
    "batch_id_for", "force_token", "plan_batches", "split_batch",
]



class PlanningError(ValueError):
    """The takes cannot be planned on these servers; the message says what to change."""


@dataclass
class _Chunk:
    """Consecutive takes with one set of settings, placed on one server as a whole."""

    takes: tuple[ResolvedTake, ...]
    max_batch: int
    fit: dict[str, int] = field(default_factory=dict)       # server -> batch size
    cost: dict[str, float] = field(default_factory=dict)    # server -> seconds

    @property
    def first(self) -> ResolvedTake:
        return self.takes[0]


@dataclass
class _Models:
    vram: VramModel
    time: TimeModel

    def vram_mb(self, take: ResolvedTake, size: int) -> float:
        return self.vram.estimate_mb(take.checkpoint, take.width, take.height, size,
                                     take.vae_tiled, take.vae_tile_size)

    def seconds(self, take: ResolvedTake, size: int) -> float:
        return self.time.estimate_seconds(self.vram.family(take.checkpoint), take.width,
                                          take.height, size, take.steps, take.vae_tiled)

    def load_seconds(self, checkpoint: str) -> float:
        return self.time.load_seconds(self.vram.family(checkpoint))


def plan_batches(takes: Sequence[ResolvedTake], servers: Sequence[ServerSpec],
                 presets: Mapping[str, Preset], vram: VramModel | None = None,
                 time_model: TimeModel | None = None, fresh: str | None = None) -> Plan:
    """Plan ``takes`` (dedup's ``to_render``, decode decided) onto ``servers``.

    Every distinct take is planned exactly once; identical duplicates are planned once.
    ``fresh`` (a forced run's token) goes on every batch; it changes no placement. A
    chunk that fits no server under ``vram`` is planned one take per batch on the
    servers with the largest budget, its estimate above that budget (the pipeline warns).

    Raises:
        PlanningError: no servers, duplicate server names or an unknown preset.
    """
    _check_servers(servers)
    models = _Models(vram or VramModel(), time_model or TimeModel())
    chunks = [_fit_chunk(c, servers, models) for c in _chunks(takes, presets)]
    order = _chunk_order(chunks)
    placed = _place(order, servers, models)
    plan = _build_plan(placed, servers, models)
    return plan if fresh is None else plan.forced(fresh)


def _check_servers(servers: Sequence[ServerSpec]) -> None:
    if not servers:
        raise PlanningError("no servers to plan for")
    names = [s.name for s in servers]
    if len(set(names)) != len(names):
        raise PlanningError(f"server names must be unique: {names}")
    for s in servers:
        if s.vram_budget_mb <= 0 or s.speed <= 0:
            raise PlanningError(f"server {s.name}: vram_budget_mb and speed must be positive")


def _chunks(takes: Sequence[ResolvedTake], presets: Mapping[str, Preset]) -> list[_Chunk]:
    """Consecutive same-settings takes, cut to the preset's max_batch."""
    # repr: optional parts (None or frozen data) do not order among themselves.
    unique = sorted(set(takes), key=lambda t: (repr(t.settings), t.take))
    chunks: list[_Chunk] = []
    for _, same in groupby(unique, key=lambda t: t.settings):
        group = list(same)
        preset = presets.get(group[0].preset)
        if preset is None:
            raise PlanningError(f"{group[0].label}: unknown preset {group[0].preset!r};"
                                f" known: {', '.join(sorted(presets))}")
        run: list[ResolvedTake] = []
        for take in group:
            if run and (take.take != run[-1].take + 1 or len(run) == preset.max_batch):
                chunks.append(_Chunk(tuple(run), preset.max_batch))
                run = []
            run.append(take)
        chunks.append(_Chunk(tuple(run), preset.max_batch))
    return chunks


def _largest_fit(take: ResolvedTake, limit: int, budget: float, models: _Models) -> int:
    """The largest batch size up to ``limit`` whose estimate fits ``budget`` (0: none)."""
    best = 0
    for size in range(1, limit + 1):
        if models.vram_mb(take, size) > budget:
            break
        best = size
    return best


def _fit_chunk(chunk: _Chunk, servers: Sequence[ServerSpec], models: _Models) -> _Chunk:
    """Batch sizes and costs per server; the largest budgets take what fits nowhere."""
    limit = min(chunk.max_batch, len(chunk.takes))
    fits = {s.name: _largest_fit(chunk.first, limit, s.vram_budget_mb, models) for s in servers}
    if not any(fits.values()):
        largest = max(s.vram_budget_mb for s in servers)
        fits = {s.name: int(s.vram_budget_mb == largest) for s in servers}
    for s in servers:
        size = fits[s.name]
        if size:
            chunk.fit[s.name] = size
            chunk.cost[s.name] = sum(models.seconds(chunk.first, len(part))
                                     for part in _slices(chunk.takes, size)) / s.speed
    return chunk


def _too_big(take: ResolvedTake, servers: Sequence[ServerSpec], models: _Models) -> str:
    biggest = max(servers, key=lambda s: s.vram_budget_mb)
    need = models.vram_mb(take, 1)
    return (f"{take.label} ({take.preset}, {take.checkpoint}, {take.width}x{take.height}): "
            f"estimated {need:.0f} MB for one take with tiled VAE decode (tile "
            f"{take.vae_tile_size}), but the largest budget is {biggest.vram_budget_mb:.0f} MB"
            f" ({biggest.name}); lower the resolution or the preset's vae_tile_size, use a "
            f"smaller checkpoint, or add a server with more VRAM")


def _slices(takes: Sequence[ResolvedTake], size: int) -> list[tuple[ResolvedTake, ...]]:
    return [tuple(takes[i:i + size]) for i in range(0, len(takes), size)]


def _chunk_order(chunks: list[_Chunk]) -> list[_Chunk]:
    """Checkpoint groups, the most constrained (fewest servers that fit) then heaviest first.

    Within a group: chunks that fit fewer servers first, then by prompt (same prompt
    together), shot and take. Placing what has few options first leaves the flexible
    work to even out the servers.
    """
    totals: dict[str, float] = {}
    options: dict[str, int] = {}
    for c in chunks:
        ckpt = c.first.checkpoint
        totals[ckpt] = totals.get(ckpt, 0.0) + min(c.cost.values())
        options[ckpt] = min(options.get(ckpt, len(c.fit)), len(c.fit))
    return sorted(chunks, key=lambda c: (
        options[c.first.checkpoint], -round(totals[c.first.checkpoint], 6), c.first.checkpoint,
        len(c.fit), c.first.prompt, c.first.negative, c.first.episode, c.first.shot_id,
        c.first.preset, c.first.take, c.first.key))


class _Placer:
    """Assigns chunks to servers, tracking each server's finish time and checkpoint."""

    def __init__(self, servers: Sequence[ServerSpec], models: _Models, target: float,
                 slack: float):
        self.servers = list(servers)
        self.models = models
        self.target, self.slack = target, slack
        self.limit = target + slack
        self.finish = {s.name: 0.0 for s in servers}
        self.current = {s.name: s.loaded_checkpoint for s in servers}
        self.placed: dict[str, list[_Chunk]] = {s.name: [] for s in servers}

    def _load(self, server: ServerSpec, checkpoint: str) -> float:
        if self.current[server.name] == checkpoint:
            return 0.0
        return self.models.load_seconds(checkpoint) / server.speed

    def _assign(self, server: ServerSpec, chunks: Sequence[_Chunk]) -> None:
        for chunk in chunks:
            ckpt = chunk.first.checkpoint
            self.finish[server.name] += self._load(server, ckpt) + chunk.cost[server.name]
            self.current[server.name] = ckpt
            self.placed[server.name].append(chunk)

    def whole(self, group: Sequence[_Chunk]) -> bool:
        """Give the group to one server if one can take it all within the target."""
        ckpt = group[0].first.checkpoint
        options = []
        for rank, server in enumerate(self.servers):
            if any(server.name not in c.fit for c in group):
                continue
            done = (self.finish[server.name] + self._load(server, ckpt)
                    + sum(c.cost[server.name] for c in group))
            if done <= self.limit:
                options.append((self.current[server.name] != ckpt, done, rank, server))
        if not options:
            return False
        self._assign(min(options)[3], group)
        return True

    def split(self, group: Sequence[_Chunk]) -> None:
        """Fill one server at a time up to the fair share, then spread what is left.

        Filling (rather than dealing chunks round-robin) keeps a checkpoint on as few
        servers as the balance allows; the server already on the checkpoint fills first.
        """
        ckpt = group[0].first.checkpoint
        pending = list(group)
        while pending:
            room = [(self.current[s.name] != ckpt, self.finish[s.name], rank, s)
                    for rank, s in enumerate(self.servers)
                    if self.finish[s.name] + self._load(s, ckpt) < self.limit
                    and any(s.name in c.fit for c in pending)]
            if not room:
                break
            server = min(room)[3]
            keep = []
            for chunk in pending:
                if server.name in chunk.fit and self.finish[server.name] < self.limit:
                    self._assign(server, [chunk])
                else:
                    keep.append(chunk)
            pending = keep
        for chunk in pending:
            best = min((s for s in self.servers if s.name in chunk.fit),
                       key=lambda s, c=chunk: (
                           self.finish[s.name] + self._load(s, ckpt) + c.cost[s.name]))
            self._assign(best, [chunk])


def _place(order: list[_Chunk], servers: Sequence[ServerSpec],
           models: _Models) -> dict[str, list[_Chunk]]:
    """Whole checkpoint groups where they fit a fair share, the rest chunk by chunk.

    The fair share is total work over total speed; a group may exceed it by one chunk.
    """
    if not order:
        return {s.name: [] for s in servers}
    work = sum(min(c.cost[s.name] * s.speed for s in servers if s.name in c.fit)
               for c in order)
    slack = max(min(c.cost.values()) for c in order)
    placer = _Placer(servers, models, work / sum(s.speed for s in servers), slack)
    for _, same in groupby(order, key=lambda c: c.first.checkpoint):
        group = list(same)
        if not placer.whole(group):
            placer.split(group)
    return placer.placed


def _build_plan(placed: dict[str, list[_Chunk]], servers: Sequence[ServerSpec],
                models: _Models) -> Plan:
    batches: list[RenderBatch] = []
    swaps: dict[str, int] = {}
    seconds: dict[str, float] = {}
    for server in servers:
        chunks = placed[server.name]
        # Stable sort: the loaded checkpoint's chunks first, otherwise placement order.
        chunks = sorted(chunks, key=lambda c: c.first.checkpoint != server.loaded_checkpoint)
        own = [_batch(part, server, models) for c in chunks
               for part in _slices(c.takes, c.fit[server.name])]
        swaps[server.name] = _count_swaps(own, server.loaded_checkpoint)
        seconds[server.name] = sum(b.est_seconds for b in own) + sum(
            models.load_seconds(ck) / server.speed for ck in _loads(own, server.loaded_checkpoint))
        batches += own
    return Plan(tuple(batches), swaps, seconds)


def _batch(takes: tuple[ResolvedTake, ...], server: ServerSpec, models: _Models) -> RenderBatch:
    return RenderBatch(batch_id=batch_id_for(takes), server=server.name, takes=takes,
                       vram_estimate_mb=models.vram_mb(takes[0], len(takes)),
                       est_seconds=models.seconds(takes[0], len(takes)) / server.speed)


def _loads(batches: Sequence[RenderBatch], loaded: str | None) -> list[str]:
    """The checkpoints loaded along ``batches``, in order."""
    loads = []
    for batch in batches:
        if batch.checkpoint != loaded:
            loads.append(batch.checkpoint)
            loaded = batch.checkpoint
    return loads


def _count_swaps(batches: Sequence[RenderBatch], loaded: str | None) -> int:
    return len(_loads(batches, loaded))


def split_batch(batch: RenderBatch,
                vram: VramModel | None = None) -> tuple[RenderBatch, RenderBatch]:
    """Halves of ``batch`` (the first one larger when odd), for a retry after an OOM.

    Both halves stay on the batch's server and get their own ids; a forced batch's
    halves keep its ``fresh`` token, so they render anew too (under prompt ids of their
    own). The VRAM estimate is recomputed (with ``vram`` when given) and the time split
    pro rata.

    Raises:
        ValueError: for a batch of one take, which cannot be split.
    """
    if batch.size < 2:
        raise ValueError(f"{batch.label}: a batch of one take cannot be split")
    model = vram or VramModel()
    cut = (batch.size + 1) // 2
    halves = []
    for part in (batch.takes[:cut], batch.takes[cut:]):
        first = part[0]
        halves.append(RenderBatch(
            batch_id=batch_id_for(part), server=batch.server, takes=tuple(part),
            vram_estimate_mb=model.estimate_mb(first.checkpoint, first.width, first.height,
                                               len(part), first.vae_tiled, first.vae_tile_size),
            est_seconds=batch.est_seconds * len(part) / batch.size, fresh=batch.fresh))
    return halves[0], halves[1]


def apply_decode_policy(takes: Sequence[ResolvedTake], servers: Sequence[ServerSpec],
                        presets: Mapping[str, Preset]) -> list[ResolvedTake]:
    """Takes that no server could decode whole, switched to tiled VAE decode.

    Run before dedup, since the decode mode is part of the render key. The rule is
    "tile only when even the largest budget cannot hold one take decoded whole under the
    default VRAM model": a take that fits somewhere keeps full decode (the planner sends
    it where it fits), adding a smaller server to the pool never changes existing keys,
    and neither does calibration: the model is always ``VramModel()``, never one fitted
    to the night's metrics, so keys do not move with the measurements and dedup keeps
    recognising what the index holds. Tiles use the preset's ``vae_tile_size`` (the
    take's own when the preset is unknown).

    Raises:
        PlanningError: no usable servers, or a take that fits no budget even tiled.
    """
    _check_servers(servers)
    models = _Models(VramModel(), TimeModel())
    largest = max(s.vram_budget_mb for s in servers)
    result = []
    for take in takes:
        if not take.vae_tiled and models.vram_mb(take, 1) > largest:
            preset = presets.get(take.preset)
            take = take.with_tiled_decode(preset.vae_tile_size if preset else take.vae_tile_size)
        if models.vram_mb(take, 1) > largest:
            raise PlanningError(_too_big(take, servers, models))
        result.append(take)
    return result
