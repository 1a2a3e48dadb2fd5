"""The report's figures as plain data: what the renderers, charts and verdicts read.

Everything here is a frozen dataclass of numbers and strings, so a report can be
rendered to markdown, JSON or the terminal without touching polars again, and tests
can build figures by hand.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

DEFAULT_WINDOW = timedelta(hours=24)
TREND_WINDOW = timedelta(days=7)
CHART_DAYS = 14

# Seed targets from the optimisation guide: seconds per generation (one take).
SEED_TARGETS_S: dict[str, float] = {"draft": 30.0, "standard": 60.0, "high": 120.0}

# Time components of a batch, in the order they happen.
COMPONENTS = ("queue_wait", "model_load", "sampling", "vae_decode", "download")

# The report's charts by kind, each with the title drawn on it (also its alt text).
CHART_TITLES: dict[str, str] = {
    "seconds-per-take": f"Mean seconds per take by preset, last {CHART_DAYS} days",
    "gpu-busy": "GPU busy share of active time, per server",
    "time-breakdown": "Mean seconds per batch by preset, by stage",
}


@dataclass(frozen=True)
class Window:
    """A half-open time range ``[start, end)`` in UTC."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("report windows need timezone-aware datetimes")
        if self.end <= self.start:
            raise ValueError(f"empty report window: {self.start} .. {self.end}")

    @property
    def label(self) -> str:
        """The name the report is filed under.

        A window of up to a day is filed under the (UTC) day it ends in, so the daily
        report of the 27th is ``2026-11-27``; a longer one under its first and last day
        (``2026-11-01_2026-11-27``), so it never replaces a daily report.
        """
        last = (self.end.astimezone(UTC) - timedelta(microseconds=1)).date().isoformat()
        if self.length <= timedelta(days=1):
            return last
        return f"{self.start.astimezone(UTC).date().isoformat()}_{last}"

    @property
    def length(self) -> timedelta:
        return self.end - self.start

    def previous(self, length: timedelta = TREND_WINDOW) -> Window:
        """The ``length`` just before this window (what trends compare against)."""
        return Window(self.start - length, self.start)


def report_window(now: datetime, day: date | None = None, since: date | None = None) -> Window:
    """The window a report covers: one UTC day, from a day until ``now``, or the last 24 h.

    Raises:
        ValueError: both ``day`` and ``since`` given, or ``since`` is after ``now``.
    """
    if day is not None and since is not None:
        raise ValueError("give either a date or a start date, not both")
    if day is not None:
        start = datetime.combine(day, time(), UTC)
        return Window(start, start + timedelta(days=1))
    if since is not None:
        start = datetime.combine(since, time(), UTC)
        if start >= now:
            raise ValueError(f"--since {since} is not before now ({now:%Y-%m-%d %H:%M} UTC)")
        return Window(start, now)
    return Window(now - DEFAULT_WINDOW, now)


@dataclass(frozen=True)
class Stats:
    """Mean, median, 95th percentile and maximum of a set of seconds."""

    mean: float | None = None
    p50: float | None = None
    p95: float | None = None
    max: float | None = None


@dataclass(frozen=True)
class Volume:
    """How much work the window saw."""

    runs: int = 0
    batches: int = 0
    attempts: int = 0
    takes_requested: int = 0
    takes_deduped: int = 0
    dedup_hit_rate: float | None = None
    takes_rendered: int = 0
    takes_cached: int = 0
    images: int = 0
    suspect_images: int = 0  # images the output check flagged (tower.runtime.checks)
    batches_failed: int = 0
    attempts_failed: int = 0
    retries: int = 0
    oom_splits: int = 0
    model_swaps: int = 0


@dataclass(frozen=True)
class Timing:
    """Time per take and per batch for one preset or one server (successful batches)."""

    name: str
    batches: int
    takes: int
    images: int
    per_take: Stats
    per_batch: Stats
    breakdown: dict[str, float]          # mean seconds per batch, by COMPONENTS
    images_per_minute: float | None      # images per minute of GPU execution time
    target_s: float | None = None        # seed target per take (presets only)
    target_met: bool | None = None       # p95 per take within the target


