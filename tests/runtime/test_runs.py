"""Run ids and artifact keys: what the flows write is what cancellation reads back."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tower.runtime.runs import PLAN_KEY_PREFIXES, RunArtifacts, artifact_key, run_id

STARTED = datetime(2026, 11, 27, 2, 0, 5, tzinfo=UTC)


@pytest.mark.parametrize(("parts", "key"), [
    (("plan", "ep01"), "plan-ep01"),
    (("plan", "EP_01 Final"), "plan-ep-01-final"),
    (("preview", "progress", "--x--"), "preview-progress-x"),
])
def test_artifact_keys_use_only_what_prefect_accepts(parts, key):
    assert artifact_key(*parts) == key


@pytest.mark.parametrize("kind", ["render", "preview"])
@pytest.mark.parametrize("episode", ["ep01", "Ep_02", "preview"])
def test_a_runs_plan_key_is_found_by_exactly_one_cancellation_prefix(kind, episode):
    keys = RunArtifacts(kind, episode)
    assert [p for p in PLAN_KEY_PREFIXES if keys.plan.startswith(p)] == [
        "plan-" if kind == "render" else "preview-plan-"]
    assert not keys.summary.startswith(PLAN_KEY_PREFIXES)
    assert not keys.progress.startswith(PLAN_KEY_PREFIXES)
    assert len({keys.plan, keys.progress, keys.summary}) == 3


def test_run_ids_name_the_label_the_second_and_the_flow_run():
    assert run_id("ep01", STARTED, "3f2a9c1d-0000-4000-8000-000000000000") == \
        "ep01-20261127T020005-3f2a9c1d"
    assert run_id("ep01", STARTED, None) == "ep01-20261127T020005-local"
