from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import polars as pl
import pytest
from paths import REPO

from tower.cli.demo import DemoReport, DemoRun, describe, ui_base_url
from tower.cli.local_server import free_port
from tower.store.files import DataRoot

SHOT_LIST = textwrap.dedent("""\
    episode: ep99
    defaults: {preset: draft}
    shots:
      - {id: sh010, prompt: "a lighthouse at dusk", takes: 2}
      - {id: sh020, prompt: "a courier girl on a rope bridge", takes: 1}
      - {id: sh030, prompt: "a lighthouse at dusk", takes: 2}
    """)



@pytest.mark.parametrize(("api", "env", "ui"), [
    ("http://127.0.0.1:4200/api", {}, "http://127.0.0.1:4200"),
    ("https://prefect.studio.lan/api", {"PREFECT_UI_URL": "https://ui.studio.lan/"},
     "https://ui.studio.lan"),
])
def test_ui_base_url(api, env, ui):
    assert ui_base_url(api, env) == ui


def test_describe_says_where_everything_is():
    report = DemoReport("http://127.0.0.1:8188", "http://127.0.0.1:4200/api",
                        "http://127.0.0.1:4200", DataRoot(Path("data")),
                        runs=[DemoRun("f1", "COMPLETED", 9, "http://ui/runs/flow-run/f1",
                                      {"episode": "ep01"}),
                              DemoRun("f2", "COMPLETED", 5, "http://ui/runs/flow-run/f2", {})],
                        contact_sheet=Path("data/renders/ep01/contact-sheets/x.png"))
    text = "\n".join(describe(report))
    for expected in ("data/renders/ep01/", "contact-sheets/x.png", "data/index/",
                     "data/metrics/", "Run 1 in the Prefect UI: http://ui/runs/flow-run/f1",
                     "Run 2 in the Prefect UI: http://ui/runs/flow-run/f2", "make stop"):
        assert expected in text


def _tower(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return subprocess.run([sys.executable, "-c", "from tower.cli import main; main()", *args],
                          cwd=project, env=env, capture_output=True, text=True, timeout=240,
                          check=False)


def test_demo_renders_twice_on_real_servers_and_records_every_task_run(tmp_path):
    """What `make demo` does, in a scratch project folder on free ports: the given list
    twice, then the production episode (the repository's own ep02 files)."""
    (tmp_path / "shot_lists").mkdir()
    (tmp_path / "shot_lists" / "demo.yaml").write_text(SHOT_LIST)
    for name in ("ep02_demo.yaml", "ep02_presets.yaml", "characters.yaml"):
        shutil.copy(REPO / "shot_lists" / name, tmp_path / "shot_lists" / name)
    shutil.copytree(REPO / "shot_lists" / "ep02", tmp_path / "shot_lists" / "ep02")
    prefect_port, sim_port = free_port(), free_port()
    api = f"http://127.0.0.1:{prefect_port}/api"
    try:
        done = _tower(tmp_path, "demo", "--prefect-port", str(prefect_port),
                      "--sim-port", str(sim_port), "--shot-list", "shot_lists/demo.yaml")
        flow_runs = httpx.post(f"{api}/flow_runs/filter", json={}).json()
        task_runs = {run["id"]: _task_runs(api, run["id"]) for run in flow_runs}
    finally:
        stopped = _tower(tmp_path, "server", "stop")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Traceback" not in output
    assert "Run 1 completed: 5 takes rendered, 0 from the index" in output
    assert "Run 2 completed: 0 takes rendered, 5 from the index" in output
    assert "Run 3 completed: 10 takes rendered, 0 from the index" in output
    assert stopped.stdout.count("stopped") == 2, stopped.stdout
    assert not _answers(f"{api}/health")

    # Every run, and every one of its task runs, finished on the server the UI shows.
    assert len(flow_runs) == 3 and {r["state_type"] for r in flow_runs} == {"COMPLETED"}
    for flow_run in flow_runs:
        runs = task_runs[flow_run["id"]]
        assert runs and {r["state_type"] for r in runs} == {"COMPLETED"}
        assert f"{len(runs)} task runs recorded, http://127.0.0.1:{prefect_port}" \
            f"/runs/flow-run/{flow_run['id']}" in output

    root = DataRoot(tmp_path / "data")
    index = pl.read_parquet(root.index / "*.parquet")
    assert index.height == 15 and index["render_key"].n_unique() == 15
    assert all((root.renders / rel).is_file() for rel in index["output_path"])
    metrics = pl.read_parquet(root.metrics / "**" / "*.parquet", hive_partitioning=False)
    assert metrics["run_id"].n_unique() == 2  # the second run rendered nothing
    sheets = list((root.renders / "ep99").rglob("contact-sheets/*.png"))
    # one sheet per run; the second shows the whole episode, served from the index
    assert len(sheets) == 2
    assert str(max(sheets, key=lambda p: p.name).relative_to(tmp_path)) in output
    production = list((root.renders / "ep02").rglob("contact-sheets/*.png"))
    assert len(production) == 1
    assert f"Production:    {production[0].relative_to(tmp_path)}" in output


def _task_runs(api: str, flow_run_id: str) -> list[dict]:
    body = {"flow_runs": {"id": {"any_": [flow_run_id]}}}
    return httpx.post(f"{api}/task_runs/filter", json=body).json()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).is_success
    except httpx.HTTPError:
        return False
