"""Computing a window's figures from the metrics and runs datasets with polars.

Pure functions over LazyFrames: the caller scans the files and passes the window in,
so the maths can be tested on frames built in memory and timed on a year of data.
Each figure is one vectorised query; nothing loops over rows in Python.
"""

from __future__ import annotations

import polars as pl

from tower.report.model import (
    COMPONENTS,
    SEED_TARGETS_S,
    DayPoint,
    Figures,
    PresetVram,
    RunSummary,
    RunTarget,
    ServerLoad,
    Stats,
    Timing,
    Volume,
    Window,
)

FAILED_STATUSES = ("failed", "interrupted")
METRIC_COLUMNS = (
    "run_id", "batch_id", "server", "preset", "takes", "batch_size", "vae_tiled", "status",
    "attempt", "started_at", "finished_at", "queue_wait_s", "execution_s", "model_load_s",
    "sampling_s", "vae_decode_s", "download_s", "model_cache_hit", "vram_estimated_mb",
    "vram_budget_mb", "vram_peak_mb", "gpu_util_mean", "images", "error_type",
    "suspect_images",
)


def compact(metrics: pl.LazyFrame) -> pl.LazyFrame:
    """The columns the figures use, with repeated strings as categoricals and batch ids
    hashed: a year of metrics then fits in a few hundred megabytes."""
    return metrics.select(METRIC_COLUMNS).with_columns(
        pl.col("run_id", "server", "preset", "status", "error_type").cast(pl.Categorical),
        pl.col("batch_id").hash(),
    )


def _s(name: str) -> pl.Expr:
    return pl.col(name).fill_null(0.0)


def with_seconds(metrics: pl.LazyFrame) -> pl.LazyFrame:
    """Add ``gpu_s`` (execution), ``batch_s`` (queue + execution + download) and ``take_s``.

    Execution falls back to the sum of its parts where the server did not report it.
    """
    gpu = pl.coalesce(pl.col("execution_s"),
                      _s("model_load_s") + _s("sampling_s") + _s("vae_decode_s"))
    return (metrics.select(METRIC_COLUMNS)
            .with_columns(gpu_s=gpu)
            .with_columns(batch_s=_s("queue_wait_s") + pl.col("gpu_s") + _s("download_s"))
            .with_columns(take_s=pl.col("batch_s") / pl.col("takes").clip(lower_bound=1)))


def _stats_exprs(col: str) -> list[pl.Expr]:
    c = pl.col(col)
    return [c.mean().alias(f"{col}_mean"), c.quantile(0.5, "linear").alias(f"{col}_p50"),
            c.quantile(0.95, "linear").alias(f"{col}_p95"), c.max().alias(f"{col}_max")]


def _stats(row: dict, col: str) -> Stats:
    return Stats(row[f"{col}_mean"], row[f"{col}_p50"], row[f"{col}_p95"], row[f"{col}_max"])


def timings(metrics: pl.LazyFrame, key: str) -> tuple[Timing, ...]:
    """Per-take and per-batch seconds of successful batches, grouped by ``key``."""
    ok = metrics.filter(pl.col("status") == "ok")
    frame = ok.group_by(key).agg(
        pl.len().alias("batches"), pl.col("takes").sum(), pl.col("images").fill_null(0).sum(),
        pl.col("gpu_s").sum().alias("gpu_total"),
        *_stats_exprs("take_s"), *_stats_exprs("batch_s"),
        *[_s(f"{c}_s").mean().alias(c) for c in COMPONENTS],
    ).sort(key).collect()
    out = []
    for row in frame.iter_rows(named=True):
        per_take = _stats(row, "take_s")
        target = SEED_TARGETS_S.get(row[key]) if key == "preset" else None
        total = row["gpu_total"]
        out.append(Timing(
            name=row[key], batches=row["batches"], takes=row["takes"], images=row["images"],
            per_take=per_take, per_batch=_stats(row, "batch_s"),
            breakdown={c: row[c] for c in COMPONENTS},
            images_per_minute=row["images"] * 60.0 / total if total else None,
            target_s=target,
            target_met=None if target is None or per_take.p95 is None else per_take.p95 <= target,
        ))
    return tuple(out)


def interval_union(frame: pl.LazyFrame, key: str, start: str, end: str) -> pl.LazyFrame:
    """Total length in seconds of the union of ``[start, end]`` intervals, per ``key``.

    Intervals are sorted by start; a new block begins where an interval starts after
    every earlier one of its key has ended. The first interval of each key always
    begins a block, so one running count numbers the blocks of every key apart.
    """
    new_block = (pl.col(start) > pl.col(end).cum_max().shift(1)).fill_null(True)
    return (frame.select(key, start, end).sort(pl.col(key).to_physical(), start)
            .with_columns(block=new_block.over(key))
            .with_columns(block=pl.col("block").cum_sum())
            .group_by(key, "block").agg(pl.col(start).min(), pl.col(end).max())
            .group_by(key).agg(((pl.col(end) - pl.col(start)).dt.total_microseconds().sum()
                                / 1e6).alias("seconds")))


