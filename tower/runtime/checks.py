"""Output checks: a cheap look at each downloaded image for the failures a sampler hides.

A collapsed sampler, a broken VAE or a NaN in the latent still gives ComfyUI a "success"
and a valid PNG: all one colour, black, white. Such an image is recorded with status
``suspect`` (kept, flagged on the contact sheet, counted in the run summary and the
daily report) instead of passing for a render until someone opens it.

Cheap: the image is decoded once, reduced by an integer factor to at most
:data:`THUMB_SIDE` pixels a side (``Image.reduce``, a box filter), and the statistics
are taken on that thumbnail. The size check needs no decode at all: a PNG far smaller
than its batch siblings (same settings, same size) is almost always a flat image.

Thresholds (on 8-bit luminance of the thumbnail):

- all one colour: every RGB band spans at most :data:`FLAT_SPAN` levels;
- near-black: at least :data:`DARK_SHARE` of the pixels at or below :data:`DARK_LEVEL`;
- near-white: at least :data:`DARK_SHARE` of the pixels at or above :data:`LIGHT_LEVEL`;
- tiny: under :data:`SMALL_RATIO` of the median size of the other images of its batch.
"""

from __future__ import annotations

import io
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from PIL import Image, UnidentifiedImageError

ImageStatus = Literal["ok", "suspect"]
IMAGE_STATUSES: tuple[ImageStatus, ...] = ("ok", "suspect")

THUMB_SIDE = 128
FLAT_SPAN = 2
DARK_LEVEL = 16
LIGHT_LEVEL = 239
DARK_SHARE = 0.98
SMALL_RATIO = 0.2


@dataclass(frozen=True)
class Verdict:
    """The check's result for one image: ``ok``, or ``suspect`` with the reasons."""

    status: ImageStatus
    reason: str | None = None

    @property
    def suspect(self) -> bool:
        return self.status == "suspect"


OK = Verdict("ok")


def _thumbnail(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (THUMB_SIDE, THUMB_SIDE))  # a no-op for PNG, cheap for JPEG
        factor = max(1, max(image.size) // THUMB_SIDE)
        rgb = image.convert("RGB") if image.mode != "RGB" else image
        return rgb.reduce(factor) if factor > 1 else rgb.copy()


def pixel_reasons(data: bytes) -> list[str]:
    """What is wrong with the pixels of the image in ``data`` (empty when nothing is)."""
    try:
        thumb = _thumbnail(data)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        return [f"cannot be decoded ({type(err).__name__}: {err})"]
    reasons = []
    extrema = thumb.getextrema()
    if all(high - low <= FLAT_SPAN for low, high in extrema):
        colour = "#" + "".join(f"{(low + high) // 2:02x}" for low, high in extrema)
        reasons.append(f"all one colour ({colour})")
    histogram = thumb.convert("L").histogram()
    pixels = sum(histogram)
    if sum(histogram[:DARK_LEVEL + 1]) >= DARK_SHARE * pixels:
        reasons.append("near-black")
    elif sum(histogram[LIGHT_LEVEL:]) >= DARK_SHARE * pixels:
        reasons.append("near-white")
    return reasons


def size_reason(size: int, sibling_sizes: Sequence[int]) -> str | None:
    """Why a file of ``size`` bytes is suspect next to its siblings' sizes, if it is."""
    if not sibling_sizes:
        return None
    median = statistics.median(sibling_sizes)
    if size < SMALL_RATIO * median:
        return f"file {size} bytes, under {SMALL_RATIO:.0%} of its siblings' median {median:.0f}"
    return None


def verdicts(pixel_findings: Sequence[Sequence[str]], sizes: Sequence[int]) -> list[Verdict]:
    """One verdict per image of a batch (same order), from each image's
    :func:`pixel_reasons` and its file size against the other images of the batch."""
    out = []
    for i, found in enumerate(pixel_findings):
        reasons = list(found)
        small = size_reason(sizes[i], [*sizes[:i], *sizes[i + 1:]])
        if small:
            reasons.append(small)
        out.append(Verdict("suspect", "; ".join(reasons)) if reasons else OK)
    return out


def check_batch(images: Sequence[bytes]) -> list[Verdict]:
    """:func:`verdicts` of a batch's images held in memory."""
    return verdicts([pixel_reasons(data) for data in images], [len(data) for data in images])
