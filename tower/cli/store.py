"""``tower plan``, ``tower index compact|stats|check|repair`` and ``tower metrics compact``.

The planner, the output index and the metrics store by hand.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Optional

import typer

from tower.planning.pipeline import plan_run, recent_metrics
from tower.planning.planner import PlanningError, ServerSpec
from tower.planning.vram import GPU_PROFILES
from tower.settings import DATA_ROOT_ENV, data_root_path
from tower.shotlist.errors import InputError
from tower.shotlist.presets import load_presets
from tower.shotlist.shots import load_shot_list
from tower.store import integrity
from tower.store.compaction import CompactResult
from tower.store.files import DEFAULT_DATA_ROOT, DataRoot
from tower.store.index import OutputIndex
from tower.store.metrics import MetricsStore, RunLog
from tower.store.parquet_io import StoreError

DEFAULT_SERVERS = "local=12gb"

DataRootOption = Annotated[Optional[Path], typer.Option(  # noqa: UP045
    "--data-root", show_default=False,
    help=f"data root folder (default ${DATA_ROOT_ENV}, else {DEFAULT_DATA_ROOT})")]
index_app = typer.Typer(help="Maintain the output index.", no_args_is_help=True)
metrics_app = typer.Typer(help="Maintain the metrics store and run log.",
                          no_args_is_help=True)


def parse_servers(text: str) -> list[ServerSpec]:
    """``name=budget_mb`` or ``name=<profile>`` (8gb, 12gb, ...), comma separated.

    Raises:
        typer.BadParameter: naming the entry that is wrong.
    """
    servers = []
    for entry in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = entry.partition("=")
        if not sep or not name.strip():
            raise typer.BadParameter(f"{entry!r}: expected name=budget_mb or name=<profile>")
        value = value.strip().lower()
        if value in GPU_PROFILES:
            budget = float(GPU_PROFILES[value].budget_mb)
        else:
            try:
                budget = float(value)
            except ValueError:
                raise typer.BadParameter(
                    f"{entry!r}: budget must be MB or one of {', '.join(GPU_PROFILES)}") from None
        servers.append(ServerSpec(name.strip(), budget))
    if not servers:
        raise typer.BadParameter("at least one server is needed")
    return servers


def _fail(message: str) -> None:
    typer.echo(message, err=True)
    raise typer.Exit(1)


def plan_command(
    shot_list: Annotated[str, typer.Argument(help="shot list (.yaml/.csv/.json)")],
    servers: Annotated[str, typer.Option(
        "--servers", help="name=budget_mb or name=<profile>, comma separated")] = DEFAULT_SERVERS,
    data_root: DataRootOption = None,
    presets: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        "--presets", help="YAML presets file")] = None,
    preset: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "--preset", help="render every shot at this preset")] = None,
) -> None:
    """Print the render plan of a shot list, skipping takes the output index already has.

    The same planning as the render and preview flows (:mod:`tower.planning.pipeline`):
    the VRAM and time models are calibrated from the last 30 days of metrics under the
    data root when there are enough measured batches.
    """
    specs = parse_servers(servers)
    root = DataRoot(data_root_path(data_root))
    try:
        run = plan_run(shot_list, presets=load_presets(presets), servers=specs,
                       data_root=root, metrics=recent_metrics(root, datetime.now(UTC).date()),
                       preset=preset)
    except InputError as err:
        _fail("\n".join(str(p) for p in err.problems))
        return
    except (PlanningError, StoreError) as err:
        _fail(str(err))
        return
    for warning in run.warnings:
        typer.echo(f"warning: {warning}", err=True)
    for bad in unreadable_parts(root):
        typer.echo(f"warning: skipped unreadable part {bad}", err=True)
    for line in run.models.describe():
        typer.echo(line)
    result = run.dedup
    typer.echo(f"{len(result.rendered)} of {len(run.takes)} takes already rendered"
               f" ({len(result.missing_files)} indexed but missing on disk),"
               f" {len(result.same_as)} share an image with another take")
    typer.echo(run.plan.table())


@index_app.command("compact")
def compact_command(
    data_root: DataRootOption = None,
    target_rows: Annotated[int, typer.Option(help="rows per merged file", min=1)] = 1_000_000,
) -> None:
    """Merge the index's small part files; every row is kept."""
    try:
        result = OutputIndex(DataRoot(data_root_path(data_root)).index).compact(target_rows)
    except StoreError as err:
        _fail(str(err))
        return
    typer.echo(describe_compaction(result))


def describe_compaction(result: CompactResult) -> str:
    """One line saying what a compaction did."""
    return (f"{result.rows} rows: {result.parts_before} parts -> {result.parts_after}"
            f" ({len(result.merged)} merged files written, {result.removed} parts removed"
            f", {result.stale_temporaries} stale temporaries cleared)")