@dataclass(frozen=True)
class ServerLoad:
    """One server's GPU use, VRAM and failure figures: the evidence for its verdict."""

    server: str
    attempts: int
    busy_s: float
    active_s: float
    busy_share: float | None
    images_per_minute: float | None      # images per minute of the server's active time
    load_share: float | None             # model load / GPU execution time
    sampling_share: float | None         # sampling / GPU execution time
    download_share: float | None         # download / (execution + download)
    queue_share: float | None            # queue wait / batch time
    model_swaps: int
    model_load_s: float
    vram_peak_mb: float | None
    vram_budget_mb: float | None
    vram_peak_share: float | None
    vram_estimate_error: float | None    # mean |estimate - peak| / peak
    util_mean: float | None
    ooms: int
    failures: int
    retries: int
    error_types: dict[str, int] = field(default_factory=dict)

    @property
    def idle_share(self) -> float | None:
        return None if self.busy_share is None else 1.0 - self.busy_share

    @property
    def failure_share(self) -> float:
        return self.failures / self.attempts if self.attempts else 0.0

    @property
    def retry_share(self) -> float:
        return self.retries / self.attempts if self.attempts else 0.0


@dataclass(frozen=True)
class PresetVram:
    """Peak VRAM of one preset against its budget and the VRAM model's estimate."""

    preset: str
    batches: int
    peak_mb: float | None
    budget_mb: float | None
    peak_share: float | None
    estimate_error: float | None         # mean |estimate - peak| / peak
    estimate_bias: float | None          # mean (estimate - peak) / peak: > 0 over-estimates
    ooms: int
    max_batch_used: int
    vae_tiled: bool                      # every batch of the preset used tiled VAE


@dataclass(frozen=True)
class RunTarget:
    """One preset in one run: p95 seconds per take against the seed target."""

    preset: str
    p95_take_s: float | None
    target_s: float | None
    met: bool | None


@dataclass(frozen=True)
class RunSummary:
    """One flow run in the window."""

    run_id: str
    flow: str
    episode: str
    status: str
    started_at: str
    wall_s: float
    takes_requested: int
    takes_deduped: int
    takes_rendered: int
    takes_failed: int
    targets: tuple[RunTarget, ...] = ()


@dataclass(frozen=True)
class DayPoint:
    """Mean seconds per take of one preset on one day (the 14-day chart)."""

    day: str
    preset: str
    mean_take_s: float


@dataclass(frozen=True)
class Figures:
    """Every number of one report window."""

    window: Window
    volume: Volume
    presets: tuple[Timing, ...] = ()
    servers: tuple[Timing, ...] = ()
    loads: tuple[ServerLoad, ...] = ()
    vram: tuple[PresetVram, ...] = ()
    runs: tuple[RunSummary, ...] = ()

    @property
    def empty(self) -> bool:
        return self.volume.attempts == 0 and self.volume.runs == 0


@dataclass(frozen=True)
class TrendRow:
    """One headline figure now against the previous 7 days."""

    metric: str
    current: float | None
    previous: float | None
    higher_is_better: bool

    @property
    def delta(self) -> float | None:
        if self.current is None or self.previous is None:
            return None
        return self.current - self.previous

    @property
    def arrow(self) -> str:
        delta = self.delta
        if delta is None or abs(delta) <= 1e-9 * max(1.0, abs(self.previous or 0.0)):
            return "→"
        return "↑" if delta > 0 else "↓"

    @property
    def improved(self) -> bool | None:
        delta = self.delta
        if delta is None or self.arrow == "→":
            return None
        return (delta > 0) == self.higher_is_better


def to_plain(value: Any) -> Any:
    """Dataclasses, tuples and datetimes as JSON-ready dicts, lists and ISO strings."""
    if hasattr(value, "__dataclass_fields__"):
        value = asdict(value)
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value
