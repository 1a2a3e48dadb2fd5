"""``tower render`` runs the nightly flow in-process against a real (simulated) ComfyUI."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time

import pytest
from flow_helpers import TOWER, png_files, tower, write_shot_list
from paths import REPO
from prefect import get_client
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL

from tasks.deployments import load_entrypoint, read_deployments

pytestmark = pytest.mark.usefixtures("prefect_backend")
def test_tower_render_dry_run_then_render(tmp_path, sims):
    sim = sims("cli")
    shot_list = write_shot_list(tmp_path, shots=2, takes=2)
    data = tmp_path / "data"
    args = ["render", str(shot_list), "--server", f"cli={sim.url}", "--data-root", str(data)]
    dry = tower(*args, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "2 batches, 4 takes to render, 0 already rendered" in dry.stdout
    assert sim.busy_intervals() == []
    done = tower(*args)
    assert done.returncode == 0, done.stderr
    assert "ep01 render: completed" in done.stdout
    assert len(png_files(data / "renders")) == 4


def test_tower_render_exits_1_with_the_reason(tmp_path, sims):
    sim = sims("cli-bad")
    shot_list = write_shot_list(tmp_path, shots=1, takes=1, checkpoint="missing.safetensors")
    result = tower("render", str(shot_list), "--server", f"x={sim.url}",
                   "--data-root", str(tmp_path / "data"))
    assert result.returncode == 1
    assert "missing.safetensors" in result.stderr


def test_tower_render_reports_a_broken_shot_list_line_by_line_before_any_run(tmp_path):
    shot_list = tmp_path / "ep09.yaml"
    shot_list.write_text("episode: ep09\nshots:\n  - id: sh010\n    prompt: rain\n"
                         "    takes: 0\n  - id: sh020\n    preset: ultra\n    prompt: x\n",
                         encoding="utf-8")
    result = tower("render", str(shot_list), "--server", "http://127.0.0.1:9",
                   "--data-root", str(tmp_path / "data"))
    assert result.returncode == 1
    assert f"{shot_list}:5" in result.stderr and "takes" in result.stderr
    assert f"{shot_list}:7" in result.stderr and "ultra" in result.stderr
    assert "2 problem(s) found." in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()


def _wait_for_deployments(names: list[str], timeout: float = 90.0) -> dict:
    found = {}
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while len(found) < len(names) and time.monotonic() < deadline:
            for name in names:
                with contextlib.suppress(ObjectNotFound):
                    found[name] = client.read_deployment_by_name(name)
            time.sleep(0.5)
    return found


def test_tower_serve_registers_the_three_deployments(tmp_path):
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    root = REPO
    names = [f"{load_entrypoint(d['entrypoint'], root).name}/{d['name']}"
             for d in read_deployments(root / "prefect.yaml")]
    log = tmp_path / "serve.log"
    with log.open("w") as stderr:
        process = subprocess.Popen([str(TOWER), "serve", "--prefect-yaml",
                                    str(root / "prefect.yaml")],
                                   cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            found = _wait_for_deployments(names)
            assert process.poll() is None   # still serving
        finally:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
    assert set(found) == set(names), log.read_text()[-3000:]
    assert found["render-episode/nightly"].schedules[0].schedule.cron == "0 2 * * *"
    assert found["draft-preview/draft-preview"].schedules == []
