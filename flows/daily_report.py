"""The scheduled daily report: yesterday's numbers as files, a Prefect artifact and a log.

Thin on purpose: every figure comes from :mod:`tower.report.build`; this flow picks the
window (from ``now``, which a test can pin), first compacts the closed days it reads
(their many per-batch parts become a few files), writes the files atomically under the
data root, publishes the markdown as an artifact (charts embedded as pictures, files
named relative to the data root, so it reads the same in a browser on any machine),
and adds the farm's status when servers are given. Parameters resolve like the render
flow's: a data root path, else a saved RenderStore block, else ``TOWER_DATA_ROOT``;
servers as URLs, ``name=URL`` or saved ComfyUIServer block names, else
``TOWER_SERVERS``. Its schedule (the morning after the nightly render) is the
``daily-report`` deployment in ``prefect.yaml``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from blocks.comfyui_server import ComfyUIServer
from tasks.setup import resolve_data_root, resolve_presets, resolve_servers, server_entries
from tower.report.artifact import artifact_markdown
from tower.report.build import Report, ReportFiles, build_report, chart_window, write_report
from tower.report.model import report_window
from tower.report.status import gather_status, render_status
from tower.shotlist.presets import Preset
from tower.store.compaction import CompactResult
from tower.store.files import DataRoot
from tower.store.metrics import MetricsStore, RunLog, compact_closed_days
from tower.store.parquet_io import StoreError

ARTIFACT_KEY = "daily-report"


@task(name="compact-closed-days", cache_policy=NO_CACHE)
def compact_task(data: DataRoot, day: date | None, since: date | None,
                 now: datetime) -> CompactResult | None:
    """Compact the metrics and run-log days the report reads, except today's.

    Only a speed-up: if it fails (say another compaction holds a day's lock) the report
    reads the parts as they are, so the error is logged, not raised.
    """
    window = report_window(now, day, since)
    first = min(window.previous().start, chart_window(window).start).date()
    try:
        result = compact_closed_days(MetricsStore(data.metrics), RunLog(data.runs), first,
                                     now.astimezone(UTC).date())
    except StoreError as err:
        get_run_logger().warning("Compaction skipped: %s", err)
        return None
    get_run_logger().info("Compacted closed days: %d parts -> %d (%d rows)",
                          result.parts_before, result.parts_after, result.rows)
    return result


@task(name="build-report", retries=1, retry_delay_seconds=10, cache_policy=NO_CACHE)
def build_report_task(data: DataRoot, day: date | None, since: date | None, now: datetime,
                      presets: Mapping[str, Preset]) -> Report:
    """Compute the report; one retry covers a part renamed into place mid-read."""
    report = build_report(data, report_window(now, day, since), presets)
    for part in report.skipped:
        get_run_logger().warning("Skipped unreadable data file %s; its rows are missing from"
                                 " the report (tower index check / tower index repair)", part)
    return report


@task(name="write-report", cache_policy=NO_CACHE)
def write_report_task(report: Report, data: DataRoot) -> ReportFiles:
    return write_report(report, data)


@task(name="farm-status", cache_policy=NO_CACHE)
def status_task(servers: list[ComfyUIServer], data: DataRoot, now: datetime) -> str:
    """The status of every server (unreachable ones say why) and of the data root."""
    clients = [server.get_client() for server in servers]
    try:
        text = render_status(gather_status(clients, data, now))
    finally:
        for client in clients:
            client.close()
    get_run_logger().info("Farm status:\n%s", text)
    return text


@task(name="publish-report", cache_policy=NO_CACHE)
def publish_report_task(report: Report, files: ReportFiles, data: DataRoot,
                        status: str | None = None) -> str:
    """Publish the markdown (and the farm status, if any) as an artifact.

    Charts are embedded as JPEGs; written files are named relative to the data root.
    """
    markdown = artifact_markdown(report, files, data.root, status)
    create_markdown_artifact(markdown=markdown, key=ARTIFACT_KEY,
                             description=f"Tower performance report {report.figures.window.label}")
    return markdown


@flow(name="daily-report")
def daily_report(data_root: str | None = None, render_store: str | None = None,
                 day: date | None = None, since: date | None = None,
                 servers: list[str] | None = None, presets_file: str | None = None,
                 presets_block: str | None = None,
                 now: datetime | None = None) -> dict[str, str]:
    """Report the last 24 hours (or one ``day``, or ``since`` a day) and file it.

    Returns the paths written, keyed ``markdown``, ``json`` and each chart's kind.
    """
    now = now or datetime.now(UTC)
    data = resolve_data_root(data_root, render_store)
    presets = resolve_presets(presets_file, presets_block)
    entries = server_entries(servers)

    compact_task(data, day, since, now)
    report = build_report_task(data, day, since, now, presets)
    files = write_report_task(report, data)
    status = status_task(resolve_servers(entries), data, now) if entries else None
    publish_report_task(report, files, data, status)
    get_run_logger().info("Report %s written to %s: %d recommendation(s)",
                          report.figures.window.label, files.markdown,
                          len(report.recommendations))
    return {"markdown": str(files.markdown), "json": str(files.json),
            **{kind: str(path) for kind, path in files.charts.items()}}


if __name__ == "__main__":
    daily_report()
