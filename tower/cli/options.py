"""The flows' parameters as command-line options, declared once for every command.

``tower render``, ``tower preview`` and ``tower daily-report`` run the flows
``render_episode``, ``draft_preview`` and ``daily_report`` in this process. Each flow
parameter a person sets by hand is declared here once: its option spelled as the
parameter (``presets_file`` -> ``--presets-file``) plus the aliases people already type
(``--presets``, ``--server``, ``--shot``, ``--date``), its help and the values it takes.
A parameter shared by several flows (``servers``, ``presets_file``...) therefore reads
and checks the same on every command. The few parameters that are not for people are
listed in :data:`NOT_ON_THE_COMMAND_LINE` with the reason. tests/cli/test_cli_flow_options.py
compares all of this with each flow's signature, so a flow parameter without an option,
or an option left over from a removed parameter, fails a test instead of quietly
missing from the command line.

Every option defaults to ``None`` ("not given"): the command passes on only what was
given, so each flow keeps its own defaults and they cannot drift apart here.

Prefect-free: this module names the flows, it never imports them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Annotated, Any, Literal, Optional

import typer

from tower.planning.preview import Preference
from tower.shotlist.shots import MAX_TAKES

# The command that runs each flow: command name -> flow function name.
FLOW_COMMANDS: dict[str, str] = {
    "render": "render_episode",
    "preview": "draft_preview",
    "daily-report": "daily_report",
}

# Flow parameters deliberately without an option: flow function name -> parameter -> why.
NOT_ON_THE_COMMAND_LINE: dict[str, dict[str, str]] = {
    "daily_report": {
        "now": "the report's clock, for tests to pin; people choose the window with "
               "--day or --since, and a report from the command line ends now",
    },
}

ReuseChoice = Literal["exact", "similar", "none"]


def parse_day(value: str) -> date:
    """A UTC day written ``YYYY-MM-DD``; a bad value names itself and the format."""
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a date (YYYY-MM-DD)") from None


def parse_seconds(value: str) -> float:
    """A positive number of seconds (a budget of 0 s cannot be met by any preset)."""
    try:
        seconds = float(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a number of seconds") from None
    if not seconds > 0:
        raise typer.BadParameter(f"must be more than 0 seconds (got {value})")
    return seconds


@dataclass(frozen=True)
class FlowOption:
    """How one flow parameter is spelled and checked on the command line.

    ``parser``, ``min`` and ``max`` are Typer's: a value they refuse is a usage error
    naming the option, before any flow starts.
    """

    flags: tuple[str, ...]
    help: str
    parser: Callable[[str], Any] | None = None
    min: float | None = None
    max: float | None = None
    metavar: str | None = None

    def info(self) -> Any:
        """The Typer option (Typer copies it per command, so one can serve several)."""
        return typer.Option(*self.flags, help=self.help, parser=self.parser, min=self.min,
                            max=self.max, metavar=self.metavar)


OPTIONS: dict[str, FlowOption] = {
    "shots": FlowOption(("--shot", "--shots"), "only this shot id (repeatable)"),
    "preset": FlowOption(("--preset",), "render every shot at this preset instead of its own"),
    "servers": FlowOption(
        ("--server", "--servers", "-s"),
        "ComfyUI URL, name=URL or saved ComfyUIServer block name (repeatable; default "
        "$TOWER_SERVERS, comma-separated)"),
    "dry_run": FlowOption(("--dry-run",), "plan and preflight only; nothing is queued"),
    "force": FlowOption(("--force",), "render every take again even if the index holds it"),
    "reuse": FlowOption(
        ("--reuse",), "exact: skip takes whose image exists; similar: also use existing "
                      "images of the same look; none: render everything (default: the flow's)"),
    "data_root": FlowOption(("--data-root",),
                            "data folder (default $TOWER_DATA_ROOT, else data)"),
    "render_store": FlowOption(("--render-store",),
                               "saved RenderStore block naming the data folder"),
    "presets_file": FlowOption(("--presets-file", "--presets"), "YAML presets file"),
    "presets_block": FlowOption(("--presets-block",), "saved RenderPresets block"),
    "retries": FlowOption(("--retries",),
                          "retries of a batch after a transient failure (default: the flow's)",
                          min=0),
    "retry_backoff_s": FlowOption(("--retry-backoff-s",),
                                  "seconds before the first retry, doubling after", min=0),
    "max_server_failures": FlowOption(("--max-server-failures",),
                                      "failed batches in a row that take a server out", min=1),
    "prompt": FlowOption(("--prompt",), "preview this free prompt instead of a shot list"),
    "takes": FlowOption(("--takes",), "takes of a free prompt (shots keep their own)",
                        min=1, max=MAX_TAKES),
    "time_budget_seconds": FlowOption(
        ("--time-budget-seconds",), "pick the best preset expected to finish in this time",
        parser=parse_seconds, metavar="SECONDS"),
    "quality_preference": FlowOption(
        ("--quality-preference",), "how much of the time budget to spend: speed keeps half "
                                   "spare, balanced a fifth, quality none"),
    "day": FlowOption(("--day", "--date"), "one UTC day", parser=parse_day,
                      metavar="YYYY-MM-DD"),
    "since": FlowOption(("--since",), "from a UTC day until now", parser=parse_day,
                        metavar="YYYY-MM-DD"),
}

# Positional arguments (the shot list), declared here for the same reason.
ARGUMENT_HELP: dict[str, str] = {
    "shot_list": "shot list (.yaml/.csv/.json)",
}


def option(name: str) -> Any:
    """The Typer option of flow parameter ``name``, for a command's ``Annotated`` type."""
    return OPTIONS[name].info()


