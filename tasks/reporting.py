"""End-of-run tasks: the contact sheet, the summary artifact and the run-log row."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from tower.runtime.contact_sheet import make_contact_sheet, sheet_path
from tower.runtime.summary import RunInfo, RunTally, run_record, run_summary, summary_markdown
from tower.store.files import DataRoot
from tower.store.metrics import RunLog


@task(name="publish-summary", cache_policy=NO_CACHE)
def publish_summary(tally: RunTally, info: RunInfo, *, root: DataRoot,
                    out_of_rotation: Mapping[str, str], status: str, key: str,
                    title: str) -> dict[str, Any]:
    """Write the contact sheet, the markdown artifact and one RunRecord; return the summary."""
    finished = datetime.now(UTC)
    sheet = None
    if tally.images:
        dest = root.renders / sheet_path(info.episode, info.run_id)
        sheet = str(make_contact_sheet(tally.images, dest, title=f"{title} {info.run_id}"))
    markdown = summary_markdown(title, tally, started=info.started, finished=finished,
                                servers=info.servers, model_swaps=info.model_swaps,
                                out_of_rotation=out_of_rotation, contact_sheet=sheet,
                                status=status)
    create_markdown_artifact(markdown, key=key, description=f"{title} {info.run_id}")
    RunLog(root.runs).append([run_record(info, tally, status, finished)])
    return run_summary(info, tally, status=status, finished=finished,
                       out_of_rotation=out_of_rotation, contact_sheet=sheet, markdown=markdown)
