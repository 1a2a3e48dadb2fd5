"""How far a night has got and when it will end: takes done, images per minute, ETA.

The plan knows, per batch, its takes and its estimated seconds (the calibrated time
model's, :meth:`tower.planning.timing.TimeModel.estimate_take_seconds`, divided by the
server's speed). While the night runs, batches finish; :class:`ProgressTracker` keeps
their finish times and :meth:`ProgressTracker.snapshot` turns them, with where every
unfinished batch is now (the pool moves batches between servers), into a
:class:`Progress`:

- per server, the estimated seconds still assigned to it, scaled by its *pace* (actual
  over estimated time so far) once :data:`MIN_BATCHES_FOR_PACE` batches finished there,
  so a server that runs slower than its calibration pushes its ETA out; before that the
  pooled pace of the servers that have one, else the estimate as is;
- the overall ETA is the latest server's, since servers render in parallel;
- images per minute over the last :data:`RATE_WINDOW` (a night's start, with its model
  loads, should not weigh on the rate at 3 a.m.).

The ETA of a server is anchored at its last finished batch, not at ``now``, so it does
not creep forward between two completions; it never lies in the past. Nothing here reads
a clock: the caller passes ``now``, which keeps the maths testable with tables.

:meth:`Progress.rows` and :meth:`Progress.line` are what the Prefect table artifact and
the terminal show; :func:`parse_rows` reads the rows back (``tower status``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

MIN_BATCHES_FOR_PACE = 3
RATE_WINDOW = timedelta(minutes=10)
ALL = "all"


class Planned(Protocol):
    """What the tracker needs of a planned batch (:class:`RenderBatch` fits)."""

    @property
    def batch_id(self) -> str: ...

    @property
    def server(self) -> str: ...

    @property
    def size(self) -> int: ...

    @property
    def est_seconds(self) -> float: ...


@dataclass(frozen=True)
class Finished:
    """A batch that ended for good on ``server`` (None: it never ran anywhere)."""

    batch_id: str
    server: str | None
    takes: int
    est_seconds: float
    at: datetime
    ok: bool


@dataclass(frozen=True)
class ServerProgress:
    """One server's share (``name`` is :data:`ALL` for the whole run)."""

    name: str
    takes_done: int
    takes_failed: int
    takes_total: int
    images_per_min: float | None
    eta: datetime | None          # None: nothing left to render
    pace: float | None = None     # actual / estimated seconds; None where not measured yet
    note: str = ""

    @property
    def takes_ended(self) -> int:
        return self.takes_done + self.takes_failed


@dataclass(frozen=True)
class Progress:
    """The run as of ``at``: one entry per server and the whole (``overall``)."""

    label: str
    at: datetime
    overall: ServerProgress
    servers: tuple[ServerProgress, ...] = ()

    def left(self, now: datetime | None = None) -> timedelta | None:
        """Time from ``now`` (default: the snapshot's time) to the ETA."""
        if self.overall.eta is None:
            return None
        return max(timedelta(0), self.overall.eta - (now or self.at))

    def line(self, now: datetime | None = None) -> str:
        """``ep01: 120/480 takes, 14.2 img/min, ETA 03:41 UTC (25 min)``."""
        return f"{self.label}: {_summary(self.overall, self.left(now))}"

    def rows(self) -> list[dict[str, Any]]:
        """The table artifact: the whole run first, then one row per server."""
        return [_row(p, self.at) for p in (self.overall, *self.servers)]


def _summary(p: ServerProgress, left: timedelta | None) -> str:
    text = f"{p.takes_ended}/{p.takes_total} takes"
    if p.takes_failed:
        text += f" ({p.takes_failed} failed)"
    text += ", " + ("- img/min" if p.images_per_min is None else f"{p.images_per_min:.1f} img/min")
    if p.eta is None:
        return text + ", done"
    return text + f", ETA {p.eta:%H:%M} UTC ({minutes(left or timedelta(0))})"


