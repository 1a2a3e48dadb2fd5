"""The shipped recordings are exactly the shared ones, so the simulator cannot drift."""

from __future__ import annotations

import pytest
from paths import CONTRACT, SHARED_CONTRACT


def test_shipped_recordings_exist() -> None:
    assert (CONTRACT / "object_info_full.json").stat().st_size > 100_000
    assert len(list(CONTRACT.glob("ws_trace_*.json"))) >= 10


@pytest.mark.skipif(not SHARED_CONTRACT.is_dir(), reason="no shared recordings beside the clone")
def test_shipped_recordings_match_shared() -> None:
    shared = {p.name: p.read_bytes() for p in SHARED_CONTRACT.iterdir() if p.is_file()}
    shipped = {p.name: p.read_bytes() for p in CONTRACT.iterdir() if p.is_file()}
    assert shipped == shared
