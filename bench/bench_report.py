"""Time the daily report over a year of a busy studio's metrics (1,000,000 batch rows).

Generates the dataset in a temporary folder (day partitions, several parts per day, as
the metrics store writes them), then measures in a fresh process, so the peak memory
reported is the report's own:

    .venv/bin/python bench/bench_report.py [--rows 1000000] [--days 365] [--parts-per-day 4]
        [--per-batch-days 22] [--compact]

Three timings: the daily report (last 24 h, with its 7-day trend and 14-day chart), a
report over the whole year (every row in the window), and writing the files and charts.
``--per-batch-days N`` writes the last N days as the render runtime does, one part per
batch (one row each); ``--compact`` then compacts the closed days (everything before
the report's day, as the daily report flow does) in a fresh process, times that and a
second, idempotent pass, and measures the reports again.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tower.report.build import build_report, write_report
from tower.report.model import Window, report_window
from tower.store.files import DataRoot
from tower.store.metrics import MetricsStore, RunLog, compact_closed_days
from tower.store.schemas import METRICS_SCHEMA, RUNS_SCHEMA

END = datetime(2026, 11, 27, 6, 0, tzinfo=UTC)
SERVERS = ("gpu-a", "gpu-b", "gpu-c", "gpu-d")
PRESETS = ("draft", "standard", "high")


def _uniform(seed: int) -> pl.Expr:
    """A deterministic pseudo-random float in [0, 1) per row."""
    return (pl.int_range(pl.len()).hash(seed) % 1_000_003) / 1_000_003


def metrics_frame(rows: int, days: int) -> pl.DataFrame:
    """``rows`` batch attempts spread evenly over the ``days`` before END."""
    start = END - timedelta(days=days)
    step_us = int(days * 86_400 * 1_000_000 / rows)
    frame = pl.select(pl.int_range(rows).alias("i")).with_columns(
        u1=_uniform(1), u2=_uniform(2), u3=_uniform(3), u4=_uniform(4))
    preset = pl.col("i") % 3
    return frame.select(
        pl.format("run-{}", pl.col("i") // 3000).alias("run_id"),
        pl.lit(None, pl.String).alias("flow_run_id"),
        pl.format("b{}", pl.col("i")).alias("batch_id"),
        pl.lit(pl.Series(SERVERS)).gather(pl.col("i") % 4).alias("server"),
        pl.format("ep{}", pl.col("i") // 20000).alias("episode"),
        pl.lit(pl.Series(PRESETS)).gather(preset).alias("preset"),
        pl.lit("anime-final-sd15.safetensors").alias("checkpoint"),
        (512 + 256 * preset).cast(pl.Int32).alias("width"),
        (512 + 256 * preset).cast(pl.Int32).alias("height"),
        pl.lit(4, pl.Int32).alias("takes"), pl.lit(4, pl.Int32).alias("batch_size"),
        pl.lit(False).alias("vae_tiled"),
        pl.when(pl.col("u4") < 0.01).then(pl.lit("failed"))
        .when(pl.col("u4") < 0.015).then(pl.lit("oom")).otherwise(pl.lit("ok")).alias("status"),
        pl.lit(1, pl.Int32).alias("attempt"),
        (pl.lit(start) + pl.duration(microseconds=pl.col("i") * step_us)).alias("started_at"),
        (1 + 3 * pl.col("u1")).alias("queue_wait_s"),
        (5 + 20 * preset + 10 * pl.col("u2")).alias("execution_s"),
        pl.when(pl.col("u3") < 0.1).then(3.0).otherwise(0.0).alias("model_load_s"),
        (4 + 18 * preset + 8 * pl.col("u2")).alias("sampling_s"),
        (1 + preset.cast(pl.Float64)).alias("vae_decode_s"),
        (0.2 + pl.col("u3")).alias("download_s"),
        (pl.col("u3") >= 0.1).alias("model_cache_hit"),
        pl.lit(0, pl.Int32).alias("cached_nodes"),
        (4000 + 2000 * preset).cast(pl.Float64).alias("vram_estimated_mb"),
        pl.lit(24000.0).alias("vram_budget_mb"),
        (3800 + 2100 * preset + 500 * pl.col("u1")).alias("vram_peak_mb"),
        (80 + 15 * pl.col("u2")).alias("gpu_util_mean"),
        pl.lit(4_000_000, pl.Int64).alias("bytes_downloaded"),
        pl.lit(4, pl.Int32).alias("images"),
        pl.lit(None, pl.String).alias("error_type"),
        pl.lit(None, pl.String).alias("error_message"),
    ).with_columns(
        queued_at=pl.col("started_at") - pl.duration(seconds=pl.col("queue_wait_s")),
        finished_at=pl.col("started_at") + pl.duration(
            seconds=pl.col("execution_s") + pl.col("download_s")),
    ).with_columns(date=pl.col("finished_at").dt.strftime("%Y-%m-%d"))


def runs_frame(metrics: pl.DataFrame) -> pl.DataFrame:
    """One run row per run id, spanning its batches."""
    return metrics.group_by("run_id").agg(
        pl.col("started_at").min(), pl.col("finished_at").max(),
        pl.col("server").unique().alias("servers"), pl.len().alias("batches"),
    ).with_columns(
        pl.lit(None, pl.String).alias("flow_run_id"), pl.lit("render_episode").alias("flow"),
        pl.lit("ep01").alias("episode"), pl.lit(None, pl.String).alias("preset"),
        (pl.col("batches") * 5).cast(pl.Int32).alias("takes_requested"),
        pl.col("batches").cast(pl.Int32).alias("takes_deduped"),
        (pl.col("batches") * 4).cast(pl.Int32).alias("takes_rendered"),
        pl.lit(0, pl.Int32).alias("takes_failed"), pl.col("batches").cast(pl.Int32),
        pl.lit(0, pl.Int32).alias("retries"), pl.lit(0, pl.Int32).alias("oom_splits"),
        pl.lit(0, pl.Int32).alias("model_swaps"), pl.lit("completed").alias("status"),
        date=pl.col("started_at").dt.strftime("%Y-%m-%d"),
    )


def write_partitions(frame: pl.DataFrame, folder: Path, schema: pa.Schema, parts: int,
                     per_batch_from: str | None = None) -> int:
    """Write ``frame`` as ``parts`` files per day partition; returns the file count.

    Days from ``per_batch_from`` (YYYY-MM-DD) on get one file per row, as the render
    runtime writes them (one part per batch).
    """
    table = frame.select(schema.names).to_arrow().cast(schema)
    frame = pl.from_arrow(table)  # type: ignore[assignment]
    count = 0
    for (day,), day_frame in frame.group_by("date", maintain_order=True):
        part_dir = folder / f"date={day}"
        part_dir.mkdir(parents=True, exist_ok=True)
        per_batch = per_batch_from is not None and str(day) >= per_batch_from
        size = 1 if per_batch else -(-day_frame.height // parts)
        for n in range(day_frame.height if per_batch else parts):
            chunk = day_frame.slice(n * size, size)
            if chunk.height:
                pq.write_table(chunk.to_arrow().cast(schema), part_dir / f"part-{n:06d}.parquet")
                count += 1
    return count


def measure(root: Path) -> dict[str, float]:
    """Time the three report paths over the dataset at ``root`` (run in a fresh process)."""
    data = DataRoot(root)
    out: dict[str, float] = {}
    t = time.perf_counter()
    daily = build_report(data, report_window(END))
    out["daily_report_s"] = time.perf_counter() - t
    t, cpu = time.perf_counter(), time.process_time()
    year = build_report(data, Window(END - timedelta(days=366), END))
    out["year_report_s"] = time.perf_counter() - t
    out["year_report_cpu_s"] = time.process_time() - cpu  # all threads; steadier when shared
    out["year_rows_in_window"] = year.figures.volume.attempts
    t = time.perf_counter()
    write_report(daily, data)
    out["write_files_s"] = time.perf_counter() - t
    out["daily_rows_in_window"] = daily.figures.volume.attempts
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def compact_closed(root: Path) -> dict[str, float]:
    """Compact the days before the report's day: first the last one alone (the daily
    report flow's usual work), then all of them, then all again (nothing left to do)."""
    data = DataRoot(root)
    metrics, runs = MetricsStore(data.metrics), RunLog(data.runs)
    out: dict[str, float] = {"metrics_files_before": len(metrics.files())}
    last = END.date() - timedelta(days=1)
    steps = (("compact_last_day", last), ("compact_all", None), ("compact_again", None))
    for label, since in steps:
        t, cpu = time.perf_counter(), time.process_time()
        result = compact_closed_days(metrics, runs, since, END.date())
        out[f"{label}_s"] = time.perf_counter() - t
        out[f"{label}_cpu_s"] = time.process_time() - cpu
        out[f"{label}_parts_merged"] = result.parts_before - result.parts_after
    out["metrics_files_after"] = len(metrics.files())
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def peak_rss_mb() -> float:
    """This process's peak resident memory.

    Linux's ``VmHWM`` starts afresh at exec; ``ru_maxrss`` may carry over the parent's
    peak (here, the process that generated the data), so it is only the fallback.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--parts-per-day", type=int, default=4)
    parser.add_argument("--per-batch-days", type=int, default=0)
    parser.add_argument("--compact", action="store_true")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--compact-only", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return
    if args.compact_only:
        print(json.dumps(compact_closed(args.compact_only)))
        return
    with tempfile.TemporaryDirectory(prefix="tower-bench-") as tmp:
        root = Path(tmp)
        generate(root, args)
        run_step("--measure", root)
        if args.compact:
            run_step("--compact-only", root)
            run_step("--measure", root)


def generate(root: Path, args: argparse.Namespace) -> None:
    t = time.perf_counter()
    metrics = metrics_frame(args.rows, args.days)
    per_batch_from = ((END - timedelta(days=args.per_batch_days)).date().isoformat()
                      if args.per_batch_days else None)
    files = write_partitions(metrics, DataRoot(root).metrics, METRICS_SCHEMA,
                             args.parts_per_day, per_batch_from)
    write_partitions(runs_frame(metrics), DataRoot(root).runs, RUNS_SCHEMA, 1)
    print(f"generated {metrics.height:,} metrics rows in {files:,} files "
          f"({time.perf_counter() - t:.1f} s)")


def run_step(flag: str, root: Path) -> None:
    """Run one step in a fresh process (so its peak memory is its own) and print it."""
    result = subprocess.run([sys.executable, __file__, flag, str(root)],
                            check=True, capture_output=True, text=True)
    print(flag.removeprefix("--"))
    for key, value in json.loads(result.stdout).items():
        print(f"{key:>26}: {value:,.2f}")

if __name__ == "__main__":
    main()
