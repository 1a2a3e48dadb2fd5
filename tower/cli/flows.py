"""``tower render``, ``tower preview``, ``tower daily-report``, ``tower serve``, and the
running flows of ``tower status``.

The first three run a Prefect flow now, in this process, with the same parameters a
deployment run takes: their options are declared once in :mod:`tower.cli.options`
(checked against the flows' signatures by a test), and only the options given are
passed on, so each flow keeps its own defaults. They print the flow's result and exit
1 with the reason when the run does not complete.

Option values that need a look at a file or at Prefect's saved blocks (a presets file,
a RenderStore or RenderPresets block, the servers) and the shot list itself are checked
here before the flow starts (:func:`check_inputs`), with the same functions the flow
uses, so a typo ends in one line naming the option, or in the shot list's problems,
instead of a failed flow run in the Prefect UI.

While a render or preview runs here, the flow run's log (shown in this terminal) gets
one progress line at most every ten seconds, e.g. ``ep01: 120/480 takes, 14.2 img/min,
ETA 03:41 UTC (25 min)`` (:class:`tasks.watch.RunWatch`).

``tower status`` adds the flow runs of ``render-episode`` and ``draft-preview`` in state
Running with their latest ETA table (:func:`running_flows`), read from the Prefect API
the command line is configured for; without one, or when it does not answer within
:data:`PREFECT_PROBE_TIMEOUT_S`, it says so in one line and shows the rest.

Prefect and the flows are imported inside the commands only, so the rest of ``tower``
(and its tests) never loads it.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import httpx
import typer
from pydantic import ValidationError

from tower.cli.options import (
    DataRootPath,
    Day,
    DryRun,
    Force,
    MaxServerFailures,
    OptionalShotListPath,
    PresetName,
    PresetsBlockName,
    PresetsFile,
    Prompt,
    QualityPreference,
    RenderStoreName,
    Retries,
    RetryBackoff,
    Reuse,
    Servers,
    ShotListPath,
    Shots,
    Since,
    Takes,
    TimeBudget,
    given,
    hint,
)
from tower.cli.report import status_command as farm_status_command
from tower.report.model import report_window
from tower.report.status import RunningFlow, render_running
from tower.runtime.progress import parse_rows
from tower.runtime.runs import artifact_key
from tower.settings import SERVERS_ENV
from tower.shotlist.errors import InputError
from tower.shotlist.presets import Preset, load_presets
from tower.shotlist.shots import read_shot_list

DEFAULT_PREFECT_YAML = Path("prefect.yaml")
T = TypeVar("T")
PREFECT_PROBE_TIMEOUT_S = 2.0
# Flow name -> the run kind whose ETA table it publishes (RunArtifacts.progress_table).
WATCHED_FLOWS = {"render-episode": "render", "draft-preview": "preview"}


def one_line(err: BaseException) -> str:
    """An error's message on one line (pydantic and InputError messages span several)."""
    if isinstance(err, InputError):
        return "; ".join(str(problem) for problem in err.problems)
    if isinstance(err, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or e['type']}: {e['msg']}"
                         for e in err.errors())
    text = " ".join(str(err).split())
    return text or type(err).__name__


def exit_with_problems(err: InputError) -> None:
    """Every problem of a shot list or presets file on stderr, then exit 1."""
    for problem in err.problems:
        typer.echo(str(problem), err=True)
    typer.echo(f"{len(err.problems)} problem(s) found.", err=True)
    raise typer.Exit(1)


def check_inputs(params: dict[str, Any], *, default_server: bool) -> None:
    """Refuse here what the flow would refuse, before a flow run exists.

    The presets file is read first, before Prefect is even imported. Then, with the
    flow's own functions and precedence: the servers (given, else ``$TOWER_SERVERS``,
    else, where ``default_server``, the local one), a RenderStore block only without
    ``--data-root``, a RenderPresets block only without ``--presets-file``. A bad value
    is a usage error naming its option. Last, the shot list is validated with the
    presets the run will use and every problem printed with file, line and field, as
    ``tower validate`` does (exit 1): a broken list never becomes a failed flow run.
    """
    presets = presets_from_file(params)
    from tasks.setup import resolve_data_root, resolve_presets, resolve_servers, server_entries

    entries = server_entries(params.get("servers"))
    if entries or default_server:
        where = hint("servers") if params.get("servers") else f"${SERVERS_ENV}"
        as_option_error(where, lambda: resolve_servers(entries))
    if params.get("render_store") and not params.get("data_root"):
        as_option_error(hint("render_store"),
                        lambda: resolve_data_root(None, params["render_store"]))
    if presets is None:
        presets = as_option_error(hint("presets_block"),
                                  lambda: resolve_presets(None, params.get("presets_block")))
    if params.get("shot_list"):
        try:
            read_shot_list(params["shot_list"], presets)
        except InputError as err:
            exit_with_problems(err)


