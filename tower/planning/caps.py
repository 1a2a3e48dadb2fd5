"""Batch-size caps learned from out-of-memory batches: one per (server, preset).

A batch that runs out of memory is halved at run time
(:func:`tower.runtime.execute.render_with_oom_split`) and the night goes on. The size
that ran out of memory may have fitted for weeks (a driver update, another process on
the card, a fragmented allocator). The VRAM model is fitted per checkpoint family over
every server, and only from enough measured peaks
(:meth:`tower.planning.vram.VramModel.calibrated`), so one server's out-of-memory does
not reliably move that server's next plan. The cap does::

    cap(server, preset) = (smallest size that ran out of memory there + 1) // 2

which is the larger half :func:`tower.planning.planner.split_batch` makes, the size the
run went on with; if that half ran out of memory too, its own row is the smaller size,
so the cap follows the halving down to one take. Only ``oom`` rows of the metrics window
the planner is given count (:func:`tower.planning.pipeline.recent_metrics`, the last
``HISTORY_DAYS``), and an out-of-memory row no longer counts once a later batch of at
least its size rendered on the same server at the same preset: the card has shown it
fits again. The cap only ever lowers the batch size the VRAM model allows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import polars as pl

CapKey = tuple[str, str]  # (server, preset)
_RENDERED = ("ok", "cached")


@dataclass(frozen=True)
class BatchCap:
    """The largest batch ``preset`` may be planned at on ``server``, and why."""

    server: str
    preset: str
    size: int
    oom_size: int
    oom_at: datetime

    def describe(self) -> str:
        noun = "take" if self.size == 1 else "takes"
        return (f"{self.server}: {self.preset} batches capped at {self.size} {noun} (out of"
                f" memory at {self.oom_size} on {self.oom_at:%Y-%m-%d %H:%M})")


def batch_caps(metrics: pl.LazyFrame | pl.DataFrame) -> dict[CapKey, BatchCap]:
    """The cap of every (server, preset) with an out-of-memory batch still standing.

    Args:
        metrics: metrics rows (``METRICS_SCHEMA``); only ``server``, ``preset``,
            ``batch_size``, ``status`` and ``finished_at`` are read.
    """
    frame = metrics.lazy().filter(pl.col("status").is_in(["oom", *_RENDERED])).select(
        "server", "preset", "batch_size", "status", "finished_at").collect()
    ooms: dict[CapKey, list[tuple[int, datetime]]] = {}
    rendered: dict[CapKey, list[tuple[int, datetime]]] = {}
    for server, preset, size, status, at in frame.iter_rows():
        into = ooms if status == "oom" else rendered
        into.setdefault((server, preset), []).append((size, at))
    caps: dict[CapKey, BatchCap] = {}
    for key, rows in sorted(ooms.items()):
        later_fits = rendered.get(key, [])
        standing = [(size, at) for size, at in rows
                    if not any(done >= size and done_at > at for done, done_at in later_fits)]
        if not standing:
            continue
        size, at = min(standing, key=lambda row: (row[0], row[1]))
        caps[key] = BatchCap(key[0], key[1], max(1, (size + 1) // 2), size, at)
    return caps


def cap_sizes(caps: Mapping[CapKey, BatchCap]) -> dict[CapKey, int]:
    """``caps`` as the planner takes them: (server, preset) -> largest batch size."""
    return {key: cap.size for key, cap in caps.items()}
