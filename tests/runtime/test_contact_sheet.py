from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont

from tower.runtime.contact_sheet import (
    BACKGROUND,
    FRAME,
    LABEL_HEIGHT,
    MARKS,
    PAD,
    TAKES_PER_SHEET,
    TEXT,
    THUMB,
    TITLE_HEIGHT,
    draw_contact_sheet,
    make_contact_sheet,
    sheet_path,
    sheet_size,
    split_sheets,
)
from tower.spec.outputs import SheetItem


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

    out = make_contact_sheet([SheetItem("sh010 t0", red), SheetItem("sh020 t1", blue),
                              SheetItem("sh030 t0", red)],
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
    dest = make_contact_sheet([SheetItem("bad", broken),
                               SheetItem("missing", tmp_path / "nope.png"),
                               SheetItem("good", good)], tmp_path / "sheet.jpg", thumb=32)
    with Image.open(dest) as sheet:
        assert sheet.format == "JPEG"
        assert sheet.size == sheet_size(3, 6, 32)


def test_no_items_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no images"):
        make_contact_sheet([], tmp_path / "sheet.png")
    assert not (tmp_path / "sheet.png").exists()


def _near(pixel: tuple[int, ...], colour: tuple[int, int, int], tolerance: int = 12) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, colour, strict=False))


def _count(sheet: Image.Image, box: tuple[int, int, int, int],
           colour: tuple[int, int, int]) -> int:
    left, top, right, bottom = box
    return sum(1 for x in range(left, right) for y in range(top, bottom)
               if _near(sheet.getpixel((x, y)), colour))


def _label(text: str, colour: tuple[int, int, int], width: int) -> bytes:
    """A label as the sheet draws it under a tile, to compare pixel for pixel."""
    image = Image.new("RGB", (width, LABEL_HEIGHT), BACKGROUND)
    ImageDraw.Draw(image).text((0, 3), text, fill=colour, font=ImageFont.load_default())
    return image.tobytes()


def test_failed_and_suspect_takes_are_marked_in_colour_with_their_word(tmp_path):
    green = _png(tmp_path / "g.png", (64, 64), (0, 200, 0))
    thumb = THUMB  # as the flows draw them
    items = [SheetItem("sh010 t0", green), SheetItem("sh010 t1", None, "failed"),
             SheetItem("sh020 t0", green, "suspect"), SheetItem("sh020 t1", None, "cancelled")]
    sheet = draw_contact_sheet(items, columns=4, thumb=thumb)
    cells = [(PAD + i * (thumb + PAD), PAD) for i in range(4)]
    tiles = [(x, y, x + thumb, y + thumb) for x, y in cells]
    labels = [(x, y + thumb, x + thumb, y + thumb + LABEL_HEIGHT) for x, y in cells]
    failed, suspect, cancelled = MARKS["failed"], MARKS["suspect"], MARKS["cancelled"]

    # An ordinary take: its picture, no marker colour, a light label.
    assert _count(sheet, tiles[0], failed.colour) == 0 == _count(sheet, tiles[0], suspect.colour)
    assert sheet.getpixel((cells[0][0] + thumb // 2, cells[0][1] + thumb // 2)) == (0, 200, 0)
    # A failed take: a dark red tile, the word "failed" in red across its middle, a red label.
    x, y = cells[1]
    assert sheet.getpixel((x + 4, y + 4)) == failed.fill
    middle = (x, y + thumb // 2 - 10, x + thumb, y + thumb // 2 + 10)
    assert _count(sheet, middle, failed.colour) > 40
    assert _count(sheet, (x, y, x + thumb, y + thumb // 3), failed.colour) == 0  # only the word
    # A suspect take keeps its picture inside an amber frame, with the word on a band.
    x, y = cells[2]
    assert sheet.getpixel((x + thumb // 2, y + thumb - 1 - FRAME // 2)) == suspect.colour
    assert sheet.getpixel((x + FRAME // 2, y + thumb // 2)) == suspect.colour
    assert sheet.getpixel((x + thumb // 2, y + thumb // 2 + 10)) == (0, 200, 0)
    band = (x, y, x + thumb, y + 30)
    assert _count(sheet, band, BACKGROUND) > 20   # the word, dark on the amber band
    # A take the run never reached (cancelled) is grey, with its word.
    assert _count(sheet, tiles[3], cancelled.colour) > 20
    assert _count(sheet, tiles[3], failed.colour) == 0
    # Each tile keeps its label: light for an ordinary take, in its marker's colour else.
    colours = [TEXT, failed.colour, suspect.colour, cancelled.colour]
    for item, box, colour in zip(items, labels, colours, strict=True):
        assert sheet.crop(box).tobytes() == _label(item.label, colour, thumb), item.label


def test_marker_words_are_what_the_tiles_say():
    assert {s: m.word for s, m in MARKS.items()} == {
        "suspect": "suspect", "failed": "failed", "cancelled": "cancelled"}
    with pytest.raises(ValueError, match="unknown status"):
        SheetItem("sh010 t0", None, "lost")  # type: ignore[arg-type]


def _shots(*sizes: int) -> list[SheetItem]:
    return [SheetItem(f"sh{s} t{t}", None, shot=f"sh{s}")
            for s, size in enumerate(sizes) for t in range(size)]


@pytest.mark.parametrize(("sizes", "per_sheet", "expected"), [
    ((), 4, []),
    ((2, 2), 4, [[2, 2]]),
    ((3, 2, 1), 4, [[3], [2, 1]]),            # a shot is never cut to fill a sheet
    ((9, 1), 4, [[4], [4], [1, 1]]),          # unless it alone is larger than one
    ((1, 4, 1), 4, [[1], [4], [1]]),
    ((1,) * 10, 4, [[1] * 4, [1] * 4, [1] * 2]),
])
def test_split_sheets_keeps_shots_whole(sizes, per_sheet, expected):
    parts = split_sheets(_shots(*sizes), per_sheet)
    assert [[len(list(g)) for _, g in itertools.groupby(p, key=lambda i: i.shot)]
            for p in parts] == expected
    assert [item for part in parts for item in part] == _shots(*sizes)   # order kept


def test_split_sheets_default_and_paths():
    assert [len(p) for p in split_sheets(_shots(*[6] * 9))] == [48, 6]
    assert TAKES_PER_SHEET == 48
    with pytest.raises(ValueError, match="per_sheet"):
        split_sheets(_shots(1), 0)
    assert sheet_path("ep01", "ep01-x") == "ep01/contact-sheets/ep01-x.png"
    assert sheet_path("ep01", "ep01-x", 2) == "ep01/contact-sheets/ep01-x-part-2.png"
