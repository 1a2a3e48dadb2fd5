"""The production topology on one machine, for the scale-out test and the load bench.

PostgreSQL in a temporary folder (Debian's server binaries, run as the ``postgres``
user when we are root, listening on 127.0.0.1 only), ``prefect server start`` on it,
the ``tower-render`` process work pool, ``prefect deploy --all`` of this repository's
``prefect.yaml``, ``ComfyUIServer`` blocks for simulated GPU boxes, and workers, each
under a host name of its own (a UTS namespace, when ``unshare`` is allowed) so that part
names and process identities look like several machines sharing one data root. The
commands are the ones docs/operations.md gives an operator; nothing here is test-only
machinery inside the pipeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tower.cli.local_server import ensure_prefect_server, free_port, log_tail, stop_started_servers
from tower.simulator import SimulatorConfig, SimulatorServer, start_simulator

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
POOL = "tower-render"
FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}  # flow-run state types
PG_SEARCH = ("/usr/lib/postgresql/*/bin",)
LOOPBACK = "127.0.0.1"



def postgres_bin() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``: PATH first, then Debian's layout."""
    found = shutil.which("initdb")
    if found and (Path(found).resolve().parent / "pg_ctl").exists():
        return Path(found).resolve().parent
    candidates = sorted((p for pattern in PG_SEARCH for p in Path("/").glob(pattern.lstrip("/"))
                         if (p / "initdb").exists() and (p / "pg_ctl").exists()),
                        key=lambda p: p.parent.name)
    return candidates[-1] if candidates else None


def missing_postgres() -> str | None:
    """Why a PostgreSQL cluster cannot be started here, in one line; None when it can."""
    if postgres_bin() is None:
        return ("PostgreSQL server binaries (initdb, pg_ctl) not found: "
                "install them (Debian: apt install postgresql) to run the scale-out test")
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run PostgreSQL as"
        if shutil.which("runuser") is None:
            return "running as root and runuser is missing (needed to run PostgreSQL)"
    return None


def _as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run it as the ``postgres`` user then."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


class Postgres:
    """A throwaway PostgreSQL cluster on 127.0.0.1, trust authentication, one database.

    ``durable=False`` turns fsync off (a test's cluster is deleted anyway); the load
    bench keeps PostgreSQL's defaults.
    """

    def __init__(self, database: str = "prefect", durable: bool = False):
        bin_dir = postgres_bin()
        if bin_dir is None:
            raise RuntimeError(missing_postgres() or "no PostgreSQL")
        self.bin, self.database, self.durable = bin_dir, database, durable
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="tower-pg-"))

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@{LOOPBACK}:{self.port}/{self.database}"

    def _run(self, *command: str) -> str:
        done = subprocess.run(_as_postgres([str(self.bin / command[0]), *command[1:]]),
                              capture_output=True, text=True, timeout=120, check=False)
        if done.returncode:
            raise RuntimeError(f"{command[0]} failed ({done.returncode}): "
                               f"{done.stderr.strip() or done.stdout.strip()}")
        return done.stdout

    def start(self) -> Postgres:
        try:
            self._initialise()
        except BaseException:
            self.stop()  # a half-started cluster must not outlive the test
            raise
        return self

    def _initialise(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        data = self.folder / "data"
        self._run("initdb", "-D", str(data), "--auth=trust", "-U", "postgres",
                  "--encoding=UTF8", "--no-locale")
        options = f"-p {self.port} -c listen_addresses={LOOPBACK} -k {self.folder}"
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run("pg_ctl", "-D", str(data), "-l", str(self.folder / "postgres.log"),
                  "-o", options, "-w", "-t", "60", "start")
        self.query(f"CREATE DATABASE {self.database}", database="postgres")

    def query(self, sql: str, database: str | None = None) -> Any:
        """The first value ``sql`` returns (through asyncpg, which Prefect brings)."""
        import asyncpg

        async def run() -> Any:
            connection = await asyncpg.connect(host=LOOPBACK, port=self.port, user="postgres",
                                               database=database or self.database)
            try:
                return await connection.fetchval(sql)
            finally:
                await connection.close()

        return asyncio.run(run())

    def size_bytes(self) -> int:
        return int(self.query(f"SELECT pg_database_size('{self.database}')"))

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self._run("pg_ctl", "-D", str(self.folder / "data"), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)


@dataclass(frozen=True)
class GpuBox:
    """One simulated ComfyUI server and the block that names it."""

    name: str
    vram_mb: int
    max_queue_depth: int


@dataclass
class Worker:
    name: str
    host: str
    process: subprocess.Popen[bytes]
    log: Path


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children first found, then theirs), from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found.extend(children)
        todo.extend(children)
    return found


