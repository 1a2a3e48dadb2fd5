"""What a plan is made of: servers as the planner sees them, render batches, the plan.

Plain frozen data, so a plan can cross a task boundary, be compared (the planner is
deterministic: same input, equal plans) and be printed for people.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from tower.spec.takes import ResolvedTake

# A server's model files: ComfyUI models folder -> file names (``GET /models/<folder>``).
Inventory = Mapping[str, frozenset[str]]


@dataclass(frozen=True)
class ServerSpec:
    """A ComfyUI server as the planner sees it.

    ``models`` is what the server has (:data:`Inventory`); None means unknown, taken as
    everything (the preflight checks the server before anything is queued).
    """

    name: str
    vram_budget_mb: float
    loaded_checkpoint: str | None = None
    speed: float = 1.0  # relative to the time model's reference card
    # Compared, not hashed: a dict inventory would make the spec unhashable.
    models: Inventory | None = field(default=None, hash=False)

    def lacks(self, needed: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
        """The files of ``needed`` this server does not have (:func:`missing_models`)."""
        return missing_models(self.models, needed)


def missing_models(inventory: Inventory | None,
                   needed: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """The ``(folder, file)`` pairs of ``needed`` that ``inventory`` lacks, in order.

    The one rule the planner and the pool place work by: None (unknown) lacks nothing.
    """
    if inventory is None:
        return ()
    return tuple((folder, name) for folder, name in needed
                 if name not in inventory.get(folder, frozenset()))


def model_paths(models: Iterable[tuple[str, str]]) -> str:
    """``loras/a.safetensors, controlnet/b.safetensors``: model files for people."""
    return ", ".join(f"{folder}/{name}" for folder, name in models)


@dataclass(frozen=True)
class RenderBatch:
    """One ComfyUI prompt: consecutive takes of one shot, on one server.

    ``fresh`` is set on the batches of a forced run (:func:`force_token` of the flow
    run): the batch then gets a prompt id and a graph of its own, so ComfyUI renders it
    again instead of handing back the finished prompt or its node cache.
    """

    batch_id: str
    server: str
    takes: tuple[ResolvedTake, ...]
    vram_estimate_mb: float
    est_seconds: float
    fresh: str | None = None

    @property
    def first(self) -> ResolvedTake:
        return self.takes[0]

    @property
    def episode(self) -> str:
        return self.first.episode

    @property
    def shot_id(self) -> str:
        return self.first.shot_id

    @property
    def preset(self) -> str:
        return self.first.preset

    @property
    def checkpoint(self) -> str:
        return self.first.checkpoint

    @property
    def vae_tiled(self) -> bool:
        return self.first.vae_tiled

    @property
    def models(self) -> tuple[tuple[str, str], ...]:
        """The model files every server that renders this batch must have."""
        return self.first.models

    @property
    def parts(self) -> str:
        """The production parts its takes use (``""`` for txt2img), for the metrics."""
        return self.first.parts

    @property
    def start(self) -> int:
        """Index of the first take (the graph's batch offset)."""
        return self.first.take

    @property
    def size(self) -> int:
        return len(self.takes)

    @property
    def prompt_id(self) -> str:
        """The ComfyUI prompt id: fixed by the takes (and a forced run's token), so a
        resubmission within the run is recognised and adopted, while a forced run never
        adopts what an earlier run left under the plain id."""
        if self.fresh is None:
            return f"tower-{self.batch_id}"
        return f"tower-{self.batch_id}-{self.fresh}"

    @property
    def cache_buster(self) -> str | None:
        """The graph's ``tower_fresh`` value (:func:`tower.spec.graph.build_graph`), or None.

        The forced prompt id, not the bare run token: it differs between the batches of
        one run, so no node of a forced batch (the checkpoint load included) is served
        from a cache entry another batch left, yet a retry builds the same graph.
        """
        return None if self.fresh is None else self.prompt_id

    @property
    def take_range(self) -> str:
        end = self.takes[-1].take
        return f"t{self.start}" if end == self.start else f"t{self.start}-{end}"

    @property
    def label(self) -> str:
        """e.g. ``ep01 sh030 t0-3 high``."""
        return f"{self.episode} {self.shot_id} {self.take_range} {self.preset}"

    @property
    def filename_prefix(self) -> str:
        return f"{self.episode}/{self.shot_id}/{self.batch_id[:8]}"


def batch_id_for(takes: Sequence[ResolvedTake]) -> str:
    """16 hex digits of sha256 over the takes' render keys."""
    return hashlib.sha256("\n".join(t.key for t in takes).encode()).hexdigest()[:16]


def force_token(run_id: str) -> str:
    """The token of a forced run: ``f`` and 12 hex digits of sha256 over ``run_id``.

    ``run_id`` is the orchestrator's run id (Prefect's flow run id): unique per run, so
    a forced run renders anew, and the same across task and flow retries of that run,
    so a retry adopts the prompt an earlier attempt left instead of rendering twice.
    """
    if not run_id:
        raise ValueError("a forced run needs its run id to derive its prompt ids")
    return "f" + hashlib.sha256(run_id.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Plan:
    """Batches per server in render order, with each server's swaps and estimated time.

    ``notes`` say, for people, which servers were passed over for which shots and why
    (the model files they lack), in a fixed order.
    """

    batches: tuple[RenderBatch, ...]
    model_swaps: dict[str, int] = field(default_factory=dict)
    est_seconds: dict[str, float] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def forced(self, token: str) -> Plan:
        """The same plan with every batch carrying a forced run's ``token``."""
        return replace(self, batches=tuple(replace(b, fresh=token) for b in self.batches))

    def for_server(self, name: str) -> list[RenderBatch]:
        """The batches of server ``name``, in the order to submit them."""
        return [b for b in self.batches if b.server == name]

    @property
    def takes(self) -> int:
        return sum(b.size for b in self.batches)

    def rows(self) -> list[dict[str, object]]:
        """One dict per batch, for a table artifact."""
        return [{"batch": b.batch_id, "shot": f"{b.episode} {b.shot_id}", "takes": b.take_range,
                 "preset": b.preset, "server": b.server,
                 "vram_estimate_mb": round(b.vram_estimate_mb),
                 "est_seconds": round(b.est_seconds, 1)} for b in self.batches]

    def table(self) -> str:
        """The plan as fixed-width text; then its notes, and a summary line per server."""
        head = (f"{'server':<12} {'batch':<16} {'shot':<16} {'takes':<7} {'preset':<9} "
                f"{'checkpoint':<32} {'vae':<5} {'vram MB':>8} {'est s':>8}")
        lines = [head, "-" * len(head)]
        for b in self.batches:
            lines.append(
                f"{b.server:<12.12} {b.batch_id:<16} {b.episode + ' ' + b.shot_id:<16.16} "
                f"{b.take_range:<7} {b.preset:<9.9} {b.checkpoint:<32.32} "
                f"{'tiled' if b.vae_tiled else 'full':<5} {b.vram_estimate_mb:>8.0f} "
                f"{b.est_seconds:>8.1f}")
        lines.append("")
        lines += [f"note: {note}" for note in self.notes]
        for name in self.est_seconds:
            count = len(self.for_server(name))
            lines.append(f"{name}: {count} batches, {self.model_swaps.get(name, 0)} model swaps,"
                         f" ~{self.est_seconds[name]:.0f} s")
        lines.append(f"total: {len(self.batches)} batches, {self.takes} takes")
        return "\n".join(lines)
