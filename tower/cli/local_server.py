"""The local servers the demo needs: a Prefect server and the ComfyUI simulator.

Why a real Prefect server: Prefect's temporary in-process server schedules nothing and
drops task-run records when the process exits, so a demo run would leave nothing to
look at in the UI. Both servers are started in the background, in their own process
group, with their output in a log file and their PID in a file under the state
folder. They are reused when already answering and left running afterwards;
:func:`stop_started_servers` stops only what these PID files name, and only when that
process still looks like what was started (a PID may have been reused).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from tower.store.files import atomic_write_text

DEFAULT_HOST = "127.0.0.1"
PREFECT_PORT = 4200
SIMULATOR_PORT = 8188
PREFECT_START_TIMEOUT_S = 120.0
SIMULATOR_START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
PROBE_TIMEOUT_S = 2.0


class LocalServerError(RuntimeError):
    """A local server could not be started."""


@dataclass(frozen=True)
class ServerInfo:
    """Where a server answers; ``started`` when this call launched it."""

    url: str
    pid: int | None
    started: bool
    source: str = "local"  # "env" (PREFECT_API_URL), "local" (already running), "started"


@dataclass(frozen=True)
class Managed:
    """One kind of server this module may start: its files and how to recognise it."""

    name: str
    pid_name: str
    log_name: str
    markers: tuple[str, ...]  # all must appear in the process's command line

    def pid_file(self, state_dir: Path) -> Path:
        return state_dir / self.pid_name

    def log_file(self, state_dir: Path) -> Path:
        return state_dir / self.log_name


PREFECT = Managed("prefect server", "prefect-server.pid", "prefect-server.log",
                  ("prefect", "server", "start"))
SIMULATOR = Managed("comfyui simulator", "simulator.pid", "simulator.log",
                    ("tower.cli", "sim"))
MANAGED = (PREFECT, SIMULATOR)


def answers(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether ``GET url`` answers 200 right now."""
    try:
        return httpx.get(url, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def free_port(host: str = DEFAULT_HOST) -> int:
    """A port nothing listens on right now (the OS picks it), for a server started next."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def prefect_api_url(host: str = DEFAULT_HOST, port: int = PREFECT_PORT) -> str:
    return f"http://{host}:{port}/api"


def _spawn(server: Managed, state_dir: Path, command: list[str],
           env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    """Start ``command`` in its own session (so the caller's Ctrl-C leaves it running)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with server.log_file(state_dir).open("ab") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, env=dict(env),
                                   start_new_session=True)
    atomic_write_text(server.pid_file(state_dir), f"{process.pid}\n")
    return process


def log_tail(path: Path, lines: int = 15) -> str:
    """The last ``lines`` of a log file, or '' when it cannot be read."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def _wait_until(ready: Callable[[], bool], process: subprocess.Popen[bytes], server: Managed,
                state_dir: Path, timeout: float) -> None:
    """Wait for ``ready``; fail early if the process dies, with the log's last lines."""
    log = server.log_file(state_dir)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if process.poll() is not None:
            server.pid_file(state_dir).unlink(missing_ok=True)
            raise LocalServerError(
                f"{server.name} exited with code {process.returncode}; see {log}:\n"
                + log_tail(log))
        time.sleep(0.25)
    _stop_pid(process.pid, server)
    server.pid_file(state_dir).unlink(missing_ok=True)
    raise LocalServerError(f"{server.name} did not answer within {timeout:.0f} s; "
                           f"see {log}:\n" + log_tail(log))


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _prefect_command(host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "prefect", "server", "start", "--host", host,
            "--port", str(port), "--analytics-off"]


def _prefect_env(state_dir: Path, host: str, port: int,
                 database_url: str | None = None) -> dict[str, str]:
    """The server's environment. The UI is told its API address: otherwise it derives
    it from the default port, and a server on any other port shows an empty UI that
    "can't connect to Server API at http://127.0.0.1:4200/api". Without
    ``database_url`` the database is SQLite under the state folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    home = (state_dir / "prefect").resolve()
    env |= {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_API_URL": f"http://{host}:{port}/api",
    }
    if database_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
    return env


def ensure_prefect_server(state_dir: Path, host: str = DEFAULT_HOST, port: int = PREFECT_PORT,
                          *, api_url: str | None = None, database_url: str | None = None,
                          timeout: float = PREFECT_START_TIMEOUT_S) -> ServerInfo:
    """A Prefect server to report to: the configured one, a running local one, or a new one.

    Args:
        state_dir: holds the PID file, log and the server's SQLite database.
        api_url: an already configured API (``PREFECT_API_URL``); ``None`` reads the
            environment. Used when it answers; otherwise a local server is used.
        database_url: the database of a server this call starts
            (``postgresql+asyncpg://...``); default SQLite in ``state_dir``.

    Raises:
        LocalServerError: the server exited or did not answer in time (names the log).
    """
    configured = api_url if api_url is not None else os.environ.get("PREFECT_API_URL")
    if configured and answers(f"{configured.rstrip('/')}/health"):
        return ServerInfo(configured.rstrip("/"), None, started=False, source="env")
    url = prefect_api_url(host, port)
    health = f"{url}/health"
    if answers(health):
        return ServerInfo(url, _read_pid(PREFECT.pid_file(state_dir)), started=False)
    process = _spawn(PREFECT, state_dir, _prefect_command(host, port),
                     _prefect_env(state_dir, host, port, database_url))
    _wait_until(lambda: answers(health), process, PREFECT, state_dir, timeout)
    return ServerInfo(url, process.pid, started=True, source="started")


def _simulator_command(port: int, output_dir: Path, extra_args: tuple[str, ...]) -> list[str]:
    """``tower sim`` (which always listens on 127.0.0.1) run by this Python."""
    return [sys.executable, "-c", "from tower.cli import main; main()", "sim",
            "--port", str(port), "--output-dir", str(output_dir), *extra_args]


def ensure_simulator(state_dir: Path, port: int = SIMULATOR_PORT, host: str = DEFAULT_HOST,
                     *, extra_args: tuple[str, ...] = (),
                     timeout: float = SIMULATOR_START_TIMEOUT_S) -> str:
    """The URL of a ComfyUI answering on ``host:port``, starting ``tower sim`` if none does.

    The simulator's images go to ``state_dir/simulator-output``; ``extra_args`` are
    passed to ``tower sim`` (e.g. ``("--time-scale", "0.002")``).

    Raises:
        LocalServerError: the simulator exited or did not answer in time (names the log).
    """
    url = f"http://{host}:{port}"
    stats = f"{url}/system_stats"
    if answers(stats):
        return url
    output_dir = (state_dir / "simulator-output").resolve()
    command = _simulator_command(port, output_dir, extra_args)
    process = _spawn(SIMULATOR, state_dir, command, os.environ)
    _wait_until(lambda: answers(stats), process, SIMULATOR, state_dir, timeout)
    return url


def _command_line(pid: int) -> str | None:
    """The process's command line, or ``None`` when no such process runs."""
    if Path("/proc").is_dir():
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        return raw.replace(b"\0", b" ").decode(errors="replace")
    found = subprocess.run(["ps", "-o", "command=", "-p", str(pid)], capture_output=True,
                           text=True, check=False)
    return found.stdout.strip() or None


def _is_ours(pid: int, server: Managed) -> bool:
    command = _command_line(pid)
    return command is not None and all(marker in command for marker in server.markers)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_pid(pid: int, server: Managed, timeout: float = STOP_TIMEOUT_S) -> bool:
    """Stop the process group ``pid`` leads (children included); True if it was running."""
    if not _is_ours(pid, server):
        return False
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _reap(pid)
            if not _alive(pid):
                return True
            time.sleep(0.1)
    return True


def _reap(pid: int) -> None:
    """Collect the exit status when the process is our own child (tests, one CLI run)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def stop_started_servers(state_dir: Path) -> list[str]:
    """Stop the servers whose PID files are under ``state_dir``; return what was stopped.

    A PID file whose process is gone, or is now some other program, is removed without
    touching that process.
    """
    stopped = []
    for server in MANAGED:
        pid_file = server.pid_file(state_dir)
        pid = _read_pid(pid_file)
        if pid is not None and _stop_pid(pid, server):
            stopped.append(f"{server.name} (pid {pid})")
        pid_file.unlink(missing_ok=True)
    return stopped


@dataclass(frozen=True)
class ServerStatus:
    """One managed server as ``tower server status`` shows it."""

    name: str
    url: str
    answering: bool
    pid: int | None  # from our PID file, when that process is still ours


def server_status(state_dir: Path, host: str = DEFAULT_HOST, prefect_port: int = PREFECT_PORT,
                  simulator_port: int = SIMULATOR_PORT) -> list[ServerStatus]:
    """Whether each local server answers, and which PID started it (if we did)."""
    result = []
    for server, url, probe in (
        (PREFECT, prefect_api_url(host, prefect_port), "/health"),
        (SIMULATOR, f"http://{host}:{simulator_port}", "/system_stats"),
    ):
        pid = _read_pid(server.pid_file(state_dir))
        if pid is not None and not _is_ours(pid, server):
            pid = None
        result.append(ServerStatus(server.name, url, answers(url + probe), pid))
    return result
