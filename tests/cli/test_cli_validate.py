"""``tower validate``: a summary and exit 0, or every problem and exit 1."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from paths import REPO
from typer.testing import CliRunner

from tower.cli import app

ROOT = REPO
DEMO = ROOT / "shot_lists" / "ep01_demo.yaml"
runner = CliRunner()

DEMO_SUMMARY = """\
{source}: episode ep01 (The Last Lantern)
  shots: 24, takes: 45, unique images: 43
  preset draft: 9 takes
  preset high: 10 takes
  preset standard: 26 takes
  checkpoint anime-draft-sd15.safetensors: 9 takes
  checkpoint anime-final-sd15.safetensors: 36 takes
"""


def test_valid_list_prints_a_summary() -> None:
    result = runner.invoke(app, ["validate", str(DEMO)])
    assert result.exit_code == 0, result.output
    assert result.stdout == DEMO_SUMMARY.format(source=DEMO)
    assert result.stderr == ""


def test_csv_twin_gives_the_same_summary() -> None:
    csv = DEMO.with_suffix(".csv")
    result = runner.invoke(app, ["validate", str(csv)])
    assert result.exit_code == 0, result.output
    assert result.stdout == DEMO_SUMMARY.format(source=csv)


def test_stdin_is_read_as_yaml() -> None:
    result = runner.invoke(app, ["validate", "-"], input=DEMO.read_bytes())
    assert result.exit_code == 0, result.output
    assert result.stdout == DEMO_SUMMARY.format(source="<stdin>")


def test_problems_go_to_stderr_with_exit_code_1(tmp_path: Path) -> None:
    path = tmp_path / "ep01.yaml"
    path.write_text("episode: ep01\nshots:\n  - id: sh030\n    prompt: bridge\n    takes: 100\n"
                    "  - id: sh030\n    promt: x\n")
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{path}:5 shot sh030: takes: must be between 1 and 64 (got 100)",
        f"{path}:6 shot sh030: id: duplicate shot id (first used on line 3)",
        f"{path}:6 shot sh030: prompt: is required",
        f"{path}:7 shot sh030: promt: unknown field (did you mean 'prompt'?)",
        "4 problem(s) found.",
    ]


def test_warnings_are_printed_but_do_not_fail(tmp_path: Path) -> None:
    path = tmp_path / "ep.csv"
    path.write_text("episode,id,prompt,scene_no\nep01,a,bridge,1\n")
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0
    assert result.stderr == f"warning: {path}:1: scene_no: unknown column, ignored\n"
    assert "shots: 1, takes: 1, unique images: 1" in result.stdout


def test_presets_file_is_applied_and_checked(tmp_path: Path) -> None:
    example = ROOT / "shot_lists" / "presets.example.yaml"
    result = runner.invoke(app, ["validate", str(DEMO), "--presets", str(example)])
    assert result.exit_code == 0, result.output
    assert "unique images: 43" in result.stdout
    bad = tmp_path / "presets.yaml"
    bad.write_text("standard:\n  steps: 0\n")
    result = runner.invoke(app, ["validate", str(DEMO), "--presets", str(bad)])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"{bad}:2 preset standard: steps: must be at least 1 (got 0)", "1 problem(s) found."]


def test_a_missing_file_is_one_clear_line() -> None:
    result = runner.invoke(app, ["validate", "no/such/list.yaml"])
    assert result.exit_code == 1
    assert result.stderr == "no/such/list.yaml: file not found\n1 problem(s) found.\n"


def test_installed_command_exits_1_without_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text("a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{n}: &{n} [{', '.join([f'*{p}'] * 10)}]\n" for p, n in zip("abcdef", "bcdefg",
                                                                   strict=True)))
    done = subprocess.run([str(Path(sys.executable).parent / "tower"), "validate", str(path)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "document expands to" in done.stderr


def test_readme_examples_are_valid(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(yaml|csv)\n(.*?)```", readme, re.S)
    shots_yaml = next(body for kind, body in blocks if kind == "yaml" and "shots:" in body)
    shots_csv = next(body for kind, body in blocks if kind == "csv")
    presets = next(body for kind, body in blocks if kind == "yaml" and "presets:" in body)
    for name, body in (("ep.yaml", shots_yaml), ("ep.csv", shots_csv)):
        (tmp_path / name).write_text(body)
        result = runner.invoke(app, ["validate", str(tmp_path / name)])
        assert (result.exit_code, result.stderr) == (0, ""), name
    presets_file = tmp_path / "presets.yaml"
    presets_file.write_text(presets)
    result = runner.invoke(app, ["validate", str(DEMO), "--presets", str(presets_file)])
    assert (result.exit_code, result.stderr) == (0, "")
