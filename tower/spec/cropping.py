"""Input images of another aspect than their take: centre-cropped, so warned about.

Neither ComfyUI's img2img scaling (the graph's ImageScale with ``crop: center``) nor a
ControlNet (recorded: a 96x64 hint on a 64x64 latent equals its pre-cropped centre)
stretches an image; both keep the centre and lose the edges, which may cut off what
the layout placed there. A plan says so before anything renders.
"""

from __future__ import annotations

from collections.abc import Iterable

from tower.spec.takes import ResolvedTake

# Share of an image lost to the crop below which nothing is said.
ASPECT_TOLERANCE = 0.01


def crop_fraction(image: tuple[int, int], frame: tuple[int, int]) -> float:
    """The share of ``image`` lost when it is scaled to cover ``frame`` and centre-cropped."""
    ours, theirs = image[0] / image[1], frame[0] / frame[1]
    return 1 - min(ours, theirs) / max(ours, theirs)


_CROPPED_BY = {
    "layout": "it will be scaled to cover the take and centre-cropped",
    "control": "ControlNet will centre-crop the hint to the take's aspect",
}


def aspect_warnings(takes: Iterable[ResolvedTake]) -> list[str]:
    """One warning per shot and input image whose aspect ratio is not the take's.

    Neither ComfyUI's img2img scaling nor a ControlNet stretches an image: both keep the
    centre and lose the edges, which may cut off what the layout placed there.
    """
    warnings: list[str] = []
    seen: set[tuple[object, ...]] = set()
    for take in takes:
        control = take.control.image if take.control is not None else None
        for role, image in (("layout", take.init_image), ("control", control)):
            if image is None:
                continue
            key = (take.episode, take.shot_id, role, image.path, take.width, take.height)
            frame = (take.width, take.height)
            if key in seen or crop_fraction((image.width, image.height), frame) <= ASPECT_TOLERANCE:
                continue
            seen.add(key)
            warnings.append(f"{take.episode} shot {take.shot_id}: {role} image {image.path} is "
                            f"{image.width}x{image.height} but the take is "
                            f"{take.width}x{take.height}; {_CROPPED_BY[role]}")
    return warnings
