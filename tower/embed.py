"""Pictures inside markdown artifacts: JPEG ``data:`` URIs kept under a byte limit.

A supervisor opens a run in the Prefect UI from any machine; a local file path in an
artifact opens nothing there, while the UI renders a markdown image whose source is a
``data:`` URI. Artifacts live in Prefect's database, so each picture is shrunk (JPEG
quality first, then size) until its encoded form fits the limit.
"""

from __future__ import annotations

import base64
import io

from PIL import Image

# One picture's encoded size in an artifact: a 900 px sheet of 45 takes is ~270 KB.
DEFAULT_MAX_BYTES = 400_000
QUALITIES = (85, 75, 65, 55)
MIN_WIDTH = 160


class TooLarge(ValueError):
    """Not even the smallest rendition fits the byte limit."""


def jpeg_bytes(image: Image.Image, max_bytes: int = DEFAULT_MAX_BYTES,
               max_width: int = 1200) -> bytes:
    """The image as a JPEG of at most ``max_bytes`` and ``max_width`` pixels across.

    Raises:
        TooLarge: even at MIN_WIDTH and the lowest quality it does not fit.
    """
    rgb = image.convert("RGB")
    width = min(max_width, rgb.width)
    while True:
        scaled = rgb if width == rgb.width else rgb.resize(
            (width, max(1, round(rgb.height * width / rgb.width))), Image.Resampling.LANCZOS)
        for quality in QUALITIES:
            buffer = io.BytesIO()
            scaled.save(buffer, format="JPEG", quality=quality, optimize=True)
            if buffer.tell() <= max_bytes:
                return buffer.getvalue()
        if width <= MIN_WIDTH:
            raise TooLarge(f"a {rgb.width}x{rgb.height} picture does not fit in {max_bytes}"
                           " bytes even at its smallest")
        width = max(MIN_WIDTH, width * 3 // 4)


def data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def markdown_image(alt: str, image: Image.Image, max_bytes: int = DEFAULT_MAX_BYTES,
                   max_width: int = 1200) -> str:
    """``![alt](data:image/jpeg;base64,...)`` for a markdown artifact."""
    clean = alt.replace("[", "(").replace("]", ")")
    return f"![{clean}]({data_uri(jpeg_bytes(image, max_bytes, max_width))})"
