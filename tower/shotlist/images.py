"""The studio's input images (layouts, line art): read, checked and identified by content.

A shot list names images by path; the pipeline needs their content. Each image is read
once when the list is loaded, before anything is queued: it must exist, be a regular
file of at most :data:`MAX_IMAGE_BYTES` and decode with Pillow. Its sha256 identifies
it (in render keys and in the name it is uploaded under), so a moved or renamed copy is
the same image and an edited one is a new image.

What was read is cached by ``(path, size, mtime_ns)``: resolving the takes after the
list was loaded looks the file up (one ``stat``) without hashing it again, and a file
edited since is read again.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from functools import lru_cache
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from tower.spec.parts import InputImage

MAX_IMAGE_BYTES = 50 * 1024 * 1024


class ImageError(ValueError):
    """An input image that cannot be used; the message names the file and what is wrong."""


def image_path(text: str, folder: Path) -> Path:
    """Where the image ``text`` names: absolute as written, or under ``folder``."""
    return Path(os.path.abspath(folder / text))


def read_image(path: str | Path) -> InputImage:
    """The image at ``path`` (made absolute), checked and hashed, from the cache if unchanged.

    Raises:
        ImageError: the file is missing, not a regular file, too large or not an image.
    """
    where = Path(os.path.abspath(path))
    try:
        info = where.stat()
    except FileNotFoundError:
        raise ImageError(f"missing file {where}") from None
    except NotADirectoryError:
        raise ImageError(f"missing file {where} (a parent is not a folder)") from None
    except PermissionError:
        raise ImageError(f"permission denied: {where}") from None
    if stat.S_ISDIR(info.st_mode):
        raise ImageError(f"is a folder, not an image file: {where}")
    if not stat.S_ISREG(info.st_mode):
        raise ImageError(f"not a regular file: {where}")
    if info.st_size > MAX_IMAGE_BYTES:
        raise ImageError(f"larger than {MAX_IMAGE_BYTES // 2**20} MB "
                         f"({info.st_size / 2**20:.0f} MB): {where}")
    return _identify(str(where), info.st_size, info.st_mtime_ns)


@lru_cache(maxsize=4096)
def _identify(path: str, size: int, mtime_ns: int) -> InputImage:
    """Hash and decode one version of a file; ``size`` and ``mtime_ns`` key the cache."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_IMAGE_BYTES + 1)
    except OSError as err:
        raise ImageError(f"cannot read {path}: {err.strerror or err}") from None
    if len(data) > MAX_IMAGE_BYTES:  # grew since the stat
        raise ImageError(f"larger than {MAX_IMAGE_BYTES // 2**20} MB: {path}")
    width, height, kind = _decode(path, data)
    suffix = Path(path).suffix.lower() or f".{kind.lower()}"
    return InputImage(path=path, sha256=hashlib.sha256(data).hexdigest(), width=width,
                      height=height, suffix=suffix)


def _decode(path: str, data: bytes) -> tuple[int, int, str]:
    """Width, height and format of an image Pillow can read whole, or an ImageError."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            kind = image.format or "png"
            image.verify()
    except UnidentifiedImageError:
        raise ImageError(f"not an image: {path}") from None
    except Image.DecompressionBombError:
        raise ImageError(f"image has too many pixels: {path}") from None
    except Exception as err:  # Pillow's decoders raise many kinds
        raise ImageError(f"damaged image: {path} ({err})") from None
    if width < 1 or height < 1:
        raise ImageError(f"image has no pixels: {path}")
    return width, height, kind
