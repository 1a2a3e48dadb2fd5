"""Contact sheets: every take of a run on one image, labelled, for a quick review.

A director scans a sheet to pick takes, so each thumbnail keeps its aspect ratio and
carries its shot id and take. An image that cannot be read becomes a grey tile saying
so: one bad file must not hide the rest of the night's work.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from tower.store.files import atomic_path

SHEETS_FOLDER = "contact-sheets"
PAD = 8
LABEL_HEIGHT = 18
TITLE_HEIGHT = 28
BACKGROUND = (24, 24, 28)
TILE = (48, 48, 54)
TEXT = (235, 235, 235)
MUTED = (150, 150, 150)


def sheet_path(episode: str, run_id: str) -> str:
    """Relative to the render root, so the sheet lives next to the episode's images."""
    return f"{episode}/{SHEETS_FOLDER}/{run_id}.png"


def sheet_size(count: int, columns: int, thumb: int, title: str = "") -> tuple[int, int]:
    """Width and height in pixels of a sheet of ``count`` thumbnails."""
    cols = max(1, min(columns, count))
    rows = max(1, math.ceil(count / cols))
    width = PAD + cols * (thumb + PAD)
    height = (TITLE_HEIGHT if title else 0) + PAD + rows * (thumb + LABEL_HEIGHT + PAD)
    return width, height


def _fit(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int) -> str:
    """``text`` shortened with an ellipsis to fit ``width`` pixels."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


def _thumbnail(path: Path, thumb: int) -> Image.Image | None:
    try:
        with Image.open(path) as image:
            image.thumbnail((thumb, thumb))
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def _draw_cell(sheet: Image.Image, draw: ImageDraw.ImageDraw, origin: tuple[int, int],
               label: str, path: Path, thumb: int) -> None:
    x, y = origin
    draw.rectangle((x, y, x + thumb - 1, y + thumb - 1), fill=TILE)
    image = _thumbnail(path, thumb)
    font = ImageFont.load_default()
    if image is None:
        draw.text((x + 6, y + thumb // 2 - 6), "unreadable", fill=MUTED, font=font)
    else:
        sheet.paste(image, (x + (thumb - image.width) // 2, y + (thumb - image.height) // 2))
    draw.text((x, y + thumb + 3), _fit(label, font, thumb), fill=TEXT, font=font)


def make_contact_sheet(items: Sequence[tuple[str, Path]], dest: Path, *, columns: int = 6,
                       thumb: int = 192, title: str = "") -> Path:
    """Draw ``(label, image path)`` items as a labelled grid and write it to ``dest``.

    The format follows ``dest``'s suffix (PNG when unknown). Written atomically.

    Raises:
        ValueError: no items, or a non-positive ``columns``/``thumb``.
    """
    if not items:
        raise ValueError(f"contact sheet {dest}: no images to show")
    if columns < 1 or thumb < 16:
        raise ValueError(f"contact sheet {dest}: columns must be >= 1 and thumb >= 16")
    sheet = Image.new("RGB", sheet_size(len(items), columns, thumb, title), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    top = PAD
    if title:
        draw.text((PAD, PAD), _fit(title, ImageFont.load_default(), sheet.width - 2 * PAD),
                  fill=TEXT, font=ImageFont.load_default())
        top += TITLE_HEIGHT
    cols = min(columns, len(items))
    for index, (label, path) in enumerate(items):
        row, col = divmod(index, cols)
        origin = (PAD + col * (thumb + PAD), top + row * (thumb + LABEL_HEIGHT + PAD))
        _draw_cell(sheet, draw, origin, label, Path(path), thumb)
    image_format = Image.registered_extensions().get(dest.suffix.lower(), "PNG")
    with atomic_path(dest) as tmp:
        sheet.save(tmp, format=image_format)
    return dest
