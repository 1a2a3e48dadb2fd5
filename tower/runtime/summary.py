"""What a render run did, tallied as batches finish, and its end-of-run summary.

The flows feed every batch outcome in; the summary gives the counts the run log
records (rendered / skipped as duplicates / failed, retries, OOM splits, model swaps)
and the figures the closing artifact shows (wall time, images per minute, GPU busy
share). Pure: times are passed in.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import polars as pl

from tower.runtime.execute import BatchOutcome
from tower.store.metrics import RunRecord


@dataclass
class RunTally:
    """Running totals of one flow run."""

    takes_requested: int = 0
    takes_deduped: int = 0
    takes_rendered: int = 0
    takes_cached: int = 0
    takes_failed: int = 0
    batches_done: int = 0
    batches_failed: int = 0
    oom_splits: int = 0
    retries: int = 0
    busy_s: dict[str, float] = field(default_factory=dict)
    images: list[tuple[str, Path]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def add(self, outcomes: Sequence[BatchOutcome], server: str) -> None:
        """Count one successful ``render_batch``: one outcome per (possibly split) piece."""
        self.batches_done += 1
        self.oom_splits += max(0, len(outcomes) - 1)
        for outcome in outcomes:
            count = len(outcome.images)
            if outcome.status == "cached":
                self.takes_cached += count
            else:
                self.takes_rendered += count
            seconds = outcome.metrics.execution_s or 0.0
            self.busy_s[server] = self.busy_s.get(server, 0.0) + seconds
            self.images += [(f"{t.shot_id} t{t.take}", path)
                            for t, path in zip(outcome.batch.takes, outcome.images, strict=False)]

    def fail(self, label: str, takes: int, error: str) -> None:
        """Count a batch that finally failed."""
        self.batches_failed += 1
        self.takes_failed += takes
        self.failures.append(f"{label}: {error}")

    def gpu_busy_share(self, wall_s: float, servers: int) -> float | None:
        """Share of the servers' wall time spent executing prompts (0..1)."""
        if wall_s <= 0 or servers <= 0:
            return None
        return min(1.0, sum(self.busy_s.values()) / (wall_s * servers))

    def images_per_minute(self, wall_s: float) -> float | None:
        made = self.takes_rendered + self.takes_cached
        return made / (wall_s / 60) if wall_s > 0 else None


def count_retries(metrics: pl.DataFrame, batch_ids: Collection[str]) -> int:
    """Retries of the planned batches: their attempts after the first, from the metrics rows.

    ``metrics`` holds one run's METRICS_SCHEMA rows; halves of an OOM split carry
    their parent's attempt number but ids of their own, so they are not counted.
    """
    if metrics.is_empty():
        return 0
    retried = (metrics.filter(pl.col("batch_id").is_in(list(batch_ids)) & (pl.col("attempt") > 1))
               .select("batch_id", "attempt").unique())
    return retried.height


def run_status(tally: RunTally, cancelled: bool = False) -> str:
    """The RUNS_SCHEMA status: cancelled, failed when any batch finally failed, else completed."""
    if cancelled:
        return "cancelled"
    return "failed" if tally.batches_failed else "completed"


@dataclass(frozen=True)
class RunInfo:
    """The fixed facts of a run, repeated by its run-log row and its summary."""

    run_id: str
    flow_run_id: str | None
    flow: str
    episode: str
    preset: str | None
    servers: tuple[str, ...]
    started: datetime
    batches: int
    model_swaps: Mapping[str, int]


def run_record(info: RunInfo, tally: RunTally, status: str, finished: datetime) -> RunRecord:
    """The run log's row: takes found on a server (adopted or cached) count as rendered."""
    return RunRecord(
        run_id=info.run_id, flow_run_id=info.flow_run_id, flow=info.flow,
        episode=info.episode, preset=info.preset, servers=list(info.servers),
        started_at=info.started, finished_at=finished,
        takes_requested=tally.takes_requested, takes_deduped=tally.takes_deduped,
        takes_rendered=tally.takes_rendered + tally.takes_cached,
        takes_failed=tally.takes_failed, batches=info.batches, retries=tally.retries,
        oom_splits=tally.oom_splits, model_swaps=sum(info.model_swaps.values()), status=status)


def run_summary(info: RunInfo, tally: RunTally, *, status: str, finished: datetime,
                out_of_rotation: Mapping[str, str], contact_sheet: str | None,
                markdown: str) -> dict[str, object]:
    """What a flow returns: counts, rates, failures, the images and the summary text."""
    wall_s = (finished - info.started).total_seconds()
    return {
        "run_id": info.run_id, "episode": info.episode, "status": status,
        "takes_requested": tally.takes_requested, "takes_deduped": tally.takes_deduped,
        "takes_rendered": tally.takes_rendered, "takes_cached": tally.takes_cached,
        "takes_failed": tally.takes_failed, "batches": info.batches,
        "batches_failed": tally.batches_failed, "retries": tally.retries,
        "oom_splits": tally.oom_splits, "model_swaps": sum(info.model_swaps.values()),
        "wall_s": wall_s, "images_per_minute": tally.images_per_minute(wall_s),
        "gpu_busy_share": tally.gpu_busy_share(wall_s, len(info.servers)),
        "out_of_rotation": dict(out_of_rotation), "failures": list(tally.failures),
        "images": [str(path) for _, path in tally.images], "contact_sheet": contact_sheet,
        "markdown": markdown,
    }


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def summary_markdown(title: str, tally: RunTally, *, started: datetime, finished: datetime,
                     servers: Sequence[str], model_swaps: Mapping[str, int],
                     out_of_rotation: Mapping[str, str], contact_sheet: str | None,
                     status: str) -> str:
    """The closing artifact of a render run."""
    wall_s = (finished - started).total_seconds()
    lines = [
        f"# {title}: {status}", "",
        "| | |", "|---|---|",
        f"| takes requested | {tally.takes_requested} |",
        f"| rendered | {tally.takes_rendered} |",
        f"| already on a server (adopted/cached) | {tally.takes_cached} |",
        f"| skipped as duplicates | {tally.takes_deduped} |",
        f"| failed | {tally.takes_failed} ({tally.batches_failed} batches) |",
        f"| wall time | {wall_s:.1f} s |",
        f"| images per minute | {_num(tally.images_per_minute(wall_s))} |",
        f"| GPU busy share | {_pct(tally.gpu_busy_share(wall_s, len(servers)))} |",
        f"| model swaps (planned) | {sum(model_swaps.values())} |",
        f"| retries | {tally.retries} |",
        f"| OOM splits | {tally.oom_splits} |",
        f"| servers | {', '.join(servers)} |",
    ]
    if out_of_rotation:
        lines += ["", "## Taken out of rotation", ""]
        lines += [f"- **{name}**: {why}" for name, why in out_of_rotation.items()]
    if tally.failures:
        lines += ["", "## Failed batches", ""]
        lines += [f"- {failure}" for failure in tally.failures]
    if contact_sheet:
        lines += ["", f"Contact sheet: [{Path(contact_sheet).name}]({contact_sheet})"]
    return "\n".join(lines) + "\n"
