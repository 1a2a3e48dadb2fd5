"""Pure parts of the simulator, by tables: validation, costs, faults, file naming; and
the ``tower sim`` command."""

from __future__ import annotations

import copy
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from simulator_helpers import recorded_graph
from typer.testing import CliRunner

from tower.cli import app
from tower.simulator import Faults, costs
from tower.simulator.catalog import Catalog
from tower.simulator.config import SimulatorConfig
from tower.simulator.executor import _signature
from tower.simulator.images import UnsafePrefixError, save_path
from tower.simulator.validation import validate_prompt

CATALOG = Catalog(SimulatorConfig())


def _edit(node: str, **inputs: Any) -> dict[str, Any]:
    graph = recorded_graph()
    graph[node]["inputs"].update(inputs)
    return graph


@pytest.mark.parametrize(("graph", "node", "kind", "details"), [
    (_edit("3", steps=10001), "3", "value_bigger_than_max", "steps"),
    (_edit("3", cfg="high"), "3", "invalid_input_type",
     "cfg, high, could not convert string to float: 'high'"),
    (_edit("3", scheduler="nope"), "3", "value_not_in_list",
     "scheduler: 'nope' not in ['simple', 'sgm_uniform', 'karras', 'exponential', "
     "'ddim_uniform', 'beta', 'normal', 'linear_quadratic', 'kl_optimal']"),
    (_edit("3", model=["4", 0, 1]), "3", "bad_linked_input", "model"),
    (_edit("3", latent_image=["4", 9]), "3", "exception_during_inner_validation",
     "list index out of range"),
    (_edit("5", batch_size=0), "5", "value_smaller_than_min", "batch_size"),
])
def test_per_input_errors(graph: dict[str, Any], node: str, kind: str, details: str) -> None:
    result = validate_prompt(CATALOG, graph)
    assert not result.ok
    assert result.error and result.error["type"] == "prompt_outputs_failed_validation"
    error = result.node_errors[node]["errors"][0]
    assert (error["type"], error["details"]) == (kind, details)
    assert result.node_errors[node]["dependent_outputs"] == ["9"]


@pytest.mark.parametrize(("value", "expected"), [
    ({"steps": "4"}, 4), ({"steps": 4.0}, 4), ({"steps": True}, 1),
])
def test_coercion_in_place(value: dict[str, Any], expected: int) -> None:
    graph = _edit("3", **value)
    assert validate_prompt(CATALOG, graph).ok
    assert graph["3"]["inputs"]["steps"] == expected and type(graph["3"]["inputs"]["steps"]) is int


@pytest.mark.parametrize("prompt", ["text", [1, 2], [{"a": 1}], {"1": 5}])
def test_prompts_that_crash_comfyui_raise(prompt: Any) -> None:
    with pytest.raises((TypeError, KeyError)):
        validate_prompt(CATALOG, prompt)


def test_partial_execution_targets_limit_outputs() -> None:
    graph = recorded_graph()
    graph["10"] = copy.deepcopy(graph["9"])
    assert validate_prompt(CATALOG, graph).outputs == ["10", "9"]
    assert validate_prompt(CATALOG, graph, ["10"]).outputs == ["10"]
    assert validate_prompt(CATALOG, graph, ["nope"]).error["type"] == "prompt_no_outputs"


@pytest.mark.parametrize(("width", "height", "batch", "tile", "fits"), [
    (512, 768, 27, None, True), (512, 768, 28, None, False),
    (1024, 1536, 6, None, True), (1024, 1536, 7, None, False),
    (1024, 1536, 7, 512, True), (1024, 1536, 41, 512, True), (1024, 1536, 42, 512, False),
])
def test_vram_model_on_a_12gb_card(width: int, height: int, batch: int, tile: int | None,
                                   fits: bool) -> None:
    peak = costs.CHECKPOINT_MB + max(costs.sampling_mb(width, height, batch),
                                     costs.decode_mb(width, height, batch, tile))
    assert (peak <= 12288) == fits


@pytest.mark.parametrize(("width", "height", "batch", "expected"), [
    (512, 512, 1, 0.065536), (512, 512, 4, 0.262144), (64, 64, 1, costs.STEP_FLOOR_S),
])
def test_step_cost_grows_with_pixels_and_batch(width: int, height: int, batch: int,
                                               expected: float) -> None:
    assert costs.step_s(width, height, batch, 0.25) == pytest.approx(expected)


