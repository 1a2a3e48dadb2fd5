"""What a supervisor sees: the demo's run opened in the Prefect UI, in headless Chromium.

The demo starts a real local Prefect server (with its UI) and the simulator; the test
opens the run's summary artifact the way a browser on another machine would and checks
that the contact sheet inside it is a picture that loaded, not a dead file link.
"""

from __future__ import annotations

import json
import textwrap

import httpx
import pytest
from browser import Browser, find_chromium
from test_demo import _tower

from tower.cli.local_server import free_port

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium)")

SHOT_LIST = textwrap.dedent("""\
    episode: ep98
    defaults: {preset: draft, takes: 2}
    shots:
      - {id: sh010, prompt: "a lighthouse at dusk"}
      - {id: sh020, prompt: "a courier girl on a rope bridge"}
    """)
LOADED_IMAGES = """JSON.stringify([...document.images]
    .filter(i => i.src.startsWith('data:image/jpeg') && i.complete && i.naturalWidth > 0)
    .map(i => [i.naturalWidth, i.naturalHeight]))"""


def _summary_artifact(api: str) -> dict:
    """The markdown artifact of the demo's first run that holds a picture."""
    runs = httpx.post(f"{api}/flow_runs/filter", json={"sort": "START_TIME_ASC"}).json()
    body = {"artifacts": {"flow_run_id": {"any_": [runs[0]["id"]]},
                          "type": {"any_": ["markdown"]}}}
    artifacts = httpx.post(f"{api}/artifacts/filter", json=body).json()
    return next(a for a in artifacts if "data:image/jpeg;base64," in (a.get("data") or ""))


def test_the_contact_sheet_shows_in_the_prefect_ui(tmp_path):
    (tmp_path / "shot_lists").mkdir()
    (tmp_path / "shot_lists" / "demo.yaml").write_text(SHOT_LIST)
    prefect_port, sim_port = free_port(), free_port()
    ui, api = f"http://127.0.0.1:{prefect_port}", f"http://127.0.0.1:{prefect_port}/api"
    try:
        done = _tower(tmp_path, "demo", "--prefect-port", str(prefect_port),
                      "--sim-port", str(sim_port), "--shot-list", "shot_lists/demo.yaml")
        assert done.returncode == 0, done.stdout + done.stderr
        artifact = _summary_artifact(api)
        assert str(tmp_path) not in artifact["data"]  # nothing only this machine can open
        with Browser(CHROMIUM, tmp_path / "chromium-profile") as browser:
            browser.open(f"{ui}/artifacts/artifact/{artifact['id']}")
            loaded = json.loads(browser.wait_for(
                f"(() => {{ const s = {LOADED_IMAGES}; return s === '[]' ? null : s; }})()",
                timeout=90) or "[]")
            shot = browser.screenshot(tmp_path / "artifact.png")
    finally:
        _tower(tmp_path, "server", "stop")
    assert shot.stat().st_size > 0
    assert loaded, f"no contact sheet rendered on the artifact page; see {shot}"
    assert all(width > 100 and height > 100 for width, height in loaded)
