"""What a simulated image shows: small descriptions of pixels, drawn on demand.

Nodes pass these descriptions instead of tensors. Each is a frozen value, so equal
inputs give equal descriptions and so equal pixels, and a take's pixels never depend on
the batch it was rendered in (ComfyUI's per-index noise, facts 14-16 of the production
recordings). Drawing is cheap and made to be read on a contact sheet: a calm backdrop
(a two-colour gradient and a few soft shapes, all chosen by a digest of the sampler's
inputs, so takes and prompts look plainly different), then whatever a person should see
was used: the init image blended in (img2img), the ControlNet hint's lines in colour, a
caption naming the take (the prompt's first words, take, seed, size, steps, checkpoint),
and a labelled band per LoRA. Sizes are fractions of the image, so a hires pass or an
upscale keeps everything in proportion.

Where ComfyUI's pixels depend on an input image, the description depends on that
image's *pixels* (:func:`pixel_digest`), not on its file, so a 96x64 hint and the same
hint cropped beforehand give identical images, as recorded (fact 19).
"""

from __future__ import annotations

import colorsys
import hashlib
import json
import math
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from PIL import Image, ImageDraw, ImageFilter, ImageFont

LATENT_SCALE = 8
RESAMPLE = {"nearest-exact": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
            "area": Image.Resampling.BOX, "bicubic": Image.Resampling.BICUBIC,
            "lanczos": Image.Resampling.LANCZOS, "bislerp": Image.Resampling.BILINEAR}
HINT_COLOURS = ((0, 255, 255), (255, 0, 255), (255, 255, 0))
BACKDROP_SCALE = 4  # shapes drawn at a quarter of the size, then smoothed up
SHAPES = 3
CAPTION_TEXT = 1 / 20  # font size as a share of the image's longer side
PROMPT_LINES = 3
PANEL = (0, 0, 0, 165)  # the caption's backing: dark, but traces still show through
INK = (250, 250, 250)


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
    steps: int | None = None


Picture = Loaded | Crop | Resize | Upscaled | Sampled


def render(picture: Picture) -> Image.Image:
    """The RGB image; a new object each call, free to draw on."""
    return _draw(picture, labelled=True)


def _draw(picture: Picture, labelled: bool) -> Image.Image:
    """The image, with or without the caption and LoRA bands of the sampled pictures in
    it: a sampler starting from an earlier pass (hires) blends that pass in unlabelled
    and labels the result, so no faded caption shows under the new one."""
    if isinstance(picture, Loaded):
        return Image.frombytes("RGB", (picture.width, picture.height), picture.data)
    if isinstance(picture, Crop):
        box = (picture.left, picture.top, picture.left + picture.width,
               picture.top + picture.height)
        return _draw(picture.source, labelled).crop(box)
    if isinstance(picture, Resize):
        return _resize(_draw(picture.source, labelled), picture.width, picture.height,
                       picture.method)
    if isinstance(picture, Upscaled):
        return _upscaled(picture, labelled)
    return _sampled(picture, labelled)


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


def _upscaled(picture: Upscaled, labelled: bool) -> Image.Image:
    image = _draw(picture.source, labelled).resize((picture.width, picture.height),
                                                   Image.Resampling.NEAREST)
    shift = 1 + hashlib.sha256(picture.model.encode()).digest()[0] % 3
    return image.point(lambda v: min(255, v + shift))  # another model, other pixels


def _noise_key(s: Sampled, hints: list[str]) -> bytes:
    """Everything that decides the backdrop: what changes a real render's composition.
    Steps are left out (more steps refine the same composition; the caption names
    them); plain txt2img keeps the six-value key it has always had."""
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


