"""Saving simulated images the way ComfyUI's SaveImage saves them.

What the pixels show is decided in :mod:`tower.simulator.pictures`; this module names
the files (ComfyUI's counters) and writes PNGs with the prompt in their text chunks.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from tower.simulator.pictures import Picture, render
from tower.store.files import atomic_write_bytes, inside


def png_bytes(image: Image.Image, prompt: Any, extra_pnginfo: dict[str, Any] | None) -> bytes:
    """PNG with the prompt (and each extra_pnginfo key) as tEXt chunks, like SaveImage."""
    info = PngInfo()
    if prompt is not None:
        info.add_text("prompt", json.dumps(prompt))
    for key, value in (extra_pnginfo or {}).items():
        info.add_text(key, json.dumps(value))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info, compress_level=1)
    return buffer.getvalue()


class UnsafePrefixError(Exception):
    """A filename_prefix that would save outside the output folder."""


def save_path(output_dir: Path, prefix: str) -> tuple[Path, str, str, int]:
    """(folder, subfolder, filename stem, next counter) for a SaveImage ``filename_prefix``.

    Like ``folder_paths.get_save_image_path``: the counter is one above the highest
    existing ``<stem>_NNNNN_`` file in the folder, so deleted files can be reused.
    """
    subfolder, _, stem = prefix.replace("\\", "/").rpartition("/")
    try:
        folder = inside(output_dir, subfolder) if subfolder else output_dir
    except ValueError as err:
        raise UnsafePrefixError("Saving image outside the output folder is not allowed."
                                f"\n full_output_folder: {output_dir / subfolder}"
                                f"\n         output_dir: {output_dir}") from err
    pattern = re.compile(rf"^{re.escape(stem)}_(\d+)_")
    highest = 0
    if folder.is_dir():
        for entry in folder.iterdir():
            match = pattern.match(entry.name)
            if match:
                highest = max(highest, int(match.group(1)))
    return folder, subfolder, stem, highest + 1


def save_images(output_dir: Path, prefix: str, pictures: list[Picture], prompt: Any,
                extra_pnginfo: dict[str, Any] | None) -> list[dict[str, str]]:
    """Write one PNG per picture with consecutive counters; returns SaveImage's ui entries."""
    folder, subfolder, stem, counter = save_path(output_dir, prefix)
    saved = []
    for offset, picture in enumerate(pictures):
        name = f"{stem}_{counter + offset:05}_.png"
        atomic_write_bytes(folder / name, png_bytes(render(picture), prompt, extra_pnginfo))
        saved.append({"filename": name, "subfolder": subfolder, "type": "output"})
    return saved