def presets_from_file(params: dict[str, Any]) -> dict[str, Preset] | None:
    """The ``--presets-file`` presets, or None without one; a bad file is its error."""
    path = params.get("presets_file")
    if not path:
        return None
    try:
        return load_presets(Path(path))
    except InputError as err:
        raise typer.BadParameter(one_line(err), param_hint=hint("presets_file")) from None


def as_option_error(where: str, load: Callable[[], T]) -> T:
    """``load()``; any failure to load is the option's problem, said in one line."""
    try:
        return load()
    except Exception as err:
        raise typer.BadParameter(one_line(err), param_hint=where) from None


def run_flow(flow: Any, params: dict[str, Any]) -> tuple[Any, Any]:
    """Run ``flow`` here; its final state and result (a failed run's summary too)."""
    state = flow(**params, return_state=True)
    return state, state.result(raise_on_failure=False)


def exit_unless_completed(state: Any) -> None:
    """Exit 1 with the state's reason when the run did not complete."""
    if not state.is_completed():
        typer.echo(f"{state.name}: {state.message}", err=True)
        raise typer.Exit(1)


def print_plan(result: dict[str, Any]) -> None:
    for row in result.get("plan", []):
        typer.echo(f"{row['server']:<16} {row['shot']:<16} {row['takes']:<7} {row['preset']:<9}"
                   f" {row['vram_estimate_mb']:>7} MB {row['est_seconds']:>7} s")
    typer.echo(f"{result['batches']} batches, {result['takes_to_render']} takes to render, "
               f"{result['takes_deduped']} already rendered")


def print_preview(result: dict[str, Any]) -> None:
    """The summary, the preset chosen and why, then one image path a line (easy to open)."""
    typer.echo(result["markdown"])
    expected = result.get("expected_s")
    typer.echo(f"preset {result['preset']}: {result['preset_reason']}"
               + ("" if expected is None else f" (expected {expected:.0f} s)"))
    for path in result.get("images", []):
        typer.echo(path)


def render_command(
    shot_list: ShotListPath, shots: Shots = None, preset: PresetName = None,
    servers: Servers = None, dry_run: DryRun = False, force: Force = False,
    reuse: Reuse = None, data_root: DataRootPath = None, render_store: RenderStoreName = None,
    presets_file: PresetsFile = None, presets_block: PresetsBlockName = None,
    retries: Retries = None, retry_backoff_s: RetryBackoff = None,
    max_server_failures: MaxServerFailures = None,
) -> None:
    """Render an episode now, in this process, against real ComfyUI servers."""
    params = given(locals())  # every parameter here is a render_episode parameter
    check_inputs(params, default_server=True)
    from flows.render_episode import render_episode

    state, result = run_flow(render_episode, params)
    if isinstance(result, dict) and result.get("dry_run"):
        print_plan(result)
    elif isinstance(result, dict) and "markdown" in result:
        typer.echo(result["markdown"])
    exit_unless_completed(state)


def preview_command(
    shot_list: OptionalShotListPath = None, shots: Shots = None, prompt: Prompt = None,
    takes: Takes = None, servers: Servers = None, time_budget_seconds: TimeBudget = None,
    quality_preference: QualityPreference = None, reuse: Reuse = None,
    data_root: DataRootPath = None, render_store: RenderStoreName = None,
    presets_file: PresetsFile = None, presets_block: PresetsBlockName = None,
    retries: Retries = None, retry_backoff_s: RetryBackoff = None,
) -> None:
    """Preview a few shots (or a free prompt) now, ahead of queued work.

    Prints the summary, the preset chosen (and why), then the image paths.
    """
    params = given(locals())  # every parameter here is a draft_preview parameter
    if not params.get("shot_list") and not params.get("prompt"):
        raise typer.BadParameter("give a shot list (and --shot ids) or a prompt",
                                 param_hint="'SHOT_LIST' / '--prompt'")
    check_inputs(params, default_server=True)
    from flows.draft_preview import draft_preview

    state, result = run_flow(draft_preview, params)
    if isinstance(result, dict) and "markdown" in result:
        print_preview(result)
    exit_unless_completed(state)


