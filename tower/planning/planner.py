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

Model files. A take needs every file of :attr:`ResolvedTake.models` (checkpoint, LoRAs,
ControlNet, upscale model). A chunk goes only to servers whose inventory
(:attr:`ServerSpec.models`; None is unknown, taken as complete) has them all; the plan's
``notes`` say which servers were passed over for which shots. A take that no server can
render is a :class:`PlanningError` listing every such take and what each server lacks,
raised before anything is planned, so nothing is queued.

Sizes and times come from one estimate each, :meth:`VramModel.estimate_take_mb` and
:meth:`TimeModel.estimate_take_seconds`, parts included (a plain take's are the
txt2img formulas'); the OOM halves of :func:`split_batch` use the same.

The VAE decode (full or tiled) is part of the render key, so it is decided once, before
dedup, by :func:`apply_decode_policy` (tiled only for a take no server can decode whole
under the default VRAM model on the servers that have its models; :class:`PlanningError`
when not even tiled fits, saying the estimate, the largest budget and what to change).
The planner never switches a decode, whatever model it sizes batches with (see
:mod:`tower.planning.pipeline`): a chunk its model says fits no server is planned one
take per batch on the largest budget. Everything is deterministic: the same takes and
servers give the same plan, notes and batch ids (a hash of the takes' render keys), so
submitting a plan twice is idempotent. A forced run passes its ``fresh`` token
(:func:`tower.planning.batches.force_token`): the same plan, but every batch (and every
OOM half) gets prompt ids and graphs of that run's own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import groupby

from tower.planning.batches import (
    Plan,
    RenderBatch,
    ServerSpec,
    batch_id_for,
    force_token,
    model_paths,
)
from tower.planning.timing import TimeModel
from tower.planning.vram import VramModel
from tower.shotlist.presets import Preset
from tower.spec.takes import ResolvedTake

__all__ = [
    "Plan", "PlanningError", "RenderBatch", "ServerSpec", "TimeModel", "apply_decode_policy",
    "batch_id_for", "force_token", "plan_batches", "split_batch",
]



# Model files as ``(ComfyUI models folder, file name)`` pairs, and what each server lacks.
_Files = tuple[tuple[str, str], ...]
_Lacks = tuple[tuple[str, _Files], ...]


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
        return self.vram.estimate_take_mb(take, size)

    def seconds(self, take: ResolvedTake, size: int) -> float:
        return self.time.estimate_take_seconds(take, size, self.vram.family(take.checkpoint))

    def load_seconds(self, checkpoint: str) -> float:
        return self.time.load_seconds(self.vram.family(checkpoint))


def plan_batches(takes: Sequence[ResolvedTake], servers: Sequence[ServerSpec],
                 presets: Mapping[str, Preset], vram: VramModel | None = None,
                 time_model: TimeModel | None = None, fresh: str | None = None,
                 caps: Mapping[tuple[str, str], int] | None = None) -> Plan:
    """Plan ``takes`` (dedup's ``to_render``, decode decided) onto ``servers``.

    Every distinct take is planned exactly once; identical duplicates are planned once,
    on a server that has all its model files. ``fresh`` (a forced run's token) goes on
    every batch; it changes no placement. A chunk that fits no server under ``vram`` is
    planned one take per batch on the servers with its models and the largest budget,
    its estimate above that budget (the pipeline warns). ``caps`` limits the batch size
    of a preset on a server, ``(server, preset) -> size``, below what ``vram`` allows
    (learned from out-of-memory batches: :mod:`tower.planning.caps`).

    Raises:
        PlanningError: no servers, duplicate server names, an unknown preset, or takes
            that no server has the model files for (all of them in one message).
    """
    _check_servers(servers)
    models = _Models(vram or VramModel(), time_model or TimeModel())
    chunks = _chunks(takes, presets)
    notes = _check_models([t for c in chunks for t in c.takes], servers)
    chunks = [_fit_chunk(c, servers, models, caps or {}) for c in chunks]
    order = _chunk_order(chunks)
    placed = _place(order, servers, models)
    plan = _build_plan(placed, servers, models, notes)
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


def _check_models(takes: Sequence[ResolvedTake], servers: Sequence[ServerSpec]
                  ) -> tuple[str, ...]:
    """Notes on the servers passed over for lacking model files, in a fixed order.

    Raises:
        PlanningError: for takes no server has every model file of; one message lists
            them all, grouped by what each server lacks.
    """
    by_models: dict[_Files, list[ResolvedTake]] = {}
    for take in takes:
        by_models.setdefault(take.models, []).append(take)
    stranded: dict[_Lacks, list[ResolvedTake]] = {}
    skipped: dict[tuple[int, _Files], list[ResolvedTake]] = {}
    for needed, group in by_models.items():
        lacks = [(s.name, s.lacks(needed)) for s in servers]
        if all(missing for _, missing in lacks):
            stranded.setdefault(tuple(lacks), []).extend(group)
            continue
        for rank, (_, missing) in enumerate(lacks):
            if missing:
                skipped.setdefault((rank, missing), []).extend(group)
    if stranded:
        raise PlanningError(_stranded_message(stranded))
    return tuple(f"{servers[rank].name} skipped for {_shots(group)}: missing "
                 f"{model_paths(missing)}" for (rank, missing), group in sorted(skipped.items()))


def _stranded_message(stranded: Mapping[_Lacks, list[ResolvedTake]]) -> str:
    lines = ["no server has every model file these takes need (nothing was queued):"]
    groups = sorted(stranded.items(), key=lambda item: min(_order(t) for t in item[1]))
    for lacks, group in groups:
        servers = "; ".join(f"{name} lacks {model_paths(missing)}" for name, missing in lacks)
        lines.append(f"  {_take_ranges(group)}: {servers}")
    lines.append("copy the files into the servers' ComfyUI models folders, or change the takes")
    return "\n".join(lines)


def _order(take: ResolvedTake) -> tuple[str, str, int]:
    return (take.episode, take.shot_id, take.take)


def _shots(takes: Sequence[ResolvedTake]) -> str:
    """``ep02 sh010, sh020, ep03 sh010``: the shots of ``takes``, each episode named once."""
    shots = sorted({(t.episode, t.shot_id) for t in takes})
    return ", ".join(ep + " " + ", ".join(shot for _, shot in same)
                     for ep, same in groupby(shots, key=lambda shot: shot[0]))


def _take_ranges(takes: Sequence[ResolvedTake]) -> str:
    """``ep02 sh010 t0-3, ep02 sh020 t0-1 t5``: the takes, grouped by shot, as ranges."""
    indices = sorted({_order(t) for t in takes})
    parts = []
    for (episode, shot), same in groupby(indices, key=lambda i: i[:2]):
        numbers = [i[2] for i in same]
        runs = [[n for _, n in run]                  # consecutive numbers share n - i
                for _, run in groupby(enumerate(numbers), key=lambda p: p[1] - p[0])]
        ranges = " ".join(f"t{r[0]}" if len(r) == 1 else f"t{r[0]}-{r[-1]}" for r in runs)
        parts.append(f"{episode} {shot} {ranges}")
    return ", ".join(parts)


def _estimates(take: ResolvedTake, limit: int, budget: float, models: _Models) -> list[float]:
    """VRAM estimates of batch sizes 1, 2... up to ``limit``, ending at the first above
    ``budget`` (the largest one that matters)."""
    needs: list[float] = []
    for size in range(1, limit + 1):
        needs.append(models.vram_mb(take, size))
        if needs[-1] > budget:
            break
    return needs


def _largest_fit(needs: Sequence[float], budget: float) -> int:
    """The largest batch size whose estimate, and every smaller one's, fits ``budget``."""
    return next((n for n, mb in enumerate(needs) if mb > budget), len(needs))


def _fit_chunk(chunk: _Chunk, servers: Sequence[ServerSpec], models: _Models,
               caps: Mapping[tuple[str, str], int]) -> _Chunk:
    """Batch sizes and costs per server; the largest budgets take what fits nowhere.

    The estimates depend on the chunk alone, so each size is estimated and timed once
    per chunk, not once per server. A server's cap for the chunk's preset lowers its
    size further (never below one take).
    """
    able = _able(chunk.first, servers)
    largest = max(s.vram_budget_mb for s in able)
    needs = _estimates(chunk.first, min(chunk.max_batch, len(chunk.takes)), largest, models)
    preset = chunk.first.preset
    fits = {s.name: min(_largest_fit(needs, s.vram_budget_mb),
                        max(1, caps.get((s.name, preset), chunk.max_batch)))
            for s in able}
    if not any(fits.values()):
        fits = {s.name: int(s.vram_budget_mb == largest) for s in able}
    seconds: dict[int, float] = {}
    for s in able:
        size = fits[s.name]
        if size:
            if size not in seconds:
                seconds[size] = sum(models.seconds(chunk.first, len(part))
                                    for part in _slices(chunk.takes, size))
            chunk.fit[s.name] = size
            chunk.cost[s.name] = seconds[size] / s.speed
    return chunk


def _able(take: ResolvedTake, servers: Sequence[ServerSpec]) -> list[ServerSpec]:
    """The servers that have every model file ``take`` needs."""
    return [s for s in servers if not s.lacks(take.models)]


def _too_big(take: ResolvedTake, servers: Sequence[ServerSpec], models: _Models) -> str:
    biggest = max(servers, key=lambda s: s.vram_budget_mb)
    need = models.vram.estimate_take(take, 1)
    what = f"{take.preset}, {take.checkpoint}, {take.width}x{take.height}"
    peak, drop = "", ""
    if take.parts:
        what += f", {take.parts}"
        peak, drop = f", peaking in the {need.peak_phase}", "drop a part (hires, upscale...), "
    return (f"{take.label} ({what}): estimated {need.peak_mb:.0f} MB for one take with tiled"
            f" VAE decode (tile {take.vae_tile_size}){peak}, but the largest budget is"
            f" {biggest.vram_budget_mb:.0f} MB ({biggest.name}); lower the resolution or the"
            f" preset's vae_tile_size, use a smaller checkpoint, {drop}or add a server with"
            f" more VRAM")


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
                models: _Models, notes: tuple[str, ...]) -> Plan:
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
    return Plan(tuple(batches), swaps, seconds, notes)


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
    own). The VRAM estimate is recomputed (:meth:`VramModel.estimate_take_mb`, with
    ``vram`` when given) and the time split pro rata.

    Raises:
        ValueError: for a batch of one take, which cannot be split.
    """
    if batch.size < 2:
        raise ValueError(f"{batch.label}: a batch of one take cannot be split")
    cut = (batch.size + 1) // 2
    return (narrow_batch(batch, batch.takes[:cut], vram),
            narrow_batch(batch, batch.takes[cut:], vram))


def narrow_batch(batch: RenderBatch, takes: Sequence[ResolvedTake],
                 vram: VramModel | None = None) -> RenderBatch:
    """A batch of some of ``batch``'s takes: same server and ``fresh`` token, its own id
    (and so its own prompt id), VRAM re-estimated, time pro rata."""
    model = vram or VramModel()
    return RenderBatch(
        batch_id=batch_id_for(takes), server=batch.server, takes=tuple(takes),
        vram_estimate_mb=model.estimate_take_mb(takes[0], len(takes)),
        est_seconds=batch.est_seconds * len(takes) / batch.size, fresh=batch.fresh)


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
    take's own when the preset is unknown). "Somewhere" is among the servers that have
    the take's model files, since only those can render it. A take no server has the
    files for is decided on all servers and never refused here: it may be in the index
    already, and if it is not, :func:`plan_batches` says what is missing.

    Raises:
        PlanningError: no usable servers, or a take that fits no budget even tiled.
    """
    _check_servers(servers)
    models = _Models(VramModel(), TimeModel())
    # Per set of model files: the servers that have them all, and their largest budget.
    able: dict[_Files, tuple[list[ServerSpec], float]] = {}
    result = []
    for take in takes:
        if take.models not in able:
            candidates = _able(take, servers)
            able[take.models] = candidates, max(s.vram_budget_mb for s in candidates or servers)
        candidates, largest = able[take.models]
        need = models.vram_mb(take, 1)
        if not take.vae_tiled and need > largest:
            preset = presets.get(take.preset)
            take = take.with_tiled_decode(preset.vae_tile_size if preset else take.vae_tile_size)
            need = models.vram_mb(take, 1)
        if candidates and need > largest:
            raise PlanningError(_too_big(take, candidates, models))
        result.append(take)
    return result
