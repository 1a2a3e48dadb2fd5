"""A season-sized night on the production topology: does the farm hold up under load?

Starts the topology of docs/operations.md on this machine (the harness the scale-out
test uses, tests/scaleout/topology.py): a Prefect server on PostgreSQL, the
``tower-render`` process pool with two workers, the deployments of prefect.yaml, and
eight ComfyUI simulators of four card sizes as ComfyUIServer blocks. It renders one
generated episode of about 5,000 takes (``shot_lists/generate_season.py``) through the
``render-episode/nightly`` deployment, then reports:

* wall time of the flow run (start to end, from the Prefect API);
* busy share per server: the simulator's own busy seconds within the run / wall;
* CPU seconds of the Prefect server process and of PostgreSQL during the run, and the
  database size afterwards;
* API errors: HTTP 5xx retries and errors in the workers' and flow runs' output and
  ERROR lines in the Prefect server log (they must be 0).

Side by side, in the same invocation, the same night on the Prefect server's default
SQLite database (what a user who skips PostgreSQL gets)::

    .venv/bin/python bench/bench_farm.py [--shots 2890] [--time-scale 0.02]
        [--databases postgresql,sqlite] [--json-out FILE]

Needs PostgreSQL's server binaries (initdb, pg_ctl) for the PostgreSQL run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "scaleout")]

import httpx  # noqa: E402
from topology import (  # noqa: E402
    FINAL_STATES,
    GpuBox,
    descendants,
    missing_postgres,
    running_farm,
)

BOXES = tuple(GpuBox(f"gpu-{i + 1}", vram, 2) for i, vram in
              enumerate((24576, 24576, 16384, 16384, 12288, 12288, 8192, 8192)))
NIGHTLY = "render-episode/nightly"
API_TROUBLE = re.compile(r"(retryable|status code 5\d\d|HTTPStatusError|database is locked|"
                         r"Server error|ReadTimeout|ConnectError|Traceback)", re.IGNORECASE)
EXCEPTION_LINE = re.compile(r"^[\w.]+(Error|Exception|Timeout)\b")
CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | None) -> float:
    """CPU of a process, its living descendants and its reaped children (/proc)."""
    if pid is None:
        return 0.0
    total = 0.0
    for index, member in enumerate([pid, *descendants(pid)]):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks = int(fields[11]) + int(fields[12])  # utime, stime
        if index == 0:
            ticks += int(fields[13]) + int(fields[14])  # cutime, cstime of the leader
        total += ticks / CLK
    return total


def postmaster_pid(folder: Path) -> int | None:
    try:
        return int((folder / "data" / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def generate_episode(folder: Path, shots: int) -> Path:
    subprocess.run([sys.executable, str(ROOT / "shot_lists" / "generate_season.py"),
                    "--out", str(folder), "--episodes", "1", "--shots", str(shots)],
                   check=True, capture_output=True)
    return next(folder.glob("*.yaml"))


def count_takes(shot_list: Path) -> tuple[int, int]:
    from tower.shotlist.shots import load_shot_list
    from tower.spec.takes import resolve_takes

    takes = resolve_takes(load_shot_list(shot_list))
    return len(takes), len({t.key for t in takes})


def trouble_lines(*logs: Path) -> list[str]:
    found = []
    for log in logs:
        if log.exists():
            found += [f"{log.name}: {line.strip()}" for line in
                      log.read_text(errors="replace").splitlines() if API_TROUBLE.search(line)]
    return found


def server_errors(log: Path) -> list[str]:
    """The Prefect server's ERROR lines, each with the exception that ended its traceback."""
    if not log.exists():
        return []
    lines = log.read_text(errors="replace").splitlines()
    found = []
    for number, line in enumerate(lines):
        if " ERROR " not in line:
            continue
        cause = next((later.strip() for later in lines[number + 1:number + 80]
                      if EXCEPTION_LINE.match(later)), "")
        found.append(f"{line.strip()} <- {cause}" if cause else line.strip())
    return found


