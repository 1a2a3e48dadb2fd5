"""A re-run renders a batch where an earlier run left its prompt, not a second time on the
server its own plan chose (two simulators over loopback)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tower.comfyui import ComfyUIClient
from tower.planning.planner import RenderBatch, batch_id_for
from tower.runtime.adoption import adopt_in_place, history_window
from tower.shotlist.shots import Shot, ShotList
from tower.simulator import SimulatorConfig, start_simulator
from tower.spec.graph import build_graph
from tower.spec.takes import resolve_takes


@dataclass
class Box:
    """What adoption needs of a server block: a name and a client."""

    name: str
    url: str

    def get_client(self) -> ComfyUIClient:
        return ComfyUIClient(self.url, name=self.name, timeout=5)


def batch(shot: str, server: str) -> RenderBatch:
    takes = resolve_takes(ShotList(episode="ep01", shots=(
        Shot(id=shot, prompt=f"{shot}: lanterns over the bay", takes=2, preset="draft",
             seed=7),)))
    return RenderBatch(batch_id=batch_id_for(takes), server=server, takes=tuple(takes),
                       vram_estimate_mb=2048.0, est_seconds=4.0)


@pytest.fixture
def boxes(tmp_path: Path):
    started = [start_simulator(SimulatorConfig(name=n, time_scale=0.01,
                                               output_dir=tmp_path / n))
               for n in ("gpu-a", "gpu-b")]
    yield [Box(s.config.name, s.url) for s in started], started
    for sim in started:
        sim.stop()


def test_batches_go_where_their_prompts_already_are(boxes) -> None:
    (a, b), _ = boxes
    finished, waiting, fresh = batch("sh010", "gpu-a"), batch("sh020", "gpu-a"), \
        batch("sh030", "gpu-a")
    with b.get_client() as client:  # an earlier run: one prompt done, one sent
        client.render(build_graph(finished.takes, finished.filename_prefix),
                      prompt_id=finished.prompt_id, timeout=30)
        client.submit(build_graph(waiting.takes, waiting.filename_prefix),
                      prompt_id=waiting.prompt_id)

    pinned, moves = adopt_in_place([finished, waiting, fresh], [a, b])

    assert [p.server for p in pinned] == ["gpu-b", "gpu-b", "gpu-a"]
    assert [p.takes for p in pinned] == [finished.takes, waiting.takes, fresh.takes]
    assert len(moves) == 2 and all("already on gpu-b (planned for gpu-a)" in m for m in moves)


def test_an_unreachable_server_is_skipped_and_one_server_asks_nothing(boxes) -> None:
    (a, _b), _ = boxes
    planned = [batch("sh010", "gpu-a")]
    gone = Box("gpu-gone", "http://127.0.0.1:9")
    assert adopt_in_place(planned, [gone, a]) == (tuple(planned), [])
    assert adopt_in_place(planned, [gone]) == (tuple(planned), [])


def test_history_window_covers_the_plan_within_comfyuis_bounds() -> None:
    assert history_window(10) == 256
    assert history_window(1000) == 2000
    assert history_window(50_000) == 10_000
