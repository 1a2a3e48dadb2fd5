"""What a supervisor reads in the Prefect UI: summary artifacts, contact sheets, state messages.

Each night runs on a real simulator inside the session's Prefect backend; artifacts are
read back through Prefect's client, the way the UI gets them. A picture must be in the
artifact itself (a JPEG ``data:`` URI under the limit), and no artifact or state message
may name a file by a path that only this machine can open.
"""

from __future__ import annotations

import base64
import io
import re
import shutil
from pathlib import Path
from uuid import UUID

import httpx
import pytest
from flow_helpers import write_shot_list
from PIL import Image
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from pydantic import ValidationError

from blocks import RenderStore
from flows.common import final_state
from flows.draft_preview import draft_preview
from flows.render_episode import render_episode
from tasks.reporting import SHEET_MAX_BYTES
from tasks.setup import resolve_data_url
from tower.runtime.contact_sheet import MARKS, PAD, THUMB, TITLE_HEIGHT
from tower.runtime.summary import RunTally

pytestmark = pytest.mark.usefixtures("prefect_backend")

FAST = {"retries": 0}
PICTURE = re.compile(r"!\[[^\]]*\]\(data:image/jpeg;base64,([A-Za-z0-9+/=]+)\)")


def render(shot_list: Path, server: str, **params):
    state = render_episode(shot_list=str(shot_list), servers=[server], **{**FAST, **params},
                           return_state=True)
    return state, state.result(raise_on_failure=False)


def artifacts(state) -> dict[str, object]:
    """The flow run's artifacts by key (markdown and tables; progress bars left out)."""
    run = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[
        UUID(str(state.state_details.flow_run_id))]))
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=run)
    return {a.key: a for a in found if a.key and a.type != "progress"}


def pictures(markdown: str) -> list[Image.Image]:
    """Every embedded picture, decoded; each under the byte limit."""
    images = []
    for encoded in PICTURE.findall(markdown):
        jpeg = base64.b64decode(encoded)
        assert len(jpeg) <= SHEET_MAX_BYTES
        image = Image.open(io.BytesIO(jpeg))
        image.load()
        assert image.format == "JPEG"
        images.append(image)
    return images


def assert_nothing_local(state, found: dict[str, object], tmp_path: Path) -> None:
    """No artifact and no state message names a path under this test's folders."""
    assert str(tmp_path) not in str(state.message)
    for artifact in found.values():
        text = f"{artifact.data} {artifact.description}"
        assert str(tmp_path) not in text and str(tmp_path.resolve()) not in text, artifact.key


def test_the_summary_embeds_its_sheet_and_names_files_from_the_data_root(tmp_path, sims):
    sim = sims("art-one")
    shot_list = write_shot_list(tmp_path, shots=3, takes=2)
    data = tmp_path / "data"
    state, summary = render(shot_list, f"art-one={sim.url}", data_root=str(data))
    assert state.is_completed(), state.message
    assert state.message == "ep01: 6 images stored (6 rendered), 0 from the index, 0 failed"

    found = artifacts(state)
    assert_nothing_local(state, found, tmp_path)
    markdown = str(found["render-ep01"].data)
    [sheet] = pictures(markdown)
    relative = f"renders/ep01/contact-sheets/{summary['run_id']}.png"
    assert summary["contact_sheets"] == [relative]
    assert Path(summary["contact_sheet"]) == data / relative   # local callers keep theirs
    with Image.open(data / relative) as full:
        assert sheet.size == full.size          # shown at its own width, labels legible
        assert full.size[0] == PAD + 6 * (THUMB + PAD)
    assert f"`{relative}`" in markdown and "| images stored | 6 |" in markdown
    # What the flow returns (and the CLI prints) stays text.
    assert "data:image" not in summary["markdown"]
    assert summary["markdown"] in markdown


