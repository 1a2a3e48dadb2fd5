"""Where renders, the output index, metrics and run logs live; and the studio's presets."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from prefect.blocks.core import Block
from pydantic import Field, field_validator

from tower.shotlist.presets import Preset, apply_overrides, revision_table, with_revisions
from tower.store.files import DEFAULT_DATA_ROOT, DataRoot


class RenderStore(Block):
    """The data root: ``renders/``, ``index/``, ``metrics/``, ``runs/`` and ``reports/``."""

    _block_type_name = "Tower Render Store"
    _block_type_slug = "tower-render-store"
    _description = "The folder Tower writes images, index, metrics and run logs under."

    data_root: str = Field(default=str(DEFAULT_DATA_ROOT),
                           description="Local folder (relative to the worker's directory).")
    base_url: str | None = Field(
        default=None,
        description="Address the studio serves the data root under, e.g. "
                    "https://renders.studio.lan/tower/: run summaries link contact sheets "
                    "and images under it (else they name them relative to the data root).")

    @field_validator("data_root")
    @classmethod
    def _root_is_a_folder(cls, value: str) -> str:
        """An empty root would scatter renders and metrics over the worker's directory."""
        if not value.strip():
            raise ValueError("must name a folder (got an empty string)")
        return value

    @field_validator("base_url")
    @classmethod
    def _url_is_http(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"must be an http(s):// URL (got {value!r})")
        return value.strip().rstrip("/") + "/"

    def get_data_root(self) -> DataRoot:
        return DataRoot(Path(self.data_root))


class RenderPresets(Block):
    """Preset overrides shared by every run (same shape as a presets YAML file)."""

    _block_type_name = "Tower Render Presets"
    _block_type_slug = "tower-render-presets"
    _description = "Overrides of the built-in draft/standard/high presets, and new ones."

    presets: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # A presets file's ``models:`` table: model file name -> {"revision": "2026-11"}.
    models: dict[str, dict[str, Any]] = Field(default_factory=dict)

    def get_presets(self) -> dict[str, Preset]:
        """Built-in presets with this block's overrides and model revisions applied
        (InputError if invalid)."""
        source = f"block {self._block_document_name}"
        return with_revisions(apply_overrides(self.presets, source=source),
                              revision_table(self.models, source))