def argument(name: str, more_help: str = "") -> Any:
    """The Typer argument of flow parameter ``name`` (the shot list)."""
    return typer.Argument(help=ARGUMENT_HELP[name] + more_help, show_default=False)


def hint(name: str) -> str:
    """How an error names flow parameter ``name``: its first flag, quoted like click's."""
    return f"'{OPTIONS[name].flags[0]}'"


def given(values: Mapping[str, Any]) -> dict[str, Any]:
    """The options given on the command line, as flow parameters.

    Not given is ``None`` (or an unset flag), which is left out so the flow's own
    default applies; repeated options arrive as tuples or lists and leave as lists.
    """
    out: dict[str, Any] = {}
    for name, value in values.items():
        if value is None or value is False or (isinstance(value, tuple | list) and not value):
            continue
        out[name] = list(value) if isinstance(value, tuple | list) else value
    return out


# The command options' types, one per flow parameter; the commands use these only.
ShotListPath = Annotated[str, argument("shot_list")]
OptionalShotListPath = Annotated[Optional[str], argument("shot_list", " (or --prompt)")]  # noqa: UP045
Shots = Annotated[Optional[list[str]], option("shots")]  # noqa: UP045
PresetName = Annotated[Optional[str], option("preset")]  # noqa: UP045
Servers = Annotated[Optional[list[str]], option("servers")]  # noqa: UP045
DryRun = Annotated[bool, option("dry_run")]
Force = Annotated[bool, option("force")]
Reuse = Annotated[Optional[ReuseChoice], option("reuse")]  # noqa: UP045
DataRootPath = Annotated[Optional[str], option("data_root")]  # noqa: UP045
RenderStoreName = Annotated[Optional[str], option("render_store")]  # noqa: UP045
PresetsFile = Annotated[Optional[str], option("presets_file")]  # noqa: UP045
PresetsBlockName = Annotated[Optional[str], option("presets_block")]  # noqa: UP045
Retries = Annotated[Optional[int], option("retries")]  # noqa: UP045
RetryBackoff = Annotated[Optional[float], option("retry_backoff_s")]  # noqa: UP045
MaxServerFailures = Annotated[Optional[int], option("max_server_failures")]  # noqa: UP045
Prompt = Annotated[Optional[str], option("prompt")]  # noqa: UP045
Takes = Annotated[Optional[int], option("takes")]  # noqa: UP045
TimeBudget = Annotated[Optional[float], option("time_budget_seconds")]  # noqa: UP045
QualityPreference = Annotated[Optional[Preference], option("quality_preference")]  # noqa: UP045
Day = Annotated[Optional[date], option("day")]  # noqa: UP045
Since = Annotated[Optional[date], option("since")]  # noqa: UP045
