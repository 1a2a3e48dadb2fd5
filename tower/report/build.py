"""The daily performance report: figures, verdicts, trends, charts and files.

``build_report`` reads the datasets under a data root for one window and returns a
:class:`Report`; ``write_report`` files it under ``reports/`` as markdown, JSON and
PNG charts, each written atomically; its markdown links the charts beside it (the
Prefect artifact embeds them instead: :mod:`tower.report.artifact`). The maths lives
in the ``report_*`` modules and takes its inputs as arguments; this module is the one
place that touches files.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path

import polars as pl

from tower.report.charts import bar_chart, line_chart, stacked_bar_chart
from tower.report.data import (
    READ_ERRORS,
    day_range,
    read_error,
    scan_metrics,
    scan_runs,
    unreadable_parts,
)
from tower.report.figures import (
    compact,
    compute_figures,
    daily_take_seconds,
    with_seconds,
)
from tower.report.model import (
    CHART_DAYS,
    CHART_TITLES,
    COMPONENTS,
    DayPoint,
    Figures,
    TrendRow,
    Window,
)
from tower.report.render import chart_image, render_json, render_markdown
from tower.report.trends import trends
from tower.report.verdicts import Recommendation, Verdict, recommendations, verdicts
from tower.shotlist.presets import BUILTIN_PRESETS, Preset
from tower.store.files import DataRoot, atomic_write_bytes, atomic_write_text


@dataclass(frozen=True)
class Report:
    """Everything one report says."""

    figures: Figures
    previous: Figures
    trends: tuple[TrendRow, ...]
    verdicts: tuple[Verdict, ...]
    recommendations: tuple[Recommendation, ...]
    daily: tuple[DayPoint, ...]
    # Metrics or run-log parts the report could not read (paths under the data root);
    # their rows are missing from every figure, so the report says so.
    skipped: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReportFiles:
    """Where a report was written."""

    markdown: Path
    json: Path
    charts: dict[str, Path] = field(default_factory=dict)


def chart_window(window: Window) -> Window:
    """The last :data:`CHART_DAYS` days up to the end of ``window``."""
    return Window(window.end - timedelta(days=CHART_DAYS), window.end)


def report_from_frames(window: Window, metrics: pl.LazyFrame, runs: pl.LazyFrame,
                       presets: Mapping[str, Preset] = BUILTIN_PRESETS) -> Report:
    """The report of ``window`` from frames holding at least it and the 14 days before."""
    # Read the files once; every figure below is then a query over memory.
    metrics = compact(metrics).collect().lazy()
    runs = runs.collect().lazy()
    figures = compute_figures(window, metrics, runs)
    previous = compute_figures(window.previous(), metrics, runs)
    charts = chart_window(window)
    daily = daily_take_seconds(with_seconds(metrics.filter(
        pl.col("finished_at").is_between(charts.start, charts.end, closed="left"))))
    return Report(figures, previous, trends(figures, previous), verdicts(figures),
                  recommendations(figures, presets), daily)


def build_report(data: DataRoot, window: Window,
                 presets: Mapping[str, Preset] = BUILTIN_PRESETS) -> Report:
    """Read the metrics and runs under ``data`` and build the report of ``window``.

    Raises:
        ReportDataError: a dataset file could not be read (the message names the folder).
    """
    since = min(window.previous().start, chart_window(window).start)
    try:
        metrics = scan_metrics(data, since, window.end)
        runs = scan_runs(data, since, window.end)
        report = report_from_frames(window, metrics, runs, presets)
        skipped = unreadable_parts(data, since, window.end)
    except READ_ERRORS as err:
        raise read_error(err, data) from err
    return replace(report, skipped=skipped)


def chart_names(window: Window) -> dict[str, str]:
    """File names of the charts, keyed by what they show."""
    return {kind: f"{window.label}-{kind}.png" for kind in CHART_TITLES}


def shown_charts(report: Report) -> tuple[str, ...]:
    """The kinds of chart that have something to draw, in :data:`CHART_TITLES` order.

    A window without successful batches leaves the bar charts blank; the line chart
    is blank only when none of the last :data:`CHART_DAYS` days saw a batch.
    """
    drawn = {"seconds-per-take": bool(report.daily), "gpu-busy": bool(report.figures.loads),
             "time-breakdown": bool(report.figures.presets)}
    return tuple(kind for kind in CHART_TITLES if drawn[kind])


def render_charts(report: Report) -> dict[str, bytes]:
    """The three charts as PNG bytes, keyed like :func:`chart_names`."""
    window = chart_window(report.figures.window)
    days = [d.isoformat() for d in day_range(window.start.date(),
                                             (window.end - timedelta(microseconds=1)).date())]
    series: dict[str, dict[str, float]] = {}
    for point in report.daily:
        series.setdefault(point.preset, {})[point.day] = point.mean_take_s
    busy = {s.server: s.busy_share or 0.0 for s in report.figures.loads}
    stacks = {t.name: t.breakdown for t in report.figures.presets}
    return {
        "seconds-per-take": line_chart(CHART_TITLES["seconds-per-take"], days, series),
        "gpu-busy": bar_chart(CHART_TITLES["gpu-busy"], busy, top=1.0, y_format="{:.0%}"),
        "time-breakdown": stacked_bar_chart(CHART_TITLES["time-breakdown"], stacks, COMPONENTS),
    }


def write_report(report: Report, data: DataRoot) -> ReportFiles:
    """Write ``reports/<day>.md``, ``.json`` and the charts; every file atomically.

    Every chart is written, blank or not; the markdown links those with something to
    draw (:func:`shown_charts`) by file name, as they sit beside it. Charts go first
    so the markdown never links a missing file.
    """
    label = report.figures.window.label
    names = chart_names(report.figures.window)
    charts: dict[str, Path] = {}
    for kind, png in render_charts(report).items():
        charts[kind] = data.inside(f"reports/{names[kind]}")
        atomic_write_bytes(charts[kind], png)
    json_path = data.inside(f"reports/{label}.json")
    atomic_write_text(json_path, json.dumps(render_json(report), indent=2) + "\n")
    md_path = data.inside(f"reports/{label}.md")
    links = {kind: chart_image(kind, names[kind]) for kind in shown_charts(report)}
    atomic_write_text(md_path, render_markdown(report, links))
    return ReportFiles(md_path, json_path, charts)
