"""A server token never shows up in anything a run writes or reports.

The token lives in a saved ``ComfyUIServer`` block (a SecretStr). After a render with
it, and after a render refused by a server that rejects it, the test reads back
everything the runs left: every file under the data root (Parquet parts decoded to
text too), the flow runs' logs and artifacts through the Prefect client, their state
messages and the reprs of the block and its client. The simulator does not check
tokens, so the refusal comes from a loopback stub that answers 401 to everything.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from uuid import UUID

import polars as pl
import pytest
from flow_helpers import write_shot_list
from prefect import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    LogFilter,
    LogFilterFlowRunId,
)

from blocks.comfyui_server import ComfyUIServer
from flows.render_episode import render_episode

pytestmark = pytest.mark.usefixtures("prefect_backend")

SECRET = f"tok-{uuid.uuid4().hex}"


class Refuses(BaseHTTPRequestHandler):
    """Answers 401 to every request, like a ComfyUI behind an auth proxy."""

    def _refuse(self) -> None:
        body = b'{"error": "unauthorized"}'
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _refuse

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def refusing_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Refuses)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def everything_written(data: Path) -> str:
    """Every file under ``data`` as text; Parquet parts as their rows."""
    texts = []
    for path in sorted(p for p in data.rglob("*") if p.is_file()):
        if path.suffix == ".parquet":
            texts.append(str(pl.read_parquet(path).to_dicts()))
        texts.append(path.read_bytes().decode("latin-1"))
    return "\n".join(texts)


def everything_prefect_kept(flow_run_id: UUID) -> str:
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        logs = client.read_logs(log_filter=LogFilter(
            flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return "\n".join([run.model_dump_json(), *(log.message for log in logs),
                      *(json.dumps(a.data, default=str) + str(a.description) for a in artifacts)])


def test_a_token_never_appears_in_what_runs_write_or_report(tmp_path, sims, refusing_server):
    name = f"sec{uuid.uuid4().hex[:6]}"
    sim = sims(name)
    ComfyUIServer(name=name, base_url=sim.url, token=SECRET).save(name, overwrite=True)
    ComfyUIServer(name=f"{name}-x", base_url=refusing_server, token=SECRET).save(
        f"{name}-x", overwrite=True)
    shot_list = write_shot_list(tmp_path, episode="epsec", shots=2, takes=1)
    data = tmp_path / "data"

    ok = render_episode(shot_list=str(shot_list), servers=[name], data_root=str(data),
                        retries=0, retry_backoff_s=0, return_state=True)
    assert ok.is_completed(), ok.message
    refused = render_episode(shot_list=str(shot_list), servers=[f"{name}-x"], force=True,
                             data_root=str(tmp_path / "data-x"), retries=0,
                             retry_backoff_s=0, return_state=True)
    assert refused.is_failed() and "401" in refused.message, refused.message

    block = ComfyUIServer.load(name)
    seen = {
        "data root": everything_written(data) + everything_written(tmp_path / "data-x"),
        "render run in Prefect": everything_prefect_kept(ok.state_details.flow_run_id),
        "refused run in Prefect": everything_prefect_kept(refused.state_details.flow_run_id),
        "state messages": f"{ok.message}\n{refused.message}",
        "reprs": f"{block!r} {block.get_client()!r} {block.model_dump()!r}",
    }
    leaks = [where for where, text in seen.items() if SECRET in text]
    assert leaks == []
    assert len(seen["data root"]) > 0 and "epsec" in seen["render run in Prefect"]
