"""What a simulated image shows: small descriptions of pixels, drawn on demand.

Nodes pass these descriptions instead of tensors. Each is a frozen value, so equal
inputs give equal descriptions and so equal pixels, and a take's pixels never depend on
the batch it was rendered in (ComfyUI's per-index noise, facts 14-16 of the production
recordings). Drawing is cheap: 8x8 colour blocks for the noise a sampler starts from,
then whatever a person should see was used: the init image blended in (img2img), the
ControlNet hint's lines in colour, a labelled band per LoRA.

Where ComfyUI's pixels depend on an input image, the description depends on that
image's *pixels* (:func:`pixel_digest`), not on its file, so a 96x64 hint and the same
hint cropped beforehand give identical images, as recorded (fact 19).
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from PIL import Image, ImageDraw, ImageFilter, ImageFont

LATENT_SCALE = 8
RESAMPLE = {"nearest-exact": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
            "area": Image.Resampling.BOX, "bicubic": Image.Resampling.BICUBIC,
            "lanczos": Image.Resampling.LANCZOS, "bislerp": Image.Resampling.BILINEAR}
HINT_COLOURS = ((0, 255, 255), (255, 0, 255), (255, 255, 0))


@dataclass(frozen=True)
class Lora:
    """A LoRA applied to a model or a CLIP, with its (non-zero) strength."""

    name: str
    strength: float


@dataclass(frozen=True)
class Control:
    """A ControlNet applied to a conditioning (ControlNetApplyAdvanced)."""

    model: str
    hint: Picture
    strength: float
    start: float
    end: float


@dataclass(frozen=True)
class Loaded:
    """An image read from a file (LoadImage): its RGB pixels."""

    width: int
    height: int
    data: bytes = b""


@dataclass(frozen=True)
class Crop:
    source: Picture
    left: int
    top: int
    width: int
    height: int


@dataclass(frozen=True)
class Resize:
    source: Picture
    width: int
    height: int
    method: str = "nearest-exact"


@dataclass(frozen=True)
class Upscaled:
    """An upscale model's output (ImageUpscaleWithModel)."""

    source: Picture
    model: str
    scale: int

    @property
    def width(self) -> int:
        return self.source.width * self.scale

    @property
    def height(self) -> int:
        return self.source.height * self.scale


@dataclass(frozen=True)
class Sampled:
    """A sampler's result for one noise index, as decoded by the VAE.

    ``base`` is what the sampler started from (an encoded init image, or an upscaled
    earlier pass); ``denoise`` says how much of it is replaced by new noise.
    """

    checkpoint: str
    text: str
    seed: int
    index: int
    width: int
    height: int
    loras: tuple[Lora, ...] = ()
    clip_loras: tuple[Lora, ...] = ()
    controls: tuple[Control, ...] = ()
    base: Picture | None = None
    denoise: float = 1.0


Picture = Loaded | Crop | Resize | Upscaled | Sampled


def render(picture: Picture) -> Image.Image:
    """The RGB image; a new object each call, free to draw on."""
    if isinstance(picture, Loaded):
        return Image.frombytes("RGB", (picture.width, picture.height), picture.data)
    if isinstance(picture, Crop):
        box = (picture.left, picture.top, picture.left + picture.width,
               picture.top + picture.height)
        return render(picture.source).crop(box)
    if isinstance(picture, Resize):
        return _resize(render(picture.source), picture.width, picture.height, picture.method)
    if isinstance(picture, Upscaled):
        return _upscaled(picture)
    return _sampled(picture)


@lru_cache(maxsize=256)
def pixel_digest(picture: Picture) -> str:
    """sha256 of the picture's size and RGB pixels: equal pixels, equal digest."""
    data = picture.data if isinstance(picture, Loaded) else render(picture).tobytes()
    size = f"{picture.width}x{picture.height}:".encode()
    return hashlib.sha256(size + data).hexdigest()


def loaded(image: Image.Image) -> Loaded:
    rgb = image.convert("RGB")
    return Loaded(rgb.width, rgb.height, rgb.tobytes())


