from __future__ import annotations

import socket
import subprocess

import httpx
import pytest
from typer.testing import CliRunner

from tower.cli.local_server import (
    PREFECT,
    SIMULATOR,
    LocalServerError,
    answers,
    ensure_prefect_server,
    ensure_simulator,
    free_port,
    server_status,
    stop_started_servers,
)
from tower.cli.servers import server_app


def test_prefect_server_is_started_reused_and_stopped(tmp_path):
    state = tmp_path / "state"
    port = free_port()
    try:
        info = ensure_prefect_server(state, port=port, api_url="")
        assert info.started and info.url == f"http://127.0.0.1:{port}/api"
        assert httpx.get(f"{info.url}/health").json() is True
        assert PREFECT.pid_file(state).read_text().strip() == str(info.pid)
        assert (state / "prefect" / "prefect.db").exists()  # its database stays in the state dir

        again = ensure_prefect_server(state, port=port, api_url="")
        assert (again.started, again.pid, again.url) == (False, info.pid, info.url)

        # A configured PREFECT_API_URL that answers wins, and nothing new is started.
        other = tmp_path / "other"
        configured = ensure_prefect_server(other, port=free_port(), api_url=info.url + "/")
        assert (configured.url, configured.source, configured.started) == (info.url, "env", False)
        assert not other.exists()

        [status] = [s for s in server_status(state, prefect_port=port) if s.name == PREFECT.name]
        assert status.answering and status.pid == info.pid
    finally:
        stopped = stop_started_servers(state)
    assert stopped == [f"prefect server (pid {info.pid})"]
    assert not answers(f"{info.url}/health")
    assert not PREFECT.pid_file(state).exists()
    assert stop_started_servers(state) == []


def test_a_server_that_cannot_start_names_its_log(tmp_path):
    with socket.socket() as busy:  # something else holds the port (bound, not answering)
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        with pytest.raises(LocalServerError, match=r"simulator\.log") as caught:
            ensure_simulator(tmp_path, port=port)
    assert "exited with code 1" in str(caught.value)
    assert f"cannot listen on 127.0.0.1:{port}" in str(caught.value)  # the log's last lines
    assert not SIMULATOR.pid_file(tmp_path).exists()


def test_stop_never_touches_a_process_it_did_not_start(tmp_path):
    other = subprocess.Popen(["sleep", "30"])
    try:
        PREFECT.pid_file(tmp_path).write_text(f"{other.pid}\n")  # stale file, PID reused
        assert stop_started_servers(tmp_path) == []
        assert other.poll() is None
        assert not PREFECT.pid_file(tmp_path).exists()
    finally:
        other.kill()
        other.wait()


def test_server_cli_stop_and_status(tmp_path):
    runner = CliRunner()
    stopped = runner.invoke(server_app, ["stop", "--state-dir", str(tmp_path)])
    assert stopped.exit_code == 0 and "nothing to stop" in stopped.output
    port, sim_port = free_port(), free_port()
    shown = runner.invoke(server_app, ["status", "--state-dir", str(tmp_path),
                                       "--prefect-port", str(port), "--sim-port", str(sim_port)])
    assert shown.exit_code == 0
    assert f"prefect server: http://127.0.0.1:{port}/api not answering" in shown.output
    assert f"comfyui simulator: http://127.0.0.1:{sim_port} not answering" in shown.output


def test_simulator_is_started_in_the_background_reused_and_stopped(tmp_path):
    port = free_port()
    try:
        url = ensure_simulator(tmp_path, port=port, extra_args=("--time-scale", "0"))
        assert url == f"http://127.0.0.1:{port}"
        stats = httpx.get(f"{url}/system_stats").json()
        assert stats["system"]["comfyui_version"] == "0.3.64"
        pid = int(SIMULATOR.pid_file(tmp_path).read_text())
        assert ensure_simulator(tmp_path, port=port) == url
        assert int(SIMULATOR.pid_file(tmp_path).read_text()) == pid  # reused, not restarted
    finally:
        stopped = stop_started_servers(tmp_path)
    assert stopped == [f"comfyui simulator (pid {pid})"]
    assert not answers(f"{url}/system_stats")
    assert (tmp_path / "simulator-output").is_dir()
    assert "listening on" in SIMULATOR.log_file(tmp_path).read_text()