@metrics_app.command("compact")
def metrics_compact_command(
    data_root: DataRootOption = None,
    before: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "--before", help="only days before this one (YYYY-MM-DD); default: every day")] = None,
) -> None:
    """Merge each day's small metrics and run-log part files; every row is kept."""
    try:
        until = date.fromisoformat(before) if before is not None else None
    except ValueError:
        raise typer.BadParameter(f"expected YYYY-MM-DD, got {before!r}",
                                 param_hint="--before") from None
    root = DataRoot(data_root_path(data_root))
    try:
        metrics = MetricsStore(root.metrics).compact(before=until)
        runs = RunLog(root.runs).compact(before=until)
    except StoreError as err:
        _fail(str(err))
        return
    typer.echo(f"metrics: {describe_compaction(metrics)}")
    typer.echo(f"runs: {describe_compaction(runs)}")


@index_app.command("stats")
def stats_command(data_root: DataRootOption = None) -> None:
    """Rows, bytes and takes per episode and preset in the output index."""
    root = DataRoot(data_root_path(data_root))
    try:
        stats = OutputIndex(root.index).stats(run_log=RunLog(root.runs))
    except StoreError as err:
        _fail(str(err))
        return
    for bad in OutputIndex(root.index).unreadable():
        typer.echo(f"warning: skipped unreadable part {bad}", err=True)
    typer.echo(f"{stats.rows} rows in {stats.parts} parts, {stats.unique_keys} unique images,"
               f" {stats.total_bytes / 1e6:.1f} MB")
    typer.echo(f"re-rendered: {stats.rerendered}, served from the index: "
               f"{stats.duplicates_avoided if stats.duplicates_avoided is not None else 0}")
    for episode, rows in stats.by_episode.items():
        typer.echo(f"  episode {episode}: {rows} takes,"
                   f" {stats.bytes_by_episode[episode] / 1e6:.1f} MB")
    for name, rows in stats.by_preset.items():
        typer.echo(f"  preset {name}: {rows} takes")


def unreadable_parts(root: DataRoot) -> list[str]:
    """The index and metrics parts reads skipped, as ``path: reason`` lines."""
    return [str(bad) for bad in OutputIndex(root.index).unreadable()
            + MetricsStore(root.metrics).unreadable()]


DEFAULT_GRACE_S = integrity.DEFAULT_GRACE.total_seconds()
JsonOption = Annotated[bool, typer.Option("--json", help="print the report as JSON")]
QuickOption = Annotated[bool, typer.Option(
    "--quick", help="compare image sizes only, not their sha256 (no image is read)")]
GraceOption = Annotated[float, typer.Option(
    "--grace", min=0, help="seconds: files modified more recently are not judged (a running"
    " batch writes its images before its index rows)")]


@index_app.command("check")
def check_command(data_root: DataRootOption = None, as_json: JsonOption = False,
                  quick: QuickOption = False,
                  grace: GraceOption = DEFAULT_GRACE_S) -> None:
    """Compare the index with the render folder and the stores' part files.

    One line per problem, naming its file: unreadable parts (index, metrics, run log),
    the newest row of a key whose image is missing or has another size or sha256,
    identical rows stored twice, take images no row points at. Exit code 1 when a
    problem is found. Safe while a flow runs.
    """
    root = DataRoot(data_root_path(data_root))
    try:
        report = integrity.check(root, grace=timedelta(seconds=grace), hash_files=not quick)
    except StoreError as err:
        _fail(str(err))
        return
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
    else:
        for line in report.lines():
            typer.echo(line)
    if not report.ok:
        raise typer.Exit(1)


@index_app.command("repair")
def repair_command(
    data_root: DataRootOption = None,
    shot_lists: Annotated[Optional[list[Path]], typer.Option(  # noqa: UP045
        "--shot-list", help="shot list whose takes orphan images are matched against"
        " (repeatable): a file name holds only 12 of the render key's 64 digits")] = None,
    presets: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        "--presets", help="YAML presets file the shot lists were rendered with")] = None,
    as_json: JsonOption = False, quick: QuickOption = False,
    grace: GraceOption = DEFAULT_GRACE_S,
) -> None:
    """Fix what ``tower index check`` finds, saying what was done.

    Unreadable parts move to ``_quarantine/`` in their store; rows whose image is gone
    or different are dropped (the next run renders them again) and such images moved to
    ``renders/_quarantine/``; duplicate rows are kept once; orphan images are indexed
    when a take of a ``--shot-list`` has exactly their path. Nothing is deleted. Exit
    code 1 when problems remain. Safe while a flow runs.
    """
    root = DataRoot(data_root_path(data_root))
    wait = timedelta(seconds=grace)
    try:
        known = load_presets(presets)
        lists = [load_shot_list(path, known) for path in shot_lists or []]
        takes = integrity.candidate_takes(lists, known)
        report = integrity.check(root, grace=wait, hash_files=not quick)
        result = integrity.repair(root, report, takes=takes, grace=wait)
        after = integrity.check(root, grace=wait, hash_files=not quick)
    except InputError as err:
        _fail("\n".join(str(p) for p in err.problems))
        return
    except StoreError as err:
        _fail(str(err))
        return
    if as_json:
        typer.echo(json.dumps({**result.to_json(), "after": after.to_json()}, indent=2))
    else:
        for line in result.actions:
            typer.echo(line)
        for line in result.unrepaired:
            typer.echo(f"not repaired: {line}")
        for line in after.lines():
            typer.echo(f"after repair: {line}")
    if not after.ok:
        raise typer.Exit(1)
