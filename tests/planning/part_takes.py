"""Production parts for planning tests: LoRAs, layouts, ControlNet, hires, upscale."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from tower.spec.parts import ControlSpec, HiresSpec, InputImage, LoraSpec, UpscaleSpec
from tower.spec.takes import ResolvedTake

REN = "char-ren-v2.safetensors"
CEL = "style-cel-v1.safetensors"
LINEART = "layout-lineart-sd15.safetensors"
X2 = "anime-x2-compact.safetensors"
LAYOUT_IMAGE = InputImage(path="/studio/ep02/sh010_layout.png", sha256="a" * 64,
                          width=768, height=768)
LINEART_IMAGE = InputImage(path="/studio/ep02/sh010_lineart.png", sha256="b" * 64,
                           width=768, height=768)
HIRES = HiresSpec(scale=1.5, denoise=0.5, steps=10)
UPSCALE = UpscaleSpec(model=X2, scale=2)

# Each part as the take fields it sets.
PARTS: dict[str, dict[str, object]] = {
    "lora": {"loras": (LoraSpec(REN, 0.8, 0.8),)},
    "img2img": {"init_image": LAYOUT_IMAGE, "denoise": 0.6},
    "control": {"control": ControlSpec(image=LINEART_IMAGE, model=LINEART, strength=0.9)},
    "hires": {"hires": HIRES},
    "upscale": {"upscale": UPSCALE},
}


def with_parts(take: ResolvedTake, names: Iterable[str]) -> ResolvedTake:
    """``take`` with the named parts of :data:`PARTS` added."""
    changes: dict[str, object] = {}
    for name in names:
        changes |= PARTS[name]
    return replace(take, **changes)  # type: ignore[arg-type]


def inventory(*files: tuple[str, str]) -> dict[str, frozenset[str]]:
    """A server's model files from ``(folder, name)`` pairs."""
    folders: dict[str, set[str]] = {}
    for folder, name in files:
        folders.setdefault(folder, set()).add(name)
    return {folder: frozenset(names) for folder, names in folders.items()}
