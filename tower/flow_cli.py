"""``tower render`` and ``tower serve``: the Prefect flows from the command line.

Prefect is imported inside the commands only, so the rest of ``tower`` (and its
tests) never loads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

DEFAULT_PREFECT_YAML = Path("prefect.yaml")


def _print_plan(result: dict[str, Any]) -> None:
    for row in result.get("plan", []):
        typer.echo(f"{row['server']:<16} {row['shot']:<16} {row['takes']:<7} {row['preset']:<9}"
                   f" {row['vram_estimate_mb']:>7} MB {row['est_seconds']:>7} s")
    typer.echo(f"{result['batches']} batches, {result['takes_to_render']} takes to render, "
               f"{result['takes_deduped']} already rendered")


def render_command(
    shot_list: Annotated[str, typer.Argument(help="shot list (.yaml/.csv/.json)")],
    server: Annotated[Optional[list[str]], typer.Option(  # noqa: UP045
        "--server", "-s", help="ComfyUI URL, name=URL or saved block name (repeatable)")] = None,
    preset: Annotated[Optional[str], typer.Option(help="render every shot at this preset")] = None,  # noqa: UP045
    shot: Annotated[Optional[list[str]], typer.Option(  # noqa: UP045
        "--shot", help="only this shot id (repeatable)")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="plan and preflight only")] = False,
    force: Annotated[bool, typer.Option("--force", help="render even what exists")] = False,
    data_root: Annotated[Optional[str], typer.Option(help="data folder")] = None,  # noqa: UP045
) -> None:
    """Render an episode now, in this process, against real ComfyUI servers."""
    from flows.render_episode import render_episode

    state = render_episode(shot_list=shot_list, servers=server or None, preset=preset,
                           shots=shot or None, dry_run=dry_run, force=force,
                           data_root=data_root, return_state=True)
    result = state.result(raise_on_failure=False)
    if isinstance(result, dict) and result.get("dry_run"):
        _print_plan(result)
    elif isinstance(result, dict) and "markdown" in result:
        typer.echo(result["markdown"])
    if not state.is_completed():
        typer.echo(f"{state.name}: {state.message}", err=True)
        raise typer.Exit(1)


def serve_command(
    prefect_yaml: Annotated[Path, typer.Option(help="deployments file")] = DEFAULT_PREFECT_YAML,
    limit: Annotated[Optional[int], typer.Option(help="max concurrent flow runs")] = None,  # noqa: UP045
) -> None:
    """Serve the nightly, daily-report and draft-preview deployments from this process."""
    from prefect import serve

    from tasks.deployments import runner_deployments

    serve(*runner_deployments(prefect_yaml), pause_on_shutdown=False, limit=limit)