def test_adopted_and_cached_nights_count_every_image_stored(tmp_path, sims):
    sim = sims("art-again")
    shot_list = write_shot_list(tmp_path, shots=3, takes=2)
    data = tmp_path / "data"
    server = f"art-again={sim.url}"
    state, _ = render(shot_list, server, data_root=str(data))
    assert state.message == "ep01: 6 images stored (6 rendered), 0 from the index, 0 failed"
    state, _ = render(shot_list, server, data_root=str(data))
    assert state.message == "ep01: 0 images stored, 6 from the index, 0 failed"

    # Index and images lost: the server's history still holds every prompt of the plan.
    shutil.rmtree(data / "index")
    shutil.rmtree(data / "renders")
    state, summary = render(shot_list, server, data_root=str(data))
    assert state.is_completed(), state.message
    assert state.message == ("ep01: 6 images stored (6 adopted from a server), "
                             "0 from the index, 0 failed")
    assert (summary["takes_adopted"], summary["takes_stored"]) == (6, 6)
    markdown = str(artifacts(state)["render-ep01"].data)
    assert "| adopted from a server | 6 |" in markdown and len(pictures(markdown)) == 1

    # Only one shot's images lost: the others come from the index.
    for path in (data / "renders" / "ep01" / "sh020").glob("*.png"):
        path.unlink()
    state, _ = render(shot_list, server, data_root=str(data))
    assert state.message == ("ep01: 2 images stored (2 adopted from a server), "
                             "4 from the index, 0 failed")


def test_a_night_served_from_comfyuis_cache_says_so(tmp_path, sims):
    sim = sims("art-cache")
    shot_list = write_shot_list(tmp_path, shots=1, takes=2)
    data = tmp_path / "data"
    server = f"art-cache={sim.url}"
    render(shot_list, server, data_root=str(data))
    shutil.rmtree(data / "index")
    shutil.rmtree(data / "renders")
    httpx.post(f"{sim.url}/history", json={"clear": True}).raise_for_status()
    # Queued again, but ComfyUI still holds every node of its last prompt.
    state, summary = render(shot_list, server, data_root=str(data))
    assert state.is_completed(), state.message
    assert state.message == ("ep01: 2 images stored (2 from ComfyUI's cache), "
                             "0 from the index, 0 failed")
    assert summary["takes_cached"] == 2
    assert "| from ComfyUI's cache | 2 |" in str(artifacts(state)["render-ep01"].data)


def test_failed_takes_show_on_the_sheet_and_in_the_message(tmp_path, sims):
    sim = sims("art-fail")
    shot_list = write_shot_list(tmp_path, shots=2, takes=2)
    data = tmp_path / "data"
    server = f"art-fail={sim.url}"
    render(shot_list, server, data_root=str(data), shots=["sh010"])
    sim.faults.execution_error_rate = 1.0
    state, summary = render(shot_list, server, data_root=str(data))
    assert state.is_failed()
    assert state.message.startswith(
        "ep01: 0 images stored, 2 from the index, 2 failed; 1 batch failed: ep01 sh020")
    found = artifacts(state)
    assert_nothing_local(state, found, tmp_path)
    markdown = str(found["render-ep01"].data)
    assert "4 takes, 2 failed" in markdown and len(pictures(markdown)) == 1
    # sh010's two takes show their images; sh020's two are red "failed" tiles.
    failed = MARKS["failed"]
    with Image.open(data / summary["contact_sheets"][0]) as sheet:
        sheet = sheet.convert("RGB")
        tops = [(PAD + i * (THUMB + PAD), PAD + TITLE_HEIGHT) for i in range(4)]
        assert [sheet.getpixel((x + 3, y + 3)) == failed.fill for x, y in tops] == [
            False, False, True, True]


