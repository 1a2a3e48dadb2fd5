"""Where renders, the output index, metrics and run logs live; and the studio's presets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect.blocks.core import Block
from pydantic import Field

from tower.shotlist.presets import Preset, apply_overrides
from tower.store.files import DEFAULT_DATA_ROOT, DataRoot


class RenderStore(Block):
    """The data root: ``renders/``, ``index/``, ``metrics/``, ``runs/`` and ``reports/``."""

    _block_type_name = "Tower Render Store"
    _block_type_slug = "tower-render-store"
    _description = "The folder Tower writes images, index, metrics and run logs under."

    data_root: str = Field(default=str(DEFAULT_DATA_ROOT),
                           description="Local folder (relative to the worker's directory).")

    def get_data_root(self) -> DataRoot:
        return DataRoot(Path(self.data_root))


class RenderPresets(Block):
    """Preset overrides shared by every run (same shape as a presets YAML file)."""

    _block_type_name = "Tower Render Presets"
    _block_type_slug = "tower-render-presets"
    _description = "Overrides of the built-in draft/standard/high presets, and new ones."

    presets: dict[str, dict[str, Any]] = Field(default_factory=dict)

    def get_presets(self) -> dict[str, Preset]:
        """Built-in presets with this block's overrides applied (InputError if invalid)."""
        return apply_overrides(self.presets, source=f"block {self._block_document_name}")