def daily_report_command(
    data_root: DataRootPath = None, render_store: RenderStoreName = None, day: Day = None,
    since: Since = None, servers: Servers = None, presets_file: PresetsFile = None,
    presets_block: PresetsBlockName = None,
) -> None:
    """Run the daily-report flow now: file the report, publish it to Prefect.

    The scheduled job run by hand (to redo a morning's report, or to file one
    for another day), named like its deployment in the Prefect UI. A command
    of its own rather than a flag on `tower report`: that one is the quick
    look, which needs no Prefect and writes nothing unless asked; this one
    compacts the closed days it reads, files the report under reports/,
    publishes it as a Prefect artifact with the farm's status (--server) and
    takes saved blocks. Prints the files written.
    """
    params = given(locals())  # every parameter here is a daily_report parameter
    try:
        report_window(datetime.now(UTC), day, since)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="'--day' / '--since'") from None
    check_inputs(params, default_server=False)
    from flows.daily_report import daily_report

    state, result = run_flow(daily_report, params)
    if isinstance(result, dict):
        for kind, path in result.items():
            typer.echo(f"{kind}: {path}")
    exit_unless_completed(state)


def serve_command(
    prefect_yaml: Annotated[Path, typer.Option(help="deployments file")] = DEFAULT_PREFECT_YAML,
    limit: Annotated[Optional[int], typer.Option(help="max concurrent flow runs")] = None,  # noqa: UP045
) -> None:
    """Serve the nightly, daily-report and draft-preview deployments from this process."""
    from prefect import serve

    from tasks.deployments import runner_deployments

    serve(*runner_deployments(prefect_yaml), pause_on_shutdown=False, limit=limit)


def running_flows() -> tuple[list[RunningFlow] | None, str | None]:
    """Render and preview flow runs in state Running, with their ETA tables; or None and
    why they could not be read (no API configured, or it does not answer)."""
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value()
    if not api:
        return None, "Prefect API not reachable (PREFECT_API_URL is not set)"
    try:
        httpx.get(f"{str(api).rstrip('/')}/health", timeout=PREFECT_PROBE_TIMEOUT_S
                  ).raise_for_status()
    except httpx.HTTPError as err:
        return None, f"Prefect API not reachable at {api} ({one_line(err)})"
    return _read_running(), None


def _read_running() -> list[RunningFlow]:
    from prefect import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterType,
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    with get_client(sync_client=True) as client:
        flows = {f.id: f.name for f in client.read_flows(flow_filter=FlowFilter(
            name=FlowFilterName(any_=list(WATCHED_FLOWS))))}
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=list(WATCHED_FLOWS))),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                type=FlowRunFilterStateType(any_=[StateType.RUNNING])))) if flows else []
        tables = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[r.id for r in runs]),
            type=ArtifactFilterType(any_=["table"]))) if runs else []
    found = []
    for run in sorted(runs, key=lambda r: (r.start_time is None, r.start_time, r.name)):
        flow = flows.get(run.flow_id, "?")
        kind = WATCHED_FLOWS.get(flow, "")
        progress = None
        for table in tables:
            key = table.key or ""
            if table.flow_run_id != run.id or not key.startswith(f"{artifact_key(kind)}-") \
                    or not key.endswith("-progress"):
                continue
            rows = json.loads(table.data) if isinstance(table.data, str) else table.data
            label = key.removeprefix(f"{artifact_key(kind)}-").removesuffix("-progress")
            progress = parse_rows(label, rows or []) or progress
        found.append(RunningFlow(flow, run.name, run.start_time, progress))
    return found


@functools.wraps(farm_status_command)
def status_command(*args: Any, **kwargs: Any) -> None:
    farm_status_command(*args, **kwargs)
    running, unavailable = running_flows()
    typer.echo(render_running(running, datetime.now(UTC), unavailable))


status_command.__doc__ = ("Servers reachable, queues, VRAM, loaded model, the last run, "
                          "index size, dedup rate, and the running renders with their ETA.")
