"""prefect.yaml: every entrypoint imports and every parameter set fits its flow."""

from __future__ import annotations

import inspect

import pytest
from paths import REPO
from prefect.exceptions import ParameterTypeError
from prefect.schedules import Cron

from tasks.deployments import load_entrypoint, read_deployments, runner_deployments

ROOT = REPO
PREFECT_YAML = ROOT / "prefect.yaml"
DEPLOYMENTS = read_deployments(PREFECT_YAML)


def test_the_three_deployments_are_declared():
    assert [d["name"] for d in DEPLOYMENTS] == ["nightly", "daily-report", "draft-preview"]


@pytest.mark.parametrize("entry", DEPLOYMENTS, ids=lambda d: d["name"])
def test_entrypoint_imports_and_parameters_validate(entry):
    flow = load_entrypoint(entry["entrypoint"], ROOT)
    params = entry.get("parameters") or {}
    accepted = inspect.signature(flow.fn).parameters
    assert set(params) <= set(accepted), f"unknown parameters: {set(params) - set(accepted)}"
    flow.validate_parameters(params)   # raises on a wrong type or a missing required one
    path_params = [v for k, v in params.items() if k in ("shot_list", "presets_file")]
    for value in path_params:
        assert (ROOT / value).is_file(), f"{entry['name']}: {value} does not exist"


@pytest.mark.parametrize(("name", "cron"), [("nightly", "0 2 * * *"),
                                            ("daily-report", "30 9 * * *")])
def test_scheduled_deployments_have_a_cron_with_a_timezone(name, cron):
    (entry,) = [d for d in DEPLOYMENTS if d["name"] == name]
    (schedule,) = entry["schedules"]
    assert schedule["cron"] == cron and schedule["timezone"]
    Cron(schedule["cron"], timezone=schedule["timezone"])   # valid cron and zone


def test_tower_serve_builds_the_same_deployments():
    built = {d.name: d for d in runner_deployments(PREFECT_YAML)}
    assert set(built) == {"nightly", "daily-report", "draft-preview"}
    assert built["draft-preview"].schedules in (None, [])
    assert built["nightly"].schedules[0].schedule.cron == "0 2 * * *"
    assert built["nightly"].parameters["shot_list"] == "shot_lists/ep01_demo.yaml"


@pytest.mark.parametrize(("params", "field"), [({"shot_list": "x.yaml", "reuse": "bogus"}, "reuse"),
                                               ({"reuse": "exact"}, "shot_list")])
def test_a_bad_parameter_set_would_be_caught(params, field):
    flow = load_entrypoint("flows/render_episode.py:render_episode", ROOT)
    with pytest.raises(ParameterTypeError, match=field):
        flow.validate_parameters(params)