def busy_and_active(metrics: pl.LazyFrame) -> pl.LazyFrame:
    """Per server: busy seconds (union of batch intervals) and active seconds.

    A server's active time is the union of each run's span on it (first batch start to
    last batch end), so the idle hours between two nights do not count as idle GPU.
    """
    timed = metrics.filter(pl.col("started_at").is_not_null())
    busy = interval_union(timed, "server", "started_at", "finished_at") \
        .rename({"seconds": "busy_s"})
    spans = timed.group_by("server", "run_id").agg(pl.col("started_at").min(),
                                                   pl.col("finished_at").max())
    active = interval_union(spans, "server", "started_at", "finished_at") \
        .rename({"seconds": "active_s"})
    return busy.join(active, on="server", how="inner")


def _ratio(num: float | None, den: float | None) -> float | None:
    return num / den if num is not None and den else None


def _vram_exprs() -> list[pl.Expr]:
    peak, est = pl.col("vram_peak_mb"), pl.col("vram_estimated_mb")
    return [peak.max().alias("peak"), pl.col("vram_budget_mb").max().alias("budget"),
            ((est - peak).abs() / peak).mean().alias("est_error"),
            ((est - peak) / peak).mean().alias("est_bias"),
            (pl.col("status") == "oom").sum().alias("ooms")]


def server_loads(metrics: pl.LazyFrame) -> tuple[ServerLoad, ...]:
    """GPU busy share, time shares, VRAM and failures per server."""
    ok = pl.col("status") == "ok"
    frame = metrics.group_by("server").agg(
        pl.len().alias("attempts"), *_vram_exprs(),
        pl.col("gpu_s").filter(ok).sum().alias("gpu"),
        pl.col("batch_s").filter(ok).sum().alias("batch"),
        *[_s(f"{c}_s").filter(ok).sum().alias(c) for c in COMPONENTS],
        (pl.col("model_cache_hit") == False).sum().alias("swaps"),  # noqa: E712
        _s("model_load_s").sum().alias("load_total"),
        pl.col("gpu_util_mean").mean().alias("util"),
        pl.col("images").fill_null(0).sum().alias("images"),
        pl.col("status").is_in(FAILED_STATUSES).sum().alias("failures"),
        (pl.col("attempt") > 1).sum().alias("retries"),
    ).join(busy_and_active(metrics), on="server", how="left").sort("server").collect()
    errors = _error_types(metrics)
    out = []
    for r in frame.iter_rows(named=True):
        out.append(ServerLoad(
            server=r["server"], attempts=r["attempts"], busy_s=r["busy_s"] or 0.0,
            active_s=r["active_s"] or 0.0, busy_share=_ratio(r["busy_s"], r["active_s"]),
            images_per_minute=_ratio(r["images"] * 60.0, r["active_s"]),
            load_share=_ratio(r["model_load"], r["gpu"]),
            sampling_share=_ratio(r["sampling"], r["gpu"]),
            download_share=_ratio(r["download"], r["gpu"] + r["download"]),
            queue_share=_ratio(r["queue_wait"], r["batch"]),
            model_swaps=r["swaps"], model_load_s=r["load_total"],
            vram_peak_mb=r["peak"], vram_budget_mb=r["budget"],
            vram_peak_share=_ratio(r["peak"], r["budget"]), vram_estimate_error=r["est_error"],
            util_mean=r["util"], ooms=r["ooms"], failures=r["failures"], retries=r["retries"],
            error_types=errors.get(r["server"], {}),
        ))
    return tuple(out)


def _error_types(metrics: pl.LazyFrame) -> dict[str, dict[str, int]]:
    frame = (metrics.filter(pl.col("status").is_in(FAILED_STATUSES))
             .group_by("server", pl.col("error_type").fill_null("unknown"))
             .len().sort("server", "len", descending=[False, True]).collect())
    out: dict[str, dict[str, int]] = {}
    for server, kind, count in frame.iter_rows():
        out.setdefault(server, {})[kind] = count
    return out


def preset_vram(metrics: pl.LazyFrame) -> tuple[PresetVram, ...]:
    """Peak VRAM per preset against budget and estimate, with OOMs and the batch used."""
    frame = metrics.group_by("preset").agg(
        pl.len().alias("batches"), *_vram_exprs(),
        pl.col("batch_size").max().alias("max_batch"), pl.col("vae_tiled").all().alias("tiled"),
    ).sort("preset").collect()
    return tuple(PresetVram(
        preset=r["preset"], batches=r["batches"], peak_mb=r["peak"], budget_mb=r["budget"],
        peak_share=_ratio(r["peak"], r["budget"]), estimate_error=r["est_error"], ooms=r["ooms"],
        estimate_bias=r["est_bias"],
        max_batch_used=r["max_batch"] or 0, vae_tiled=bool(r["tiled"]),
    ) for r in frame.iter_rows(named=True))


