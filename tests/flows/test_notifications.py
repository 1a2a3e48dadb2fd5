"""Notifications end to end: a real ``prefect server start``, a real render, real HTTP.

A loopback HTTP receiver stands in for Slack: the saved block is Prefect's own
``SlackWebhook`` whose URL is Apprise's JSON webhook form (``json://127.0.0.1:PORT/...``),
so the message goes through the same block, automation and actions service as a Slack
one would. The session's test backend is not used: automations made here would fire on
every other test's render, and only a started server is what production runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from flow_helpers import TOWER, write_shot_list
from prefect.settings import PREFECT_API_URL, temporary_settings

from tower.cli.local_server import (
    DEFAULT_HOST,
    ensure_prefect_server,
    free_port,
    stop_started_servers,
)
from tower.runtime.notifications import AUTOMATION_PREFIX

SECRET = "T0000SECRET/B0000SECRET/xoxsecrettoken"
BLOCK = "tower-test-slack"
DEADLINE_S = 45.0



class Receiver:
    """A webhook endpoint on 127.0.0.1 keeping every JSON body posted to it."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.paths: list[str] = []
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with lock:
                    outer.paths.append(self.path)
                    outer.messages.append(json.loads(raw or b"{}"))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((DEFAULT_HOST, 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def wait_for(self, found: Callable[[dict[str, Any]], bool],
                 deadline_s: float = DEADLINE_S) -> dict[str, Any]:
        """The first message ``found`` accepts; fails after ``deadline_s``."""
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            for message in list(self.messages):
                if found(message):
                    return message
            time.sleep(0.2)
        pytest.fail(f"no matching notification within {deadline_s:.0f} s; got {self.messages}")


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A ``prefect server start`` of its own (triggers and actions services on)."""
    state = tmp_path_factory.mktemp("notify-prefect")
    server = ensure_prefect_server(state, port=free_port(), api_url="")
    try:
        yield server.url
    finally:
        stop_started_servers(state)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    hook = Receiver()
    hook.thread.start()
    yield hook
    hook.server.shutdown()
    hook.server.server_close()


@pytest.fixture(scope="module")
def slack_block(prefect_api: str, receiver: Receiver) -> str:
    """A saved Slack Webhook block whose URL (a secret) points at the receiver."""
    from prefect.blocks.notifications import SlackWebhook

    with temporary_settings({PREFECT_API_URL: prefect_api}):
        SlackWebhook(url=f"json://{DEFAULT_HOST}:{receiver.port}/services/{SECRET}").save(
            BLOCK, overwrite=True)
    return BLOCK


@pytest.fixture(scope="module")
def notify_setup(prefect_api: str, slack_block: str) -> subprocess.CompletedProcess[str]:
    """``tower notify setup --slack-block``, run once for the module (the first setup)."""
    result = tower_at(prefect_api, "notify", "setup", "--slack-block", slack_block)
    assert result.returncode == 0, result.stderr
    return result


def tower_at(api: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """The installed ``tower`` command, against ``api``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env["PREFECT_API_URL"] = api
    return subprocess.run([str(TOWER), *args], capture_output=True, text=True, env=env,
                          timeout=timeout, check=False)


def tower_automations(api: str) -> dict[str, str]:
    from prefect.client.orchestration import get_client

    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        return {a.name: str(a.id) for a in client.read_automations()
                if a.name.startswith(AUTOMATION_PREFIX)}


def flow_runs(api: str) -> list[Any]:
    from prefect.client.orchestration import get_client

    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        return client.read_flow_runs()


def test_setup_is_idempotent_and_never_prints_the_webhook_url(prefect_api, slack_block,
                                                               notify_setup):
    first = notify_setup
    made = tower_automations(prefect_api)
    assert len(made) == 2, made
    assert first.stdout.count("created: ") == 2

    again = tower_at(prefect_api, "notify", "setup", "--slack-block", slack_block)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("updated: ") == 2
    assert tower_automations(prefect_api) == made  # same two, same ids

    listed = tower_at(prefect_api, "notify", "list")
    assert listed.returncode == 0, listed.stderr
    assert all(name in listed.stdout for name in made)

    missing = tower_at(prefect_api, "notify", "setup", "--slack-block", "no-such-block")
    assert missing.returncode == 1
    assert "no slack-webhook block named 'no-such-block'" in missing.stderr

    for result in (first, again, listed, missing):
        output = result.stdout + result.stderr
        assert "SECRET" not in output and str(SECRET) not in output, output


def test_a_render_notifies_its_end_and_the_server_it_took_out_of_rotation(
        prefect_api, notify_setup, receiver, sims, tmp_path):
    good, bad = sims("notify-good"), sims("notify-bad")
    bad.faults.execution_error_rate = 1.0
    shot_list = write_shot_list(tmp_path, episode="ep07", shots=4, takes=1)

    render = tower_at(prefect_api, "render", str(shot_list),
                      "--server", f"notify-good={good.url}", "--server", f"notify-bad={bad.url}",
                      "--data-root", str(tmp_path / "data"), "--retries", "0",
                      "--retry-backoff-s", "0", "--max-server-failures", "1")
    assert render.returncode == 0, render.stderr

    [run] = [r for r in flow_runs(prefect_api) if r.name.startswith("ep07-")]
    assert run.state.is_completed() and run.state.message
    ui = prefect_api.removesuffix("/api")

    ended = receiver.wait_for(lambda m: run.name in m.get("title", "")
                              and "Completed" in m.get("title", ""))
    body = ended["message"]
    assert f"{run.name} ended Completed." in body
    assert run.state.message in body  # the counts and failures, as the run ended
    assert f"{ui}/runs/flow-run/{run.id}" in body
    assert f"{ui}/artifacts/key/render-ep07" in body  # summary with the contact sheet

    out = receiver.wait_for(lambda m: "notify-bad out of rotation" in m.get("title", ""))
    assert "notify-bad is out of rotation: " in out["message"]
    assert "simulated sampler failure" in out["message"]
    assert f"Run: {run.name} {ui}/runs/flow-run/{run.id}" in out["message"]
    assert not any("notify-good" in m.get("title", "") and "rotation" in m.get("title", "")
                   for m in receiver.messages)
    assert all(path == f"/services/{SECRET}" for path in receiver.paths)
    assert SECRET not in render.stdout + render.stderr


def test_a_failed_render_notifies_its_failures(prefect_api, notify_setup, receiver, sims,
                                               tmp_path):
    broken = sims("notify-broken")
    broken.faults.execution_error_rate = 1.0
    shot_list = write_shot_list(tmp_path, episode="ep08", shots=2, takes=1)

    render = tower_at(prefect_api, "render", str(shot_list),
                      "--server", f"notify-broken={broken.url}",
                      "--data-root", str(tmp_path / "data"), "--retries", "0",
                      "--retry-backoff-s", "0", "--max-server-failures", "1")
    assert render.returncode != 0

    [run] = [r for r in flow_runs(prefect_api) if r.name.startswith("ep08-")]
    assert run.state.is_failed()
    ended = receiver.wait_for(lambda m: run.name in m.get("title", "")
                              and "Failed" in m.get("title", ""))
    assert f"{run.name} ended Failed." in ended["message"]
    assert run.state.message in ended["message"]
    assert "2 failed" in run.state.message and "@notify-broken" in run.state.message
