"""Prefect blocks of the Tower flows; register with ``prefect block register -m blocks``."""

from __future__ import annotations

from blocks.comfyui_server import ComfyUIServer
from blocks.render_store import RenderPresets, RenderStore

__all__ = ["ComfyUIServer", "RenderPresets", "RenderStore"]