@pytest.mark.parametrize(("width", "height", "batch", "tile", "tiles"), [
    (64, 64, 1, 64, 5), (512, 768, 1, 512, 7), (512, 768, 2, 512, 14), (1024, 1024, 1, 512, 12),
])
def test_tiled_decode_progress_steps(width: int, height: int, batch: int, tile: int,
                                     tiles: int) -> None:
    assert costs.decode_tiles(width, height, batch, tile) == tiles


def test_tiled_decode_is_slower() -> None:
    assert costs.decode_s(512, 512, 2, 0.4, tiled=True) == \
        pytest.approx(costs.TILED_SLOWDOWN * costs.decode_s(512, 512, 2, 0.4, tiled=False))


@pytest.mark.parametrize(("values", "message"), [
    ({"nope": 1}, "unknown fault 'nope'"),
    ({"http_500_rate": 1.5}, "probability"),
    ({"http_500_next": -1}, "non-negative integer"),
    ({"slow_response_s": "x"}, "non-negative number"),
    ({"oom_above_batch": True}, "must be a number"),
])
def test_fault_updates_are_checked(values: dict[str, Any], message: str) -> None:
    faults = Faults()
    with pytest.raises(ValueError, match=message):
        faults.update({"seed": 5, **values})
    assert faults == Faults()  # nothing applied when one value is bad


def test_fault_updates_apply() -> None:
    faults = Faults(oom_above_batch=3)
    faults.update({"oom_above_batch": None, "slow_response_s": 1, "http_500_next": 2})
    assert faults == Faults(slow_response_s=1.0, http_500_next=2)


def test_save_path_counts_from_the_highest_existing_file(tmp_path: Path) -> None:
    folder = tmp_path / "ep01" / "sh010"
    folder.mkdir(parents=True)
    for name in ("b1_00003_.png", "b1_00007_.png", "b10_00050_.png", ".b1_00099_.png.tmp"):
        (folder / name).write_bytes(b"")
    assert save_path(tmp_path, "ep01/sh010/b1") == (folder, "ep01/sh010", "b1", 8)
    assert save_path(tmp_path, "fresh") == (tmp_path, "", "fresh", 1)
    with pytest.raises(UnsafePrefixError, match="outside the output folder"):
        save_path(tmp_path, "../x/b1")


def test_sim_refuses_a_non_loopback_host() -> None:
    result = CliRunner().invoke(app, ["sim", "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "127.0.0.1 only" in result.output


def test_sim_command_serves_until_interrupted(tmp_path: Path) -> None:
    command = [sys.executable, "-c", "from tower.cli import main; main()", "sim",
               "--port", "0", "--time-scale", "0", "--output-dir", str(tmp_path / "out")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = process.stdout.readline() if process.stdout else ""
        url = re.search(r"http://127\.0\.0\.1:\d+", line)
        assert url, line
        stats = httpx.get(f"{url.group(0)}/system_stats", timeout=5).json()
        assert stats["devices"][0]["type"] == "cuda"
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert (tmp_path / "out").is_dir()


def test_validation_ignores_inputs_the_class_does_not_declare() -> None:
    graph = _edit("4", tower_fresh="tower-x-f1")
    graph["3"]["inputs"]["tower_fresh"] = ["not", "checked"]
    result = validate_prompt(CATALOG, graph)
    assert (result.ok, result.node_errors, result.outputs) == (True, {}, ["9"])
    assert graph["4"]["inputs"]["tower_fresh"] == "tower-x-f1"  # kept, not coerced


def test_the_cache_signature_covers_undeclared_inputs_and_ancestors() -> None:
    plain = recorded_graph()
    forced = _edit("4", tower_fresh="tower-x-f1")
    changed = {nid for nid in plain if _signature(plain, nid) != _signature(forced, nid)}
    assert changed == {"4", "6", "7", "3", "8", "9"}  # all but the latent, a root of its own
    assert _signature(forced, "4") == _signature(copy.deepcopy(forced), "4")
    assert CATALOG.declared("SaveImage") == {"images", "filename_prefix", "prompt",
                                             "extra_pnginfo"}
