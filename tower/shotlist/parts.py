"""The production parts as the studio writes them: LoRAs, layouts, line art, hires, upscale.

The input side of :mod:`tower.spec.parts`. These pydantic models check ranges and
shorthands with the shot list's wording (every problem names its field); ``spec()``
turns each into the frozen spec a :class:`~tower.spec.takes.ResolvedTake` carries.
Image fields hold the path text here; the loader reads and checks the file
(:mod:`tower.shotlist.images`) and resolution turns it into an
:class:`~tower.spec.parts.InputImage`.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from tower.shotlist.errors import Number, Whole, suggest
from tower.spec.parts import (
    LORA_STRENGTH_MAX,
    LORA_STRENGTH_MIN,
    HiresSpec,
    LoraSpec,
    UpscaleSpec,
)

# A file name on the ComfyUI server (or a path on the studio's disk); stray spaces from
# a spreadsheet are not part of it.
FileName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
LoraStrength = Annotated[Number, Field(ge=LORA_STRENGTH_MIN, le=LORA_STRENGTH_MAX)]

DEFAULT_LAYOUT_DENOISE = 0.6
CONTROL_STRENGTH_MAX = 10.0
# LatentUpscaleBy's upscale_method choices in ComfyUI.
HIRES_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "bislerp")


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Strengths(_Part):
    """A LoRA's strengths: ``strength`` sets both, or each on its own (CLIP follows the UNet)."""

    strength: LoraStrength | None = None
    strength_model: LoraStrength | None = None
    strength_clip: LoraStrength | None = None

    @field_validator("strength_model", "strength_clip")
    @classmethod
    def _not_with_strength(cls, value: float | None, info: ValidationInfo) -> float | None:
        if value is not None and info.data.get("strength") is not None:
            raise ValueError("give strength, or strength_model and strength_clip, not both")
        return value

    def strengths(self) -> tuple[float, float]:
        """``(strength_model, strength_clip)`` with the defaults applied (1.0, CLIP = UNet)."""
        model = _first(self.strength_model, self.strength, 1.0)
        return model, _first(self.strength_clip, self.strength, model)


def _first(*values: float | None) -> float:
    return float(next(value for value in values if value is not None))


class PresetLora(_Strengths):
    """A style LoRA of a preset, chained after the shot's characters."""

    name: FileName

    def spec(self) -> LoraSpec:
        return LoraSpec(self.name, *self.strengths())


def _trigger_words(value: Any) -> Any:
    """``"aoi, blue hair"`` or ``["aoi", "blue hair"]`` -> ``("aoi", "blue hair")``.

    Anything else is returned as is, for pydantic to report with its position.
    """
    items = [value] if isinstance(value, str) else value
    if isinstance(items, list | tuple) and all(isinstance(item, str) for item in items):
        return tuple(word.strip() for item in items for word in item.split(",") if word.strip())
    return value


class Character(_Strengths):
    """A character: its LoRA, strengths and the trigger words that call it up in a prompt."""

    lora: FileName
    trigger: tuple[str, ...] = ()

    _trigger = field_validator("trigger", mode="before")(_trigger_words)

    def spec(self) -> LoraSpec:
        return LoraSpec(self.lora, *self.strengths())


def _image_only(value: Any) -> Any:
    """The short form ``layout: layouts/sh020.png`` is ``{image: layouts/sh020.png}``."""
    return {"image": value} if isinstance(value, str) else value


class Layout(_Part):
    """A layout frame the take starts from (img2img) instead of pure noise."""

    image: FileName
    denoise: Number = Field(default=DEFAULT_LAYOUT_DENOISE, gt=0.0, le=1.0)

    _short = model_validator(mode="before")(_image_only)


class Control(_Part):
    """Line art (or another hint) through a ControlNet; ``model`` may come from the defaults."""

    image: FileName
    model: FileName | None = None
    strength: Number = Field(default=1.0, ge=0.0, le=CONTROL_STRENGTH_MAX)
    start: Number = Field(default=0.0, ge=0.0, le=1.0)
    end: Number = Field(default=1.0, ge=0.0, le=1.0)

    _short = model_validator(mode="before")(_image_only)

    @model_validator(mode="after")
    def _start_before_end(self) -> Control:
        if self.start >= self.end:
            raise ValueError(f"start must be less than end (got start {self.start}, "
                             f"end {self.end})")
        return self


class Hires(_Part):
    """A second sampling pass on the latent upscaled by ``scale``."""

    scale: Number = Field(gt=1.0, le=4.0)
    denoise: Number = Field(gt=0.0, le=1.0)
    steps: Whole = Field(ge=1, le=10000)
    method: str = HIRES_METHODS[0]

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        if value not in HIRES_METHODS:
            raise ValueError(f"must be one of {', '.join(HIRES_METHODS)} (got {value!r})"
                             + suggest(value, HIRES_METHODS))
        return value

    def spec(self) -> HiresSpec:
        return HiresSpec(self.scale, self.denoise, self.steps, self.method)


class Upscale(_Part):
    """An upscale model run on the decoded image; ``scale`` is what the model does."""

    model: FileName
    scale: Whole = Field(default=2, ge=1)

    def spec(self) -> UpscaleSpec:
        return UpscaleSpec(self.model, self.scale)