def minutes(span: timedelta) -> str:
    """``25 min``, ``2 h 05 min``; under a minute is ``<1 min``."""
    total = int(span.total_seconds() // 60)
    if span.total_seconds() < 60:
        return "<1 min"
    return f"{total} min" if total < 60 else f"{total // 60} h {total % 60:02d} min"


def _row(p: ServerProgress, at: datetime) -> dict[str, Any]:
    return {"server": p.name, "takes done": p.takes_done, "takes failed": p.takes_failed,
            "takes total": p.takes_total,
            "img/min": None if p.images_per_min is None else round(p.images_per_min, 1),
            "eta (UTC)": None if p.eta is None else f"{p.eta:%Y-%m-%d %H:%M:%S}",
            "pace": None if p.pace is None else round(p.pace, 2), "note": p.note,
            "as of (UTC)": f"{at:%Y-%m-%d %H:%M:%S}"}


def parse_rows(label: str, rows: Sequence[Mapping[str, Any]]) -> Progress | None:
    """A :class:`Progress` from :meth:`Progress.rows` (None when they are not such rows)."""
    try:
        parsed = [ServerProgress(
            str(r["server"]), int(r["takes done"]), int(r["takes failed"]),
            int(r["takes total"]),
            None if r.get("img/min") is None else float(r["img/min"]),
            None if not r.get("eta (UTC)") else _utc(r["eta (UTC)"]),
            None if r.get("pace") is None else float(r["pace"]), str(r.get("note") or ""))
            for r in rows]
        at = _utc(rows[0]["as of (UTC)"])
    except (KeyError, TypeError, ValueError, IndexError):
        return None
    return Progress(label, at, parsed[0], tuple(parsed[1:]))


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@dataclass
class ProgressTracker:
    """The plan's batches and the ones finished so far, for :meth:`snapshot`.

    Fed by the dispatch loop; holds no clock and no Prefect.
    """

    label: str
    started_at: datetime
    batches: dict[str, tuple[int, float]] = field(default_factory=dict)  # id -> takes, est s
    planned_on: dict[str, str] = field(default_factory=dict)             # id -> server
    done: list[Finished] = field(default_factory=list)

    @classmethod
    def of(cls, label: str, batches: Iterable[Planned], started_at: datetime) -> ProgressTracker:
        tracker = cls(label, started_at)
        for b in batches:
            tracker.batches[b.batch_id] = (b.size, b.est_seconds)
            tracker.planned_on[b.batch_id] = b.server
        return tracker

    def finished(self, batch_id: str, server: str | None, *, ok: bool, at: datetime) -> None:
        """``batch_id`` ended for good (ok, or failed with no server left to try)."""
        if batch_id not in self.batches or any(f.batch_id == batch_id for f in self.done):
            return
        takes, est = self.batches[batch_id]
        self.done.append(Finished(batch_id, server, takes, est, at, ok))

    def snapshot(self, now: datetime, where: Mapping[str, str] | None = None,
                 out_of_rotation: Collection[str] = ()) -> Progress:
        """The progress as of ``now``; ``where`` maps each unfinished batch to its server
        now (default: the planned one), ``out_of_rotation`` names servers taken out."""
        return progress(self.label, self.started_at, self.batches, self.done, now,
                        self._where(where), out_of_rotation)

    def _where(self, where: Mapping[str, str] | None) -> dict[str, str]:
        ended = {f.batch_id for f in self.done}
        now_on = dict(where or {})
        return {b: now_on.get(b, self.planned_on[b]) for b in self.batches if b not in ended}


def progress(label: str, started_at: datetime, batches: Mapping[str, tuple[int, float]],
             done: Sequence[Finished], now: datetime, where: Mapping[str, str],
             out_of_rotation: Collection[str] = ()) -> Progress:
    """Per server and overall progress as of ``now`` (see the module's docstring).

    ``batches`` maps every planned batch id to its (takes, estimated seconds); ``where``
    maps every unfinished one to the server it is on or waiting for now.
    """
    names = sorted({*where.values(), *(f.server for f in done if f.server), *out_of_rotation})
    own = {name: [f for f in done if f.server == name] for name in names}
    paces = {name: _pace(started_at, own[name]) for name in names}
    pooled = _pooled_pace(started_at, [own[n] for n in names if paces[n] is not None])
    servers = []
    for name in names:
        left = [batches[b] for b, s in where.items() if s == name]
        pace = paces[name] if paces[name] is not None else pooled
        anchor = max((f.at for f in own[name]), default=started_at)
        eta = None
        if left:
            eta = max(now, anchor + timedelta(seconds=sum(e for _, e in left) * (pace or 1.0)))
        ended = _tally(own[name])
        note = "out of rotation" if name in out_of_rotation else ""
        servers.append(ServerProgress(
            name, *ended, takes_total=sum(ended) + sum(t for t, _ in left),
            images_per_min=_rate(own[name], started_at, now), eta=eta, pace=paces[name],
            note=note))
    etas = [s.eta for s in servers if s.eta is not None]
    done_ok, failed = _tally(done)
    overall = ServerProgress(ALL, done_ok, failed, sum(t for t, _ in batches.values()),
                             _rate(done, started_at, now), max(etas, default=None), pooled)
    return Progress(label, now, overall, tuple(servers))


def _tally(done: Iterable[Finished]) -> tuple[int, int]:
    finished = list(done)
    return (sum(f.takes for f in finished if f.ok), sum(f.takes for f in finished if not f.ok))


def _pace(started_at: datetime, own: Sequence[Finished]) -> float | None:
    """Wall time from the start to the server's last finish over the estimated seconds of
    what it finished, once it finished enough batches to say."""
    if len(own) < MIN_BATCHES_FOR_PACE:
        return None
    return _pooled_pace(started_at, [own])


def _pooled_pace(started_at: datetime, groups: Sequence[Sequence[Finished]]) -> float | None:
    spent = sum((max(f.at for f in g) - started_at).total_seconds() for g in groups if g)
    estimated = sum(f.est_seconds for g in groups for f in g)
    if not groups or estimated <= 0 or spent <= 0:
        return None
    return spent / estimated


def _rate(done: Sequence[Finished], started_at: datetime, now: datetime) -> float | None:
    """Images stored per minute over the last :data:`RATE_WINDOW` (or since the start)."""
    span = min(RATE_WINDOW, now - started_at).total_seconds()
    if span <= 0:
        return None
    since = now - RATE_WINDOW
    return sum(f.takes for f in done if f.ok and f.at > since) * 60.0 / span
