"""Plain shots keep their render keys: the production parts are absent from them.

The digests below were taken from the code before shot lists could name characters,
layouts, line art, hires passes or upscale models. A change that moves any key of the
shipped lists (or of a generated season) fails here, since the output index would stop
recognising every image it holds.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import pytest
from paths import REPO

from tower.shotlist.presets import load_presets
from tower.shotlist.shots import load_shot_list
from tower.spec.takes import resolve_takes

SHOT_LISTS = REPO / "shot_lists"
EXAMPLE_PRESETS = SHOT_LISTS / "presets.example.yaml"


def _digest(keys: list[str]) -> str:
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()


FIRST_KEYS = [
    ("sh010", 0, "0811a53fbc35c06560b302bba50782e71944f092079687e8c193d69a78aa817a"),
    ("sh010", 1, "31e9b4af61c564a8fe6979ce49e9215b562f2a3ab29b04a39b3e31b0c505c848"),
    ("sh020", 0, "91b2234e69f8d1de53651d39fbe0f848c73055f28b128a81b0225fb54303f48e"),
]


@pytest.mark.parametrize("name", ["ep01_demo.yaml", "ep01_demo.csv"])
def test_demo_keys_are_those_of_before_the_parts(name: str) -> None:
    takes = resolve_takes(load_shot_list(SHOT_LISTS / name))
    assert [(t.shot_id, t.take, t.key) for t in takes[:3]] == FIRST_KEYS
    assert len(takes) == 45
    assert _digest([t.key for t in takes]) == (
        "fd3a4a694891ae4a78c2e1fd1c70c17c14200671db264194fe934359386c95cd")
    assert {t.parts for t in takes} == {""}


@pytest.mark.parametrize(("override", "digest"), [
    (None, "91659a298df25bcc050487805cc4e95c4ea36aaa82f55cf7223dcae1b511330f"),
    ("draft", "118689a2f7cf183b630a4cc24c56a5a72e7b0f042bac8d1fa3eae47f519cef62"),
    ("standard", "640e1cf250f58d147fea3c41aadc25ada3ace6f7d787e30014f872586c08ca86"),
    ("high", "d34bb0004afffebf863065979685dafae3778b46915b040afe5821d6dafdda40"),
    ("storyboard", "74f1f987eed7875a6b59af0b25a9701723274a06ddab45a892bbd2cf56bb8f1a"),
    ("final2k", "2671d08e203e1fa80838084cbfa11ccdf3a824075f0c87baee4a630fcf4f1c17"),
])
def test_example_presets_keep_their_keys(override: str | None, digest: str) -> None:
    presets = load_presets(EXAMPLE_PRESETS)
    shot_list = load_shot_list(SHOT_LISTS / "ep01_demo.yaml", presets)
    takes = resolve_takes(shot_list, presets, preset_override=override)
    assert _digest([t.key for t in takes]) == digest


def test_a_generated_season_keeps_its_keys(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("generate_season",
                                                  SHOT_LISTS / "generate_season.py")
    assert spec and spec.loader
    season = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(season)
    keys = [t.key for path in season.generate(tmp_path)
            for t in resolve_takes(load_shot_list(path))]
    assert len(keys) == 5165
    assert _digest(keys) == "9d1e27ecf30423e79bf08573cda4202bc2a36e5908366838e2a6ffbb2de84721"
