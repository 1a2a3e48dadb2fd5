"""The scheduled daily report: yesterday's numbers as files, a Prefect artifact and a log.

Thin on purpose: every figure comes from :mod:`tower.report`; this flow only picks the
window (from ``now``, which a test can pin), writes the files atomically under the
data root, publishes the markdown as an artifact, and logs the farm's status.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from tower.comfyui import ComfyUIClient
from tower.report import Report, ReportFiles, build_report, chart_names, write_report
from tower.report_model import report_window
from tower.report_render import render_markdown
from tower.status import gather_status, render_status
from tower.storage import DEFAULT_DATA_ROOT, DataRoot

ARTIFACT_KEY = "daily-report"
# After the nightly render (which starts at 22:00 UTC and should end well before this).
DAILY_CRON = "30 6 * * *"
STATUS_TIMEOUT_S = 5.0


@task(name="build-report", retries=1, retry_delay_seconds=10, cache_policy=NO_CACHE)
def build_report_task(data_root: Path, day: date | None, since: date | None,
                      now: datetime) -> Report:
    """Compute the report; one retry covers a part renamed into place mid-read."""
    return build_report(DataRoot(data_root), report_window(now, day, since))


@task(name="write-report", cache_policy=NO_CACHE)
def write_report_task(report: Report, data_root: Path) -> ReportFiles:
    return write_report(report, DataRoot(data_root))


@task(name="publish-report", cache_policy=NO_CACHE)
def publish_report_task(report: Report, files: ReportFiles, status: str | None = None) -> str:
    """Publish the markdown (and the farm status, if any) as an artifact.

    Chart links point at the files written under the data root.
    """
    charts = {kind: str(files.charts[kind]) for kind in chart_names(report.figures.window)}
    markdown = render_markdown(report, charts)
    if status:
        markdown += f"\n## Farm status\n\n```\n{status}\n```\n"
    create_markdown_artifact(markdown=markdown, key=ARTIFACT_KEY,
                             description=f"Tower performance report {report.figures.window.label}")
    return markdown


@task(name="log-status", cache_policy=NO_CACHE)
def log_status_task(servers: list[str], data_root: Path, now: datetime) -> str:
    clients = [ComfyUIClient(url, timeout=STATUS_TIMEOUT_S, connect_timeout=STATUS_TIMEOUT_S)
               for url in servers]
    try:
        text = render_status(gather_status(clients, DataRoot(data_root), now))
    finally:
        for client in clients:
            client.close()
    get_run_logger().info("Farm status:\n%s", text)
    return text


@flow(name="daily_report", log_prints=False)
def daily_report(data_root: Path = DEFAULT_DATA_ROOT, day: date | None = None,
                 since: date | None = None, servers: list[str] | None = None,
                 now: datetime | None = None) -> dict[str, str]:
    """Report the last 24 hours (or one ``day``, or ``since`` a day) and file it.

    Returns the paths written, keyed ``markdown``, ``json`` and each chart's kind.
    """
    now = now or datetime.now(UTC)
    report = build_report_task(data_root, day, since, now)
    files = write_report_task(report, data_root)
    status = log_status_task(servers, data_root, now) if servers else None
    publish_report_task(report, files, status)
    get_run_logger().info("Report %s written to %s: %d recommendation(s)",
                          report.figures.window.label, files.markdown,
                          len(report.recommendations))
    return {"markdown": str(files.markdown), "json": str(files.json),
            **{kind: str(path) for kind, path in files.charts.items()}}


if __name__ == "__main__":
    daily_report.serve(name="daily-report", cron=DAILY_CRON)
