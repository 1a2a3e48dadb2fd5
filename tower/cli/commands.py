"""The ``tower`` command line."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperGroup

from tower.cli.flows import (
    daily_report_command,
    exit_with_problems,
    preview_command,
    render_command,
    serve_command,
    status_command,
)
from tower.cli.inspect import inspect_command
from tower.cli.notify import notify_app
from tower.cli.report import report_command
from tower.cli.servers import demo, server_app
from tower.cli.store import index_app, metrics_app, plan_command
from tower.cli.watchdog import watchdog_app
from tower.shotlist.errors import InputError
from tower.shotlist.presets import load_presets
from tower.shotlist.shots import read_shot_list
from tower.simulator.cli import sim
from tower.spec.cropping import aspect_warnings
from tower.spec.parts import CHECKPOINTS
from tower.spec.takes import resolve_takes


class OneLineErrors(TyperGroup):
    """Usage errors as one line on stderr: ``tower render: error: Invalid value for ...``.

    A mistyped option should say which option and what is wrong in a line that reads
    well in a terminal, a cron mail or a CI log; Typer's default is a usage line, a hint
    and a boxed panel. Everything else (help, exit codes, Ctrl-C) is unchanged.
    """

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except typer.TyperException as err:
            show_error(err, prog_name, args)
            sys.exit(err.exit_code)
        except typer.Abort:
            typer.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def show_error(err: typer.TyperException, prog_name: str | None,
               args: Sequence[str] | None) -> None:
    """One line on stderr; but a command group run bare shows its help, as Typer does.

    Typer tells that case by the class name too (the class is not exported).
    """
    if type(err).__name__ == "NoArgsIsHelpError":
        help_text = err.format_message()  # empty where Rich has printed the help already
        if help_text:
            typer.echo(help_text, err=True)
        return
    typer.echo(error_line(err, prog_name, args), err=True)


def error_line(err: typer.TyperException, prog_name: str | None,
               args: Sequence[str] | None) -> str:
    """``<command>: error: <message>``, whitespace folded so it stays one line.

    Errors raised inside a command carry no context; they are named after the
    subcommand on the command line.
    """
    ctx = getattr(err, "ctx", None)
    if ctx is not None:
        command = ctx.command_path
    else:
        words = list(sys.argv[1:] if args is None else args)
        command = " ".join([prog_name or "tower", *words[:1]])
    message = " ".join(err.format_message().split()).replace("Value error, ", "")
    return f"{command}: error: {message}"


app = typer.Typer(cls=OneLineErrors, help="Tower: batch rendering of anime episodes on ComfyUI.",
                  no_args_is_help=True, add_completion=False)
app.command("sim")(sim)

PresetsOption = Annotated[Optional[Path], typer.Option("--presets", help="YAML presets file")]  # noqa: UP045


@app.callback()
def _root() -> None:
    """Tower: batch rendering of anime episodes on ComfyUI."""


@app.command()
def validate(path: Annotated[str, typer.Argument(help="shot list (.yaml/.csv/.json, - for stdin)")],
             presets: PresetsOption = None) -> None:
    """Check a shot list and print a summary, or every problem with exit code 1."""
    try:
        known = load_presets(presets)
        loaded = read_shot_list(path, known)
    except InputError as err:
        exit_with_problems(err)
        return
    for warning in loaded.warnings:
        typer.echo(f"warning: {warning}", err=True)
    shot_list = loaded.shot_list
    takes = resolve_takes(shot_list, known)
    for warning in aspect_warnings(takes):
        typer.echo(f"warning: {warning}", err=True)
    per_preset = Counter(t.preset for t in takes)
    checkpoints = Counter(t.checkpoint for t in takes)
    typer.echo(f"{loaded.source}: episode {shot_list.episode}"
               + (f" ({shot_list.title})" if shot_list.title else ""))
    typer.echo(f"  shots: {len(shot_list.shots)}, takes: {len(takes)}, "
               f"unique images: {len({t.key for t in takes})}")
    for name, count in sorted(per_preset.items()):
        typer.echo(f"  preset {name}: {count} takes")
    for name, count in sorted(checkpoints.items()):
        typer.echo(f"  checkpoint {name}: {count} takes")
    models = Counter(f"{folder}/{name}" for t in takes for folder, name in t.models
                     if folder != CHECKPOINTS)
    for name, count in sorted(models.items()):
        typer.echo(f"  model {name}: {count} takes")
    images = {image.path for t in takes for image in t.input_images}
    if images:
        typer.echo(f"  input images: {len(images)}")


app.command("report")(report_command)
app.command("status")(status_command)
app.add_typer(server_app, name="server")
app.command("demo")(demo)
app.command("plan")(plan_command)
app.add_typer(index_app, name="index")
app.add_typer(metrics_app, name="metrics")
app.add_typer(notify_app, name="notify")
app.add_typer(watchdog_app, name="watchdog")
app.command("render")(render_command)
app.command("preview")(preview_command)
app.command("daily-report")(daily_report_command)
app.command("serve")(serve_command)
app.command("inspect")(inspect_command)


def main() -> None:
    """Console-script entry point."""
    app()
