from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from tower.runtime.contact_sheet import (
    LABEL_HEIGHT,
    PAD,
    TITLE_HEIGHT,
    make_contact_sheet,
    sheet_size,
)


def _png(path: Path, size: tuple[int, int], color: tuple[int, int, int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


@pytest.mark.parametrize(("count", "columns", "thumb", "title", "expected"), [
    (1, 6, 64, "", (PAD + 64 + PAD, PAD + 64 + LABEL_HEIGHT + PAD)),
    (7, 3, 50, "", (PAD + 3 * 58, PAD + 3 * (50 + LABEL_HEIGHT + PAD))),
    (6, 6, 32, "ep01", (PAD + 6 * 40, TITLE_HEIGHT + PAD + (32 + LABEL_HEIGHT + PAD))),
])
def test_sheet_size(count, columns, thumb, title, expected):
    assert sheet_size(count, columns, thumb, title) == expected


def test_grid_decodes_with_thumbnails_in_place(tmp_path):
    red = _png(tmp_path / "a.png", (128, 64), (255, 0, 0))
    blue = _png(tmp_path / "b.png", (64, 128), (0, 0, 255))
    dest = tmp_path / "reports" / "sheet.png"

    out = make_contact_sheet([("sh010 t0", red), ("sh020 t1", blue), ("sh030 t0", red)],
                             dest, columns=2, thumb=64, title="ep01 demo")

    assert out == dest
    with Image.open(dest) as sheet:
        sheet.load()
        assert sheet.format == "PNG"
        assert sheet.size == sheet_size(3, 2, 64, "ep01 demo")
        top = PAD + TITLE_HEIGHT
        # Wide red image is letterboxed in the middle of its cell; tall blue one pillarboxed.
        assert sheet.getpixel((PAD + 32, top + 32)) == (255, 0, 0)
        assert sheet.getpixel((PAD + 72 + 32, top + 32)) == (0, 0, 255)
        assert sheet.getpixel((PAD + 32, top + 2)) != (255, 0, 0)
        # Third item wraps to the second row.
        assert sheet.getpixel((PAD + 32, top + 64 + LABEL_HEIGHT + PAD + 32)) == (255, 0, 0)
    assert [p.name for p in dest.parent.iterdir()] == ["sheet.png"]  # no temp files left


def test_unreadable_image_becomes_a_tile_not_an_error(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    good = _png(tmp_path / "good.png", (32, 32), (0, 255, 0))
    dest = make_contact_sheet([("bad", broken), ("missing", tmp_path / "nope.png"),
                               ("good", good)], tmp_path / "sheet.jpg", thumb=32)
    with Image.open(dest) as sheet:
        assert sheet.format == "JPEG"
        assert sheet.size == sheet_size(3, 6, 32)


def test_no_items_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no images"):
        make_contact_sheet([], tmp_path / "sheet.png")
    assert not (tmp_path / "sheet.png").exists()
