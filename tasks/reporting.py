"""End-of-run tasks: the contact sheet, the summary artifact and the run-log row."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from tower.planning.preview import reuse_similar
from tower.runtime.contact_sheet import make_contact_sheet
from tower.runtime.summary import RunTally, summary_markdown
from tower.spec.takes import ResolvedTake
from tower.store.files import DataRoot
from tower.store.index import IndexRow, OutputIndex
from tower.store.metrics import RunLog, RunRecord

CONTACT_SHEETS = "contact-sheets"


@task(name="reuse-similar", cache_policy=NO_CACHE)
def reuse_similar_task(takes: Sequence[ResolvedTake], root: DataRoot,
                       ) -> tuple[list[ResolvedTake], list[tuple[ResolvedTake, IndexRow]]]:
    """Takes that still need rendering once look-alike images already indexed stand in."""
    similar = OutputIndex(root.index).similar(takes)
    to_render, reused = reuse_similar(takes, similar)
    get_run_logger().info("reusing %d look-alike images, %d takes to render", len(reused),
                          len(to_render))
    return to_render, reused


def contact_sheet_path(episode: str, run_id: str) -> str:
    """Relative to the render root, so the sheet lives next to the episode's images."""
    return f"{episode}/{CONTACT_SHEETS}/{run_id}.png"


@task(name="publish-summary", cache_policy=NO_CACHE)
def publish_summary(tally: RunTally, *, root: DataRoot, run_id: str, flow_run_id: str | None,
                    flow: str, episode: str, preset: str | None, servers: list[str],
                    started: datetime, batches: int, model_swaps: Mapping[str, int],
                    out_of_rotation: Mapping[str, str], status: str, key: str,
                    title: str) -> dict[str, Any]:
    """Write the contact sheet, the markdown artifact and one RunRecord; return the summary."""
    finished = datetime.now(UTC)
    sheet = None
    if tally.images:
        dest = root.renders / contact_sheet_path(episode, run_id)
        sheet = str(make_contact_sheet(tally.images, dest, title=f"{title} {run_id}"))
    markdown = summary_markdown(title, tally, started=started, finished=finished,
                                servers=servers, model_swaps=model_swaps,
                                out_of_rotation=out_of_rotation, contact_sheet=sheet,
                                status=status)
    create_markdown_artifact(markdown, key=key, description=f"{title} {run_id}")
    RunLog(root.runs).append([RunRecord(
        run_id=run_id, flow_run_id=flow_run_id, flow=flow, episode=episode, preset=preset,
        servers=list(servers), started_at=started, finished_at=finished,
        takes_requested=tally.takes_requested, takes_deduped=tally.takes_deduped,
        takes_rendered=tally.takes_rendered + tally.takes_cached,
        takes_failed=tally.takes_failed, batches=batches, retries=tally.retries,
        oom_splits=tally.oom_splits, model_swaps=sum(model_swaps.values()), status=status)])
    wall_s = (finished - started).total_seconds()
    return {
        "run_id": run_id, "episode": episode, "status": status,
        "takes_requested": tally.takes_requested, "takes_deduped": tally.takes_deduped,
        "takes_rendered": tally.takes_rendered, "takes_cached": tally.takes_cached,
        "takes_failed": tally.takes_failed, "batches": batches,
        "batches_failed": tally.batches_failed, "retries": tally.retries,
        "oom_splits": tally.oom_splits, "model_swaps": sum(model_swaps.values()),
        "wall_s": wall_s, "images_per_minute": tally.images_per_minute(wall_s),
        "gpu_busy_share": tally.gpu_busy_share(wall_s, len(servers)),
        "out_of_rotation": dict(out_of_rotation), "failures": list(tally.failures),
        "images": [str(path) for _, path in tally.images], "contact_sheet": sheet,
        "markdown": markdown,
    }
