"""Where the recorded ComfyUI responses live.

The recordings ship with the tests (``tests/contract/``) so a fresh clone is
self-contained; ``test_contract_copy`` checks that copy against the project's shared
recordings (``../shared/comfyui-contract``) whenever that folder is present.
"""

from __future__ import annotations

from pathlib import Path

CONTRACT = Path(__file__).resolve().parent / "contract"
SHARED_CONTRACT = Path(__file__).resolve().parents[2] / "shared" / "comfyui-contract"