def volume(metrics: pl.LazyFrame, runs: pl.LazyFrame) -> Volume:
    """Counts of runs, batches and takes; dedup figures come from the runs dataset."""
    m = metrics.select(
        pl.col("run_id").n_unique().alias("metric_runs"),
        pl.col("batch_id").n_unique().alias("batches"),
        pl.col("batch_id").filter(pl.col("status").is_in(("ok", "cached"))).n_unique()
        .alias("done"),
        pl.len().alias("attempts"),
        pl.col("takes").filter(pl.col("status") == "ok").sum().alias("rendered"),
        pl.col("takes").filter(pl.col("status") == "cached").sum().alias("cached"),
        pl.col("images").fill_null(0).sum().alias("images"),
        pl.col("suspect_images").fill_null(0).sum().alias("suspect"),
        pl.col("status").is_in(FAILED_STATUSES).sum().alias("failed_attempts"),
        (pl.col("attempt") > 1).sum().alias("retries"),
        (pl.col("status") == "oom").sum().alias("ooms"),
        (pl.col("model_cache_hit") == False).sum().alias("swaps"),  # noqa: E712
    ).collect().row(0, named=True)
    r = runs.select(pl.len().alias("runs"), pl.col("takes_requested").sum(),
                    pl.col("takes_deduped").sum()).collect().row(0, named=True)
    return Volume(
        runs=r["runs"] or m["metric_runs"], batches=m["batches"], attempts=m["attempts"],
        takes_requested=r["takes_requested"] or 0, takes_deduped=r["takes_deduped"] or 0,
        dedup_hit_rate=_ratio(r["takes_deduped"], r["takes_requested"]),
        takes_rendered=m["rendered"] or 0, takes_cached=m["cached"] or 0, images=m["images"] or 0,
        suspect_images=m["suspect"] or 0,
        batches_failed=m["batches"] - m["done"], attempts_failed=m["failed_attempts"],
        retries=m["retries"],
        oom_splits=m["ooms"], model_swaps=m["swaps"],
    )


def run_summaries(metrics: pl.LazyFrame, runs: pl.LazyFrame) -> tuple[RunSummary, ...]:
    """Each run's wall time and, per preset, p95 seconds per take against the seed target."""
    per_preset = (metrics.filter(pl.col("status") == "ok").group_by("run_id", "preset")
                  .agg(pl.col("take_s").quantile(0.95, "linear").alias("p95"))
                  .sort("run_id", "preset").collect())
    targets: dict[str, list[RunTarget]] = {}
    for run_id, preset, p95 in per_preset.iter_rows():
        target = SEED_TARGETS_S.get(preset)
        met = None if target is None or p95 is None else p95 <= target
        targets.setdefault(run_id, []).append(RunTarget(preset, p95, target, met))
    frame = runs.with_columns(
        wall_s=(pl.col("finished_at") - pl.col("started_at")).dt.total_microseconds() / 1e6,
    ).sort("started_at").collect()
    return tuple(RunSummary(
        run_id=r["run_id"], flow=r["flow"], episode=r["episode"], status=r["status"],
        started_at=r["started_at"].isoformat(), wall_s=r["wall_s"],
        takes_requested=r["takes_requested"], takes_deduped=r["takes_deduped"],
        takes_rendered=r["takes_rendered"], takes_failed=r["takes_failed"],
        targets=tuple(targets.get(r["run_id"], ())),
    ) for r in frame.iter_rows(named=True))


def daily_take_seconds(metrics: pl.LazyFrame) -> tuple[DayPoint, ...]:
    """Mean seconds per take of successful batches, per day and preset."""
    frame = (metrics.filter(pl.col("status") == "ok")
             .group_by(pl.col("finished_at").dt.date().alias("day"), "preset")
             .agg(pl.col("take_s").mean()).sort("day", "preset").collect())
    return tuple(DayPoint(day.isoformat(), preset, value)
                 for day, preset, value in frame.iter_rows())


def compute_figures(window: Window, metrics: pl.LazyFrame, runs: pl.LazyFrame) -> Figures:
    """All figures of ``window``; ``metrics`` and ``runs`` may hold more, they are filtered.

    Args:
        window: the time range; metrics by ``finished_at``, runs by ``started_at``.
        metrics: rows in METRICS_SCHEMA.
        runs: rows in RUNS_SCHEMA.
    """
    # Computed once: every figure below reads the same rows and derived seconds.
    m = with_seconds(metrics.filter(
        pl.col("finished_at").is_between(window.start, window.end, closed="left"))
    ).collect().lazy()
    r = runs.filter(pl.col("started_at").is_between(window.start, window.end, closed="left"))
    return Figures(
        window=window, volume=volume(m, r), presets=timings(m, "preset"),
        servers=timings(m, "server"), loads=server_loads(m), vram=preset_vram(m),
        runs=run_summaries(m, r),
    )