def test_a_long_episode_gets_one_artifact_per_sheet_linked_under_the_studio_url(tmp_path,
                                                                                sims):
    sim = sims("art-long")
    shot_list = write_shot_list(tmp_path, shots=7, takes=8)     # 56 takes: 48 + 8
    RenderStore(data_root=str(tmp_path / "farm"),
                base_url="https://renders.studio.lan/tower").save("art-farm", overwrite=True)
    state, summary = render(shot_list, f"art-long={sim.url}", render_store="art-farm")
    assert state.is_completed(), state.message
    found = artifacts(state)
    assert_nothing_local(state, found, tmp_path)
    run = summary["run_id"]
    parts = [f"renders/ep01/contact-sheets/{run}-part-{n}.png" for n in (1, 2)]
    assert summary["contact_sheets"] == parts
    assert all((tmp_path / "farm" / p).is_file() for p in parts)

    text = str(found["render-ep01"].data)
    assert pictures(text) == []             # the summary lists the sheets' own artifacts
    for number, path in enumerate(parts, 1):
        link = f"[{path}](https://renders.studio.lan/tower/{path})"
        assert f"render-ep01-sheet-{number}" in text and link in text
        own = str(found[f"render-ep01-sheet-{number}"].data)
        assert link in own and "`render-ep01`" in own
        [picture] = pictures(own)
        with Image.open(tmp_path / "farm" / path) as full:
            assert picture.size[0] <= full.size[0]
    assert "| 1 | sh010 to sh060 | 48 takes |" in text
    assert "| 2 | sh070 | 8 takes |" in text


def test_a_preview_embeds_its_sheet_too(tmp_path, sims):
    sim = sims("art-preview")
    state = draft_preview(servers=[f"art-preview={sim.url}"], data_root=str(tmp_path / "data"),
                          prompt="a lantern on a windowsill, night", takes=2, retries=0,
                          return_state=True)
    assert state.is_completed(), state.message
    assert state.message == "preview: 2 images stored (2 rendered), 0 from the index, 0 failed"
    found = artifacts(state)
    assert_nothing_local(state, found, tmp_path)
    assert len(pictures(str(found["preview-preview"].data))) == 1


@pytest.mark.parametrize(("given", "stored"), [
    ("https://renders.studio.lan/tower", "https://renders.studio.lan/tower/"),
    (" http://nas:8080/data/ ", "http://nas:8080/data/"),
    ("", None),
    (None, None),
])
def test_the_render_store_carries_where_the_studio_serves_it(given, stored, tmp_path):
    RenderStore(data_root=str(tmp_path), base_url=given).save("art-url", overwrite=True)
    assert RenderStore.load("art-url").base_url == stored
    assert resolve_data_url(None, "art-url") == stored
    assert resolve_data_url(str(tmp_path), "art-url") is None   # a path given wins
    assert resolve_data_url(None, None) is None


@pytest.mark.parametrize("url", ["ftp://nas/data", "renders.studio.lan/tower", "https://"])
def test_a_render_store_url_must_be_http(url):
    with pytest.raises(ValidationError, match="base_url"):
        RenderStore(base_url=url)


FAILURE = "ep01 sh020 t0-1 draft @gpu-b: ComfyUIExecutionError: cannot write renders/x.png"


@pytest.mark.parametrize(("cancelled", "failed", "kind", "message"), [
    (False, False, "COMPLETED",
     "ep01: 3 images stored (2 rendered, 1 from ComfyUI's cache), 2 from the index, 0 failed"),
    (True, False, "CANCELLED",
     "ep01: cancelled; 3 images stored (2 rendered, 1 from ComfyUI's cache), "
     "2 from the index, 0 failed"),
    (False, True, "FAILED",
     "ep01: 3 images stored (2 rendered, 1 from ComfyUI's cache), 2 from the index, "
     f"2 failed; 1 batch failed: {FAILURE}"),
])
def test_final_state_messages(cancelled, failed, kind, message):
    tally = RunTally(takes_rendered=2, takes_cached=1, takes_deduped=2)
    if failed:
        tally.fail("ep01 sh020 t0-1 draft @gpu-b", 2,
                   "ComfyUIExecutionError: cannot write /srv/data/renders/x.png")
    summary = {"failures": [FAILURE] if failed else []}   # as publish_summary shows them
    state = final_state("ep01", tally, summary, cancelled)
    assert (state.type.value, state.message) == (kind, message)