def kill_tree(pid: int, sig: int = signal.SIGKILL) -> list[int]:
    """Signal ``pid`` and everything below it, as a machine losing power would."""
    victims = [pid, *descendants(pid)]
    for victim in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, sig)
    return victims


@functools.cache
def can_set_hostname() -> bool:
    """Whether workers can run under host names of their own (``unshare --uts``)."""
    if shutil.which("unshare") is None:
        return False
    done = subprocess.run(["unshare", "--uts", "sh", "-c", "hostname tower-probe"],
                          capture_output=True, timeout=10, check=False)
    return done.returncode == 0


@dataclass
class Farm:
    """PostgreSQL, a Prefect server on it, the work pool, deployments, GPU boxes, workers.

    ``database="sqlite"`` puts the Prefect server on its default SQLite file instead
    (what the load bench compares with)."""

    root: Path
    boxes: tuple[GpuBox, ...]
    time_scale: float = 0.01
    database: str = "postgresql"  # or "sqlite": Prefect's default, for comparison
    durable_db: bool = False
    heartbeat_s: int = 30
    postgres: Postgres | None = None
    api_url: str = ""
    sims: dict[str, SimulatorServer] = field(default_factory=dict)
    workers: dict[str, Worker] = field(default_factory=dict)
    prefect_pid: int | None = None

    @property
    def data_root(self) -> Path:
        return self.root / "shared-data"

    @property
    def state(self) -> Path:
        return self.root / "prefect-server"

    def client_env(self, **extra: str) -> dict[str, str]:
        """What an operator's shell (or a worker machine) sets to reach this server."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "TOWER_"))}
        return env | {"PREFECT_API_URL": self.api_url,
                      "PREFECT_HOME": str(self.root / "client-home"),
                      "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                      "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}"} | extra

    def cli(self, *command: str, timeout: float = 180) -> str:
        """Run ``command`` (``prefect ...``, ``tower ...``) in the repository as an operator."""
        done = subprocess.run([str(BIN / command[0]), *command[1:]], cwd=REPO,
                              env=self.client_env(), capture_output=True, text=True,
                              timeout=timeout, check=False)
        if done.returncode:
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n"
                               f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done.stdout

    def start(self) -> Farm:
        self.data_root.mkdir(parents=True, exist_ok=True)
        if self.database == "postgresql":
            self.postgres = Postgres(durable=self.durable_db).start()
        server = ensure_prefect_server(self.state, port=free_port(), api_url="",
                                       database_url=self.postgres.url if self.postgres else None,
                                       timeout=180)
        self.api_url, self.prefect_pid = server.url, server.pid
        self.cli("prefect", "work-pool", "create", POOL, "--type", "process", "--overwrite")
        self.cli("prefect", "--no-prompt", "deploy", "--all")
        for box in self.boxes:
            self.sims[box.name] = start_simulator(SimulatorConfig(
                name=box.name, vram_mb=box.vram_mb, time_scale=self.time_scale,
                output_dir=self.root / f"comfyui-{box.name}"))
        self.save_blocks()
        return self

    def save_blocks(self) -> None:
        """One ComfyUIServer block per box, its VRAM budget and queue depth its own."""
        lines = ["from blocks import ComfyUIServer"]
        for box in self.boxes:
            lines.append(f"ComfyUIServer(name={box.name!r}, base_url={self.sims[box.name].url!r}, "
                         f"vram_budget_mb={box.vram_mb * 0.85!r}, "
                         f"max_queue_depth={box.max_queue_depth}).save({box.name!r}, "
                         "overwrite=True)")
        self.cli("python", "-c", "; ".join(lines))

    def start_worker(self, name: str, host: str, **env: str) -> Worker:
        """``prefect worker start`` as on a GPU box's companion machine named ``host``."""
        log = self.root / f"{name}.log"
        worker_env = self.client_env(
            PREFECT_HOME=str(self.root / f"home-{name}"),
            TOWER_HOME=str(REPO), TOWER_DATA_ROOT=str(self.data_root),
            TOWER_SERVERS=",".join(box.name for box in self.boxes),
            PREFECT_WORKER_QUERY_SECONDS="1",
            PREFECT_FLOWS_HEARTBEAT_FREQUENCY=str(self.heartbeat_s), **env)
        command = [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--name", name,
                   "--type", "process"]
        if can_set_hostname():
            command = ["unshare", "--uts", "sh", "-c",
                       'hostname "$1" && shift && exec "$@"', "sh", host, *command]
        with log.open("ab") as out:
            process = subprocess.Popen(command, cwd=REPO, env=worker_env,
                                       stdin=subprocess.DEVNULL, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        worker = Worker(name, host, process, log)
        self.workers[name] = worker
        wait_until(lambda: name in self.online_workers(), 90,
                   f"worker {name} did not come online; log:\n{log_tail(log, 25)}")
        return worker

    def api(self, method: str, path: str, json: Any = None) -> Any:
        response = httpx.request(method, f"{self.api_url}{path}", json=json, timeout=30)
        response.raise_for_status()
        return response.json() if response.content else None

    def online_workers(self) -> set[str]:
        workers = self.api("POST", f"/work_pools/{POOL}/workers/filter", {})
        return {w["name"] for w in workers if w.get("status") == "ONLINE"}

    def deployment_id(self, name: str) -> str:
        return self.api("GET", f"/deployments/name/{name}")["id"]

    def run_deployment(self, name: str, **parameters: Any) -> str:
        """A flow run of deployment ``flow/deployment``, as ``prefect deployment run``."""
        body = {"parameters": parameters, "state": {"type": "SCHEDULED"}}
        return self.api("POST", f"/deployments/{self.deployment_id(name)}/create_flow_run",
                        body)["id"]

    def flow_run(self, run_id: str) -> dict[str, Any]:
        return self.api("GET", f"/flow_runs/{run_id}")

    def flow_runs(self, deployment: str) -> list[dict[str, Any]]:
        body = {"deployments": {"id": {"any_": [self.deployment_id(deployment)]}},
                "sort": "EXPECTED_START_TIME_ASC"}
        return self.api("POST", "/flow_runs/filter", body)

    def wait_state(self, run_id: str, states: set[str], timeout: float) -> dict[str, Any]:
        """The flow run once its state type is one of ``states``."""
        seen: dict[str, Any] = {}

        def reached() -> bool:
            seen.update(self.flow_run(run_id))
            return (seen.get("state_type") or "") in states

        wait_until(reached, timeout, lambda: f"flow run {run_id} still {seen.get('state_name')}"
                                             f" after {timeout:.0f} s; workers:\n"
                   + "\n".join(f"{w.name}: {log_tail(w.log, 25)}" for w in self.workers.values()))
        return seen

    def worker_of(self, run_id: str) -> Worker | None:
        """The worker whose processes include the flow run's (its environment says so)."""
        for worker in self.workers.values():
            for pid in descendants(worker.process.pid):
                with contextlib.suppress(OSError):
                    environ = Path(f"/proc/{pid}/environ").read_bytes()
                    if f"PREFECT__FLOW_RUN_ID={run_id}".encode() in environ.split(b"\0"):
                        return worker
        return None

    def kill_worker(self, name: str) -> list[int]:
        """SIGKILL a worker and every process it started: its machine died."""
        worker = self.workers[name]
        victims = kill_tree(worker.process.pid)
        worker.process.wait(timeout=30)
        return victims

    def stop(self) -> None:
        for worker in self.workers.values():
            if worker.process.poll() is None:
                kill_tree(worker.process.pid, signal.SIGTERM)
                try:
                    worker.process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    kill_tree(worker.process.pid)
                    worker.process.wait(timeout=15)
        for sim in self.sims.values():
            sim.stop()
        stop_started_servers(self.state)
        if self.postgres is not None:
            self.postgres.stop()


@contextlib.contextmanager
def running_farm(root: Path, boxes: tuple[GpuBox, ...], **options: Any) -> Iterator[Farm]:
    farm = Farm(root, boxes, **options)
    try:
        yield farm.start()
    finally:
        farm.stop()


def queue_log(sim: SimulatorServer) -> dict[str, Any]:
    """The simulator's own record of its queue (``/_tower/queue_log``)."""
    return httpx.get(f"{sim.url}/_tower/queue_log", timeout=30).json()


def wait_until(ready: Callable[[], bool], timeout: float,
               failure: str | Callable[[], str], interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(interval)
    raise AssertionError(failure() if callable(failure) else failure)