def center_box(width: int, height: int, to_width: int, to_height: int) -> tuple[int, int, int, int]:
    """(left, top, width, height) of ComfyUI's ``common_upscale`` centre crop: the
    largest centred box with the target's aspect ratio, rounded as ComfyUI rounds."""
    old_aspect, new_aspect = width / height, to_width / to_height
    x = y = 0
    if old_aspect > new_aspect:
        x = round((width - width * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        y = round((height - height * (old_aspect / new_aspect)) / 2)
    return x, y, width - 2 * x, height - 2 * y


def fit(picture: Picture, width: int, height: int, method: str = "nearest-exact",
        crop: str = "center") -> Picture:
    """``picture`` scaled to ``width`` x ``height`` (ImageScale, and a ControlNet hint at
    sampling time), centre-cropped to that aspect first when ``crop`` is ``"center"``."""
    source = picture
    if crop == "center":
        left, top, w, h = center_box(picture.width, picture.height, width, height)
        if (w, h) != (picture.width, picture.height):
            source = Crop(picture, left, top, w, h)
    if (source.width, source.height) == (width, height):
        return source
    return Resize(source, width, height, method)


def _resize(image: Image.Image, width: int, height: int, method: str) -> Image.Image:
    return image.resize((max(1, width), max(1, height)),
                        RESAMPLE.get(method, Image.Resampling.NEAREST))


def _upscaled(picture: Upscaled) -> Image.Image:
    image = render(picture.source).resize((picture.width, picture.height),
                                          Image.Resampling.NEAREST)
    shift = 1 + hashlib.sha256(picture.model.encode()).digest()[0] % 3
    return image.point(lambda v: min(255, v + shift))  # another model, other pixels


def _noise_key(s: Sampled, hints: list[str]) -> bytes:
    """Everything that decides the noise pattern; plain txt2img keeps its old key."""
    key: list[Any] = [s.checkpoint, s.text, s.seed, s.index, s.width, s.height]
    extras: dict[str, Any] = {}
    if s.loras:
        extras["loras"] = [[lora.name, lora.strength] for lora in s.loras]
    if s.clip_loras:
        extras["clip_loras"] = [[lora.name, lora.strength] for lora in s.clip_loras]
    if s.controls:
        extras["controls"] = [[c.model, digest, c.strength, c.start, c.end]
                              for c, digest in zip(s.controls, hints, strict=True)]
    if s.base is not None:
        extras["base"] = pixel_digest(s.base)
    if s.denoise != 1.0:
        extras["denoise"] = s.denoise
    if extras:
        key.append(extras)
    return hashlib.sha256(json.dumps(key).encode("utf-8")).digest()


def _sampled(s: Sampled) -> Image.Image:
    prepared = [fit(c.hint, s.width, s.height) for c in s.controls]
    digest = _noise_key(s, [pixel_digest(p) for p in prepared])
    cols, rows = max(1, s.width // LATENT_SCALE), max(1, s.height // LATENT_SCALE)
    rng = random.Random(digest)
    cells = Image.frombytes("RGB", (cols, rows), rng.randbytes(cols * rows * 3))
    image = cells.resize((s.width, s.height), Image.Resampling.NEAREST)
    if s.base is not None:
        base = render(s.base)
        if base.size != image.size:
            base = base.resize(image.size, Image.Resampling.NEAREST)
        # Squared: at img2img's usual 0.4-0.7 the layout stays readable, as it does on
        # a real sampler, which keeps the composition far longer than the noise ratio says.
        image = Image.blend(base, image, min(1.0, max(0.0, s.denoise)) ** 2)
    for i, (control, hint) in enumerate(zip(s.controls, prepared, strict=True)):
        image = _overlay_hint(image, render(hint), control, HINT_COLOURS[i % 3])
    _draw_loras(image, s.loras, s.clip_loras)
    return image


def _overlay_hint(image: Image.Image, hint: Image.Image, control: Control,
                  colour: tuple[int, int, int]) -> Image.Image:
    """Paint the hint's bright lines over the image, more opaque with more strength and
    a longer start..end span."""
    weight = min(1.0, control.strength) * max(0.0, control.end - control.start)
    mask = hint.convert("L").point(lambda v: 255 if v > 127 else 0)
    width = min(image.size) // 128 * 2 + 1  # lines a few pixels wide, visible on a sheet
    if width > 1:
        mask = mask.filter(ImageFilter.MaxFilter(width))
    painted = Image.blend(image, Image.new("RGB", image.size, colour), max(0.0, weight))
    dimmed = Image.blend(image, Image.new("RGB", image.size), 0.5 * max(0.0, weight))
    return Image.composite(painted, dimmed, mask)


def _draw_loras(image: Image.Image, loras: tuple[Lora, ...],
                clip_loras: tuple[Lora, ...]) -> None:
    """A band per LoRA name across the top, in a colour of its own, labelled with the
    name and its model/CLIP strengths (``char-aoi-v3 0.8/0.8``)."""
    names = list(dict.fromkeys([lora.name for lora in loras + clip_loras]))
    if not names:
        return
    model = {lora.name: lora.strength for lora in loras}
    clip = {lora.name: lora.strength for lora in clip_loras}
    band = max(6, image.height // 10)
    draw = ImageDraw.Draw(image)
    font = _font(band - 2)
    for i, name in enumerate(names):
        top = i * band
        colour = _colour(name)
        draw.rectangle((0, top, image.width - 1, top + band - 1), fill=colour)
        label = f"{name.removesuffix('.safetensors')} {model.get(name, 0):g}/{clip.get(name, 0):g}"
        ink = (0, 0, 0) if sum(colour) > 380 else (255, 255, 255)
        draw.text((1, top), label, fill=ink, font=font)


def _colour(name: str) -> tuple[int, int, int]:
    r, g, b = hashlib.sha256(name.encode("utf-8")).digest()[:3]
    return (r | 0x40, g | 0x40, b | 0x40)


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=max(6, size))
    except (OSError, ValueError):
        return ImageFont.load_default()