def backdrop(s: Sampled) -> Image.Image:
    """What a sampled image shows before any trace: a soft two-colour gradient and a
    few large translucent shapes, their colours and places drawn from the digest of
    everything that decides the noise (:func:`_noise_key`)."""
    hints = [pixel_digest(fit(c.hint, s.width, s.height)) for c in s.controls]
    rng = random.Random(_noise_key(s, hints))
    hue = rng.random()
    first, second = _tone(hue, rng), _tone(hue + 0.2 + 0.3 * rng.random(), rng)
    small = (max(1, s.width // BACKDROP_SCALE), max(1, s.height // BACKDROP_SCALE))
    image = _gradient(first, second, rng.random() * 2 * math.pi, small)
    draw = ImageDraw.Draw(image, "RGBA")
    short = min(small)
    for _ in range(SHAPES):
        x, y = rng.random() * small[0], rng.random() * small[1]
        r = short * (0.15 + 0.25 * rng.random())
        colour = _tone(hue + rng.random(), rng)
        draw.ellipse((x - r, y - r * (0.6 + 0.8 * rng.random()), x + r, y + r),
                     fill=(*colour, 150))
    image = image.filter(ImageFilter.BoxBlur(1))  # soft edges once scaled up
    return image.resize((s.width, s.height), Image.Resampling.BILINEAR)


def caption(s: Sampled) -> tuple[str, str, tuple[str, ...]]:
    """(headline, prompt, facts) a sampled image is captioned with: ``take <index>``,
    the positive prompt (wrapped and cut when drawn), and one line each for the seed
    and size and for the checkpoint's short name and the steps."""
    checkpoint = s.checkpoint.replace("\\", "/").rpartition("/")[2]
    model = checkpoint.removesuffix(".safetensors").removesuffix(".ckpt") or "?"
    steps = "" if s.steps is None else f" · {s.steps} steps"
    return (f"take {s.index}", " ".join(s.text.split()),
            (f"seed {s.seed} · {s.width}x{s.height}", f"{model}{steps}"))


def text_size(width: int, height: int) -> int:
    """Font size for labels on a ``width`` x ``height`` image: a share of the longer
    side, as a thumbnail shrinks the longer side to fit, but at most a sixteenth of the
    height so a wide image keeps most of its picture."""
    return max(6, round(min(max(width, height) * CAPTION_TEXT, height / 16)))


def draw_caption(image: Image.Image, headline: str, prompt: str,
                 facts: tuple[str, ...]) -> None:
    """Draw a caption block in the bottom-left corner, on a translucent dark panel:
    the headline a size larger, then at most :data:`PROMPT_LINES` lines of the prompt,
    then the facts, sized by :func:`text_size`."""
    size = text_size(image.width, image.height)
    small, large = _font(size), _font(round(size * 1.5))
    margin = max(1, size // 3)
    room = image.width - 4 * margin
    lines = [(headline, large, round(size * 1.8)),
             *((line, small, round(size * 1.2)) for line in _wrap(prompt, small, room)),
             *((fact, small, round(size * 1.2)) for fact in facts)]
    width = min(room, max(round(font.getlength(text)) for text, font, _ in lines))
    top = image.height - 3 * margin - sum(height for *_, height in lines)
    draw = ImageDraw.Draw(image, "RGBA")
    draw.rectangle((margin, top, 3 * margin + width, image.height - margin), fill=PANEL)
    y = top + margin
    for text, font, height in lines:
        draw.text((2 * margin, y), text, fill=INK, font=font)
        y += height


# Fault injection through the prompt: a sampled picture whose text holds
# ``[sim:<colour>]`` comes out a single flat colour (what a collapsed sampler or a NaN in
# the VAE gives), ``[sim:<colour>@<k>]`` only at noise index k, so a re-render with
# the next noise index is clean. Rides in the prompt so it reaches the picture through
# any graph and batch split, and takes in the same batch can differ.
FLAT_FAULTS = {"black": (0, 0, 0), "white": (255, 255, 255), "grey": (128, 128, 128)}
_FLAT_FAULT = re.compile(r"\[sim:(black|white|grey)(?:@(\d+))?\]")


def flat_fault(s: Sampled) -> tuple[int, int, int] | None:
    """The colour a ``[sim:...]`` marker in ``s.text`` asks for at ``s.index``, if any."""
    for match in _FLAT_FAULT.finditer(s.text):
        if match.group(2) is None or int(match.group(2)) == s.index:
            return FLAT_FAULTS[match.group(1)]
    return None


def _sampled(s: Sampled, labelled: bool) -> Image.Image:
    flat = flat_fault(s)
    if flat is not None:
        return Image.new("RGB", (s.width, s.height), flat)
    image = backdrop(s)
    if s.base is not None:
        base = _draw(s.base, labelled=False)
        if base.size != image.size:
            base = base.resize(image.size, Image.Resampling.NEAREST)
        # Squared: at img2img's usual 0.4-0.7 the layout stays readable, as it does on
        # a real sampler, which keeps the composition far longer than the noise ratio says.
        image = Image.blend(base, image, min(1.0, max(0.0, s.denoise)) ** 2)
    for i, control in enumerate(s.controls):
        hint = render(fit(control.hint, s.width, s.height))
        image = _overlay_hint(image, hint, control, HINT_COLOURS[i % 3])
    if labelled:
        draw_caption(image, *caption(s))
        _draw_loras(image, s.loras, s.clip_loras)
    return image


def _tone(hue: float, rng: random.Random) -> tuple[int, int, int]:
    """A muted colour of ``hue``: mid saturation and brightness, so lines and white
    text stay readable on it."""
    rgb = colorsys.hsv_to_rgb(hue % 1.0, 0.4 + 0.3 * rng.random(), 0.55 + 0.3 * rng.random())
    r, g, b = (round(255 * v) for v in rgb)
    return r, g, b


def _gradient(first: tuple[int, int, int], second: tuple[int, int, int], angle: float,
              size: tuple[int, int]) -> Image.Image:
    """``first`` to ``second`` along ``angle``: four corners, bilinearly filled."""
    corners = Image.new("RGB", (2, 2))
    dx, dy = math.cos(angle), math.sin(angle)
    for x in (0, 1):
        for y in (0, 1):
            t = ((2 * x - 1) * dx + (2 * y - 1) * dy + 1.5) / 3.0
            t = min(1.0, max(0.0, t))
            corners.putpixel((x, y), tuple(round(a + (b - a) * t)
                                           for a, b in zip(first, second, strict=True)))
    return corners.resize(size, Image.Resampling.BILINEAR)


def _wrap(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
          width: int) -> list[str]:
    """``text`` in at most :data:`PROMPT_LINES` lines of ``width``, cut with an ellipsis."""
    lines: list[str] = []
    space, used = font.getlength(" "), 0.0
    for word in text.split():  # words measured one by one: kerning across them is noise
        length = font.getlength(word)
        if lines and used + space + length <= width:
            lines[-1], used = f"{lines[-1]} {word}", used + space + length
        elif len(lines) < PROMPT_LINES:
            lines.append(word)
            used = length
        else:
            lines[-1] = _cut(lines[-1], font, width)
            break
    return lines


def _cut(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int) -> str:
    while len(text) > 1 and font.getlength(text + "…") > width:
        text = text[:-1].rstrip(" ,")
    return text + "…"


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
    size = text_size(image.width, image.height)
    band, margin = round(size * 1.4), max(1, size // 3)
    draw = ImageDraw.Draw(image)
    font = _font(size)
    for i, name in enumerate(names):
        top = i * band
        colour = _colour(name)
        draw.rectangle((0, top, image.width - 1, top + band - 1), fill=colour)
        label = f"{name.removesuffix('.safetensors')} {model.get(name, 0):g}/{clip.get(name, 0):g}"
        ink = (0, 0, 0) if sum(colour) > 380 else (255, 255, 255)
        draw.text((margin, top + round(size * 0.15)), label, fill=ink, font=font)


def _colour(name: str) -> tuple[int, int, int]:
    r, g, b = hashlib.sha256(name.encode("utf-8")).digest()[:3]
    return (r | 0x40, g | 0x40, b | 0x40)


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=max(6, size))
    except (OSError, ValueError):
        return ImageFont.load_default()
