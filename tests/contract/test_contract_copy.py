"""The shipped recordings are exactly the shared ones, so the simulator cannot drift."""

from __future__ import annotations

from pathlib import Path

import pytest
from paths import CONTRACT, SHARED_CONTRACT

PRODUCTION = "production"


def _files(root: Path, recursive: bool) -> dict[str, bytes]:
    paths = root.rglob("*") if recursive else root.iterdir()
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in paths if p.is_file()}


def test_shipped_recordings_exist() -> None:
    assert (CONTRACT / "object_info_full.json").stat().st_size > 100_000
    assert len(list(CONTRACT.glob("ws_trace_*.json"))) >= 10
    assert len(list((CONTRACT / PRODUCTION).glob("upload_image_*.json"))) >= 15
    assert len(list((CONTRACT / PRODUCTION / "inputs").iterdir())) == 7


@pytest.mark.skipif(not SHARED_CONTRACT.is_dir(), reason="no shared recordings beside the clone")
@pytest.mark.parametrize(("folder", "recursive"), [("", False), (PRODUCTION, True)],
                         ids=["top-level", "production"])
def test_shipped_recordings_match_shared(folder: str, recursive: bool) -> None:
    assert (SHARED_CONTRACT / folder).is_dir()
    assert _files(CONTRACT / folder, recursive) == _files(SHARED_CONTRACT / folder, recursive)