def _timestamp(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def one_night(database: str, shot_list: Path, time_scale: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"tower-farm-{database}-") as tmp, \
            running_farm(Path(tmp), BOXES, time_scale=time_scale, database=database,
                         durable_db=True, heartbeat_s=60) as farm:
        for n in (1, 2):
            farm.start_worker(f"worker-{n}", f"render-{n}")
        server_cpu0 = cpu_seconds(farm.prefect_pid)
        pg_pid = postmaster_pid(farm.postgres.folder) if farm.postgres else None
        pg_cpu0 = cpu_seconds(pg_pid)
        asked = time.time()
        run_id = farm.run_deployment(NIGHTLY, shot_list=str(shot_list))
        run = farm.wait_state(run_id, FINAL_STATES, 3600)
        server_cpu = cpu_seconds(farm.prefect_pid) - server_cpu0
        pg_cpu = cpu_seconds(pg_pid) - pg_cpu0
        start, end = _timestamp(run["start_time"]), _timestamp(run["end_time"])
        wall = end - start
        busy = {}
        for name, sim in farm.sims.items():
            window = httpx.get(f"{sim.url}/_tower/busy", params={"since": start},
                               timeout=30).json()
            busy[name] = sum(min(e, end) - s for s, e in window["intervals"] if s < end)
        api = trouble_lines(*(w.log for w in farm.workers.values()))
        errors = server_errors(farm.state / "prefect-server.log")
        task_runs = farm.api("POST", "/task_runs/count",
                             {"flow_runs": {"id": {"any_": [run_id]}}})
        return {
            "database": database, "state": run["state_name"],
            "message": (run.get("state") or {}).get("message", ""),
            "queued_to_start_s": round(start - asked, 1), "wall_s": round(wall, 1),
            "busy_share": {name: round(b / wall, 3) for name, b in busy.items()},
            "busy_share_mean": round(sum(busy.values()) / (wall * len(busy)), 3),
            "prefect_server_cpu_s": round(server_cpu, 1),
            "postgres_cpu_s": round(pg_cpu, 1) if farm.postgres else None,
            "database_mb": round(farm.postgres.size_bytes() / 2**20, 1) if farm.postgres
            else round(sum(p.stat().st_size for p in (farm.state / "prefect").glob("*.db*"))
                       / 2**20, 1),
            "task_runs": task_runs,
            "api_errors": len(api) + len(errors), "api_error_lines": (api + errors)[:20],
        }


def show(results: list[dict[str, Any]]) -> None:
    for r in results:
        print(f"\n== Prefect server on {r['database']}: {r['state']} — {r['message']}")
        print(f"wall {r['wall_s']} s (queued to start {r['queued_to_start_s']} s), "
              f"{r['task_runs']} task runs")
        print("busy share: " + ", ".join(f"{k} {v:.2f}" for k, v in r["busy_share"].items())
              + f"; mean {r['busy_share_mean']:.2f}")
        print(f"Prefect server CPU {r['prefect_server_cpu_s']} s, PostgreSQL CPU "
              f"{r['postgres_cpu_s']} s, database {r['database_mb']} MB")
        print(f"API errors: {r['api_errors']}")
        for line in r["api_error_lines"]:
            print(f"  {line[:200]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, default=2890, help="about 1.7 takes per shot")
    parser.add_argument("--time-scale", type=float, default=0.02)
    parser.add_argument("--databases", default="postgresql,sqlite")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    databases = [d.strip() for d in args.databases.split(",") if d.strip()]
    if "postgresql" in databases and (reason := missing_postgres()):
        sys.exit(reason)
    with tempfile.TemporaryDirectory(prefix="tower-season-") as tmp:
        shot_list = generate_episode(Path(tmp), args.shots)
        takes, images = count_takes(shot_list)
        print(f"episode: {shot_list.name}, {takes} takes ({images} distinct images), "
              f"{len(BOXES)} servers, 2 workers, time scale {args.time_scale}")
        results = [one_night(database, shot_list, args.time_scale) for database in databases]
    show(results)
    if args.json_out:
        args.json_out.write_text(json.dumps({"takes": takes, "images": images,
                                             "results": results}, indent=2))


if __name__ == "__main__":
    main()
