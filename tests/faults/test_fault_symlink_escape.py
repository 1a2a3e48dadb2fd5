"""Nothing a run writes leaves the data root, not even through a symlink inside it.

An episode's render folder replaced by a symlink to a folder elsewhere (a careless
``ln -s``, or someone who can write the data root but not the target) must not make
the pipeline write there: each image path is resolved and checked before writing
(:func:`tower.store.files.inside`).
"""

from __future__ import annotations

import uuid

import pytest
from faults_common import farm_state, queued
from flow_helpers import write_shot_list

from flows.render_episode import render_episode

pytestmark = pytest.mark.usefixtures("prefect_backend")


def test_a_symlinked_episode_folder_is_refused_and_nothing_lands_outside(tmp_path, sims):
    name = f"link{uuid.uuid4().hex[:6]}"
    sim = sims(name)
    shot_list = write_shot_list(tmp_path, episode="eplink", shots=2, takes=1)
    data, outside = tmp_path / "data", tmp_path / "elsewhere"
    outside.mkdir()
    (data / "renders").mkdir(parents=True)
    (data / "renders" / "eplink").symlink_to(outside, target_is_directory=True)

    state = render_episode(shot_list=str(shot_list), servers=[f"{name}={sim.url}"],
                           data_root=str(data), retries=0, retry_backoff_s=0,
                           return_state=True)
    assert state.is_failed()
    assert "resolves outside" in state.message, state.message
    assert farm_state(data).index.height == 0
    assert queued(sim) == ()
    assert list(outside.rglob("*")) == []        # neither images nor the contact sheet
