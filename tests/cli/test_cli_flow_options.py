"""The flow commands' options against the flows' signatures, and bad values on one line.

``tower render``, ``tower preview`` and ``tower daily-report`` must offer every flow
parameter a person sets by hand, spelled like the parameter, of the parameter's type,
and nothing else; the exceptions are listed (with the reason) in tower/cli/options.py.
"""

from __future__ import annotations

import inspect
import types
import typing
from typing import Any, Union

import pytest
import typer.main
from flow_helpers import tower

from flows.daily_report import daily_report
from flows.draft_preview import draft_preview
from flows.render_episode import render_episode
from tower.cli import app
from tower.cli.options import FLOW_COMMANDS, NOT_ON_THE_COMMAND_LINE, OPTIONS

FLOWS = {"render": render_episode, "preview": draft_preview, "daily-report": daily_report}
COMMANDS = typer.main.get_command(app).commands  # type: ignore[attr-defined]


def _bare(annotation: Any) -> Any:
    """``X`` of ``Optional[X]`` / ``X | None``: a flag left out is "not given", not a type."""
    if typing.get_origin(annotation) in (Union, types.UnionType):
        rest = tuple(a for a in typing.get_args(annotation) if a is not type(None))
        return rest[0] if len(rest) == 1 else Union[rest]  # noqa: UP007
    return annotation


def _cli_params(command: str) -> dict[str, Any]:
    return {p.name: p for p in COMMANDS[command].params}


def test_the_table_names_the_three_flows() -> None:
    assert {c: f.fn.__name__ for c, f in FLOWS.items()} == FLOW_COMMANDS
    for flow_name, skipped in NOT_ON_THE_COMMAND_LINE.items():
        flow = next(f for f in FLOWS.values() if f.fn.__name__ == flow_name)
        assert set(skipped) <= set(inspect.signature(flow.fn).parameters)
        assert all(reason.strip() for reason in skipped.values())


@pytest.mark.parametrize("command", sorted(FLOWS))
def test_every_hand_set_parameter_has_an_option_and_every_option_a_parameter(
        command: str) -> None:
    flow = FLOWS[command].fn
    parameters = set(inspect.signature(flow).parameters)
    skipped = set(NOT_ON_THE_COMMAND_LINE.get(flow.__name__, {}))
    options = set(_cli_params(command))
    assert sorted(parameters - skipped - options) == [], "flow parameters without an option"
    assert sorted(options - parameters) == [], "options that are no flow parameter"
    assert options & skipped == set(), "listed as not on the command line, yet there"


@pytest.mark.parametrize("command", sorted(FLOWS))
def test_options_are_spelled_typed_and_defaulted_like_the_parameters(command: str) -> None:
    flow = FLOWS[command].fn
    signature = inspect.signature(flow).parameters
    flow_types = typing.get_type_hints(flow)
    cli_types = typing.get_type_hints(COMMANDS[command].callback)
    for name, param in _cli_params(command).items():
        assert _bare(cli_types[name]) == _bare(flow_types[name]), name
        # None means "not given": the flow's own default applies.
        assert param.default is None or param.default == signature[name].default, name
        if name in OPTIONS:
            assert param.opts == list(OPTIONS[name].flags), name
            assert f"--{name.replace('_', '-')}" in param.opts, name
        else:
            assert param.param_type_name == "argument", name


def test_every_declared_option_is_used_and_old_spellings_still_work() -> None:
    used = {name for command in FLOWS for name in _cli_params(command)}
    assert set(OPTIONS) <= used
    spellings = {opt for command in FLOWS for p in COMMANDS[command].params for opt in p.opts}
    assert {"--presets", "--server", "--shot", "--date", "-s"} <= spellings
    report = _cli_params("report")
    for name in ("day", "since", "presets_file"):  # tower report reads like the flow
        assert report[name].opts == list(OPTIONS[name].flags)


@pytest.mark.parametrize(("args", "option", "why"), [
    (["render", "x.yaml", "--retries", "x"], "'--retries'", "valid integer"),
    (["render", "x.yaml", "--max-server-failures", "0"], "'--max-server-failures'", "equal to 1"),
    (["render", "x.yaml", "--reuse", "sometimes"], "'--reuse'", "'exact', 'similar', 'none'"),
    (["render", "x.yaml", "--presets", "missing.yaml"], "'--presets-file'", "file not found"),
    (["preview", "--prompt", "x", "--takes", "65"], "'--takes'", "64"),
    (["preview", "--prompt", "x", "--time-budget-seconds", "0"], "'--time-budget-seconds'",
     "more than 0 seconds"),
    (["preview", "--prompt", "x", "--quality-preference", "best"], "'--quality-preference'",
     "'speed', 'balanced', 'quality'"),
    (["preview"], "'--prompt'", "give a shot list"),
    (["daily-report", "--day", "yesterday"], "'--day' / '--date'", "is not a date"),
    (["daily-report", "--date", "2026-11-26", "--since", "2026-11-20"], "'--since'",
     "not both"),
])
def test_a_bad_value_is_one_line_naming_the_option(tmp_path, args: list[str], option: str,
                                                   why: str) -> None:
    result = tower(*args)
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert option in line and why in line, line
    assert result.stdout == ""


def test_a_bare_command_group_still_shows_its_help() -> None:
    result = tower("index")
    assert result.returncode == 2
    assert "compact" in result.stdout + result.stderr and "error:" not in result.stderr


@pytest.mark.usefixtures("prefect_backend")
def test_saved_blocks_and_servers_are_checked_before_the_flow_starts(tmp_path) -> None:
    for args, option, why in [
        (["--presets-block", "no-such-presets"], "'--presets-block'", "no-such-presets"),
        (["--render-store", "no-such-store"], "'--render-store'", "no-such-store"),
        (["--server", "ftp://gpu-a:8188"], "'--server'", "base_url"),
    ]:
        result = tower("render", "x.yaml", *args)
        assert result.returncode == 2, result.stderr
        lines = [line for line in result.stderr.splitlines() if "error:" in line]
        assert len(lines) == 1 and option in lines[0] and why in lines[0], result.stderr
        assert "Traceback" not in result.stderr
