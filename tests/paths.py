"""Paths the tests share: the repository, the demo shot list, the ComfyUI recordings.

The recordings ship with the tests (``tests/contract/recordings/``) so a fresh clone is
self-contained; ``tests/contract/test_contract_copy.py`` checks that copy against the
project's shared recordings (``../shared/comfyui-contract``) whenever that folder is
present.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO_SHOT_LIST = REPO / "shot_lists" / "ep01_demo.yaml"
CONTRACT = REPO / "tests" / "contract" / "recordings"
SHARED_CONTRACT = REPO.parent / "shared" / "comfyui-contract"
