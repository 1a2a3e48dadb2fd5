"""Quality presets: the render settings a shot is drawn at.

The three built-in presets come from the studio's optimisation guide. A presets file
(YAML) may override any field of a built-in preset or add new ones, optionally
extending an existing preset. Presets are plain data: render keys are computed from
the resolved values (steps, sampler, size...), never from a preset's name, so editing a
preset changes the keys of exactly the takes whose pixels would change.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tower.errors import InputError, Problem, format_pydantic_error
from tower.names import check_name

DRAFT_CHECKPOINT = "anime-draft-sd15.safetensors"
FINAL_CHECKPOINT = "anime-final-sd15.safetensors"


class Preset(BaseModel):
    """Everything a preset fixes about a render, besides the prompt and the seed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    steps: int = Field(ge=1, le=10000)
    width: int = Field(ge=64, le=4096, multiple_of=8)
    height: int = Field(ge=64, le=4096, multiple_of=8)
    sampler: str = Field(min_length=1)
    scheduler: str = Field(min_length=1)
    cfg: float = Field(ge=0.0, le=100.0)
    checkpoint: str = Field(min_length=1)
    denoise: float = Field(default=1.0, gt=0.0, le=1.0)
    vae_tiled: bool = False
    vae_tile_size: int = Field(default=512, ge=64, le=4096, multiple_of=32)
    max_batch: int = Field(default=4, ge=1, le=64)
    description: str = ""

    @field_validator("name")
    @classmethod
    def _name_is_an_id(cls, value: str) -> str:
        return check_name(value)


# dpm_fast only takes sigma_min/sigma_max from the schedule (k-diffusion's
# sample_dpm_fast builds its own steps), so the scheduler barely matters for drafts;
# "normal" is ComfyUI's default and keeps the graph unsurprising to read.
BUILTIN_PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            name="draft", steps=8, width=512, height=512, sampler="dpm_fast",
            scheduler="normal", cfg=5.0, checkpoint=DRAFT_CHECKPOINT, max_batch=8,
            description="quick iterations, previews",
        ),
        Preset(
            name="standard", steps=15, width=768, height=768, sampler="dpmpp_2m",
            scheduler="karras", cfg=6.5, checkpoint=FINAL_CHECKPOINT, max_batch=4,
            description="production work",
        ),
        Preset(
            name="high", steps=25, width=1024, height=1024, sampler="dpmpp_2m_sde",
            scheduler="karras", cfg=7.5, checkpoint=FINAL_CHECKPOINT, max_batch=2,
            description="final outputs",
        ),
    )
}


class PresetOverride(BaseModel):
    """One entry of a presets file: any preset field, plus ``extends`` for new presets."""

    model_config = ConfigDict(extra="forbid")

    extends: str | None = None
    steps: int | None = None
    width: int | None = None
    height: int | None = None
    sampler: str | None = None
    scheduler: str | None = None
    cfg: float | None = None
    checkpoint: str | None = None
    denoise: float | None = None
    vae_tiled: bool | None = None
    vae_tile_size: int | None = None
    max_batch: int | None = None
    description: str | None = None


def apply_overrides(
    overrides: Mapping[str, Mapping[str, Any]],
    base: Mapping[str, Preset] = BUILTIN_PRESETS,
    source: str = "<presets>",
) -> dict[str, Preset]:
    """Return ``base`` with ``overrides`` applied, reporting every problem at once.

    A name that is already a preset is overridden field by field; a new name needs
    ``extends: <preset>`` or every required field.
    """
    presets = dict(base)
    problems: list[Problem] = []
    for name, raw in overrides.items():
        where = f"preset {name}"
        if not isinstance(raw, Mapping):
            problems.append(Problem(source, None, where, None, "must be a mapping of fields"))
            continue
        try:
            override = PresetOverride.model_validate(raw)
        except ValidationError as err:
            problems.extend(format_pydantic_error(err, source, where))
            continue
        fields = override.model_dump(exclude_none=True)
        parent_name = fields.pop("extends", None) or (name if name in presets else None)
        parent = presets.get(parent_name) if parent_name else None
        if parent_name and parent is None:
            problems.append(Problem(source, None, where, "extends",
                                    f"unknown preset {parent_name!r}; known: {sorted(presets)}"))
            continue
        merged = {**(parent.model_dump() if parent else {}), **fields, "name": name}
        try:
            presets[name] = Preset.model_validate(merged)
        except ValidationError as err:
            problems.extend(format_pydantic_error(err, source, where))
    if problems:
        raise InputError(problems)
    return presets


def load_presets(path: Path | None) -> dict[str, Preset]:
    """Built-in presets, overridden by the YAML file at ``path`` when given."""
    if path is None:
        return dict(BUILTIN_PRESETS)
    source = str(path)
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError([Problem(source, None, None, None, "file not found")]) from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise InputError([Problem(source, None, None, None, f"not valid YAML: {err}")]) from err
    if data is None:
        return dict(BUILTIN_PRESETS)
    if isinstance(data, Mapping) and "presets" in data:
        data = data["presets"]
    if not isinstance(data, Mapping):
        raise InputError([Problem(source, None, None, None,
                                  "must map preset names to their fields")])
    return apply_overrides(data, source=source)
