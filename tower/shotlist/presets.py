"""Quality presets: the render settings a shot is drawn at.

The three built-in presets come from the studio's optimisation guide. A presets file
(YAML) may override any field of a built-in preset or add new ones, optionally
extending an existing preset. Besides the sampling settings a preset may add style
LoRAs (chained after a shot's characters), a hires pass and an upscale model; the
built-in presets add none, so their takes stay plain txt2img. Presets are plain data:
render keys are computed from the resolved values (steps, sampler, size...), never from
a preset's name, so editing a preset changes the keys of exactly the takes whose pixels
would change.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tower.shotlist.documents import Document, parse, read_text
from tower.shotlist.errors import (
    InputError,
    Number,
    Problem,
    Whole,
    located_problems,
    suggest,
)
from tower.shotlist.names import check_name
from tower.shotlist.parts import Hires, PresetLora, Upscale

DRAFT_CHECKPOINT = "anime-draft-sd15.safetensors"
FINAL_CHECKPOINT = "anime-final-sd15.safetensors"


class Preset(BaseModel):
    """Everything a preset fixes about a render, besides the prompt and the seed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    steps: Whole = Field(ge=1, le=10000)
    width: Whole = Field(ge=64, le=4096, multiple_of=8)
    height: Whole = Field(ge=64, le=4096, multiple_of=8)
    sampler: str = Field(min_length=1)
    scheduler: str = Field(min_length=1)
    cfg: Number = Field(ge=0.0, le=100.0)
    checkpoint: str = Field(min_length=1)
    denoise: Number = Field(default=1.0, gt=0.0, le=1.0)
    vae_tiled: bool = False
    vae_tile_size: Whole = Field(default=512, ge=64, le=4096, multiple_of=32)
    max_batch: Whole = Field(default=4, ge=1, le=64)
    description: str = ""
    loras: tuple[PresetLora, ...] = ()
    hires: Hires | None = None
    upscale: Upscale | None = None
    # What a run does with an image the output check flags (tower.runtime.checks):
    # ``flag`` keeps it, indexed as suspect; ``rerender`` also renders the shot once more
    # at its next noise index (tower.runtime.retakes).
    on_suspect: Literal["flag", "rerender"] = "flag"
    # The presets file's ``models:`` table, (file name, revision), the same in every
    # preset of the file: the planning pipeline folds each revision into its file's
    # fingerprint (tower.comfyui.model_fingerprint). Set by the file, never per preset.
    model_revisions: tuple[tuple[str, str], ...] = ()

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


def apply_overrides(
    overrides: Mapping[str, Mapping[str, Any]],
    base: Mapping[str, Preset] = BUILTIN_PRESETS,
    source: str = "<presets>",
    doc: Document | None = None,
) -> dict[str, Preset]:
    """Return ``base`` with ``overrides`` applied, reporting every problem at once.

    A name that is already a preset is overridden field by field; a new name needs
    ``extends: <preset>`` (a built-in or one defined earlier in the file) or every
    required field. ``doc``, when given, supplies line numbers for the problems.
    """
    presets = dict(base)
    problems: list[Problem] = []
    for name, raw in overrides.items():
        line_of = _line_finder(doc, name)
        if not isinstance(name, str):  # YAML reads `1:` or `null:` as a number or None
            problems.append(Problem(source, line_of(), f"preset {name}", None,
                                    "preset names must be text; put it in quotes"))
            continue
        found = _override_one(name, raw, presets, source, line_of)
        if isinstance(found, Preset):
            presets[found.name] = found
        else:
            problems += found
    if problems:
        raise InputError(sorted(problems, key=lambda p: p.line or 0))
    return presets


# An entry of a presets file: any preset field but the name (its key), plus ``extends``.
_OVERRIDABLE = frozenset({"extends", *Preset.model_fields} - {"name", "model_revisions"})
_REQUIRED = tuple(name for name, info in Preset.model_fields.items()
                  if info.is_required() and name != "name")


LineOf = Callable[..., int | None]


def _override_one(name: str, raw: Any, presets: Mapping[str, Preset], source: str,
                  line_of: LineOf) -> Preset | list[Problem]:
    """The preset ``raw`` defines, or every problem with it, each on its field's line."""
    where = f"preset {name}"
    if not isinstance(raw, Mapping):
        return [Problem(source, line_of(), where, None, "must be a mapping of fields")]
    try:
        check_name(name)
    except ValueError as err:
        return [Problem(source, line_of(), where, None, f"preset name {err}")]
    problems = [Problem(source, line_of(key), where, str(key), "unknown field"
                        + suggest(key, _OVERRIDABLE - {"extends"}))
                for key in raw if key not in _OVERRIDABLE]
    fields = {k: v for k, v in raw.items() if k in _OVERRIDABLE and k != "extends"}
    parent_name = raw.get("extends") or (name if name in presets else None)
    parent = presets.get(parent_name) if isinstance(parent_name, str) else None
    if parent_name is not None and parent is None:
        problems.append(Problem(source, line_of("extends"), where, "extends",
                                f"unknown preset {parent_name!r}; "
                                f"known: {', '.join(sorted(presets))}"))
        return problems
    missing = [f for f in _REQUIRED if f not in fields] if parent is None else []
    if missing:
        problems.append(Problem(source, line_of(), where, None,
                                "a new preset needs 'extends: <preset>' or every field; "
                                f"missing: {', '.join(missing)}"))
        return problems
    merged = {**(parent.model_dump() if parent else {}), **fields, "name": name}
    try:
        preset = Preset.model_validate(merged)
    except ValidationError as err:
        return problems + located_problems(err, source, line_of, (), where, Preset)
    return problems or preset


def _line_finder(doc: Document | None, name: Any) -> LineOf:
    """The line of a path under preset ``name`` in the file (None without a document)."""
    if doc is None:
        return lambda *path: None
    base = ("presets", name) if ("presets",) in doc.lines else (name,)
    return lambda *path: doc.line_of(*base, *path)


def load_presets(path: str | Path | None) -> dict[str, Preset]:
    """Built-in presets, overridden by the YAML file at ``path`` when given.

    The file maps preset names to fields, either at the top level or under a
    ``presets:`` key. It is read with the same guards as shot lists (size, binary,
    YAML bombs) and every problem is reported at once, with its line.

    Raises:
        InputError: the file is missing, unreadable or holds invalid presets.
    """
    if path is None:
        return dict(BUILTIN_PRESETS)
    source, text = read_text(path)
    doc = parse(source, text, "yaml")
    data = doc.data
    revisions: tuple[tuple[str, str], ...] = ()
    if isinstance(data, Mapping) and MODELS_KEY in data:
        revisions = _revisions(data[MODELS_KEY], source, doc)
        data = {k: v for k, v in data.items() if k != MODELS_KEY}
    if isinstance(data, Mapping) and "presets" in data:
        data = data["presets"]
    if not isinstance(data, Mapping):
        raise InputError([Problem(source, 1, None, None,
                                  "must map preset names to their fields")])
    return with_revisions(apply_overrides(data, source=source, doc=doc), revisions)


def with_revisions(presets: Mapping[str, Preset],
                   revisions: tuple[tuple[str, str], ...]) -> dict[str, Preset]:
    """``presets``, each carrying the ``models:`` table's revisions."""
    if not revisions:
        return dict(presets)
    return {name: p.model_copy(update={"model_revisions": revisions})
            for name, p in presets.items()}


MODELS_KEY = "models"


def _revisions(raw: Any, source: str,
               doc: Document | None = None) -> tuple[tuple[str, str], ...]:
    """The ``models:`` table: model file name -> ``{revision: <text>}``, sorted.

    Raises:
        InputError: every entry that is not a file name mapped to a revision, with its
            line when ``doc`` (the file it came from) is given.
    """
    doc = doc or Document(source, raw)
    where = MODELS_KEY
    if not isinstance(raw, Mapping):
        raise InputError([Problem(source, doc.line_of(MODELS_KEY), where, None,
                                  "must map model file names to {revision: ...}")])
    found: dict[str, str] = {}
    problems = []
    for name, entry in raw.items():
        line = doc.line_of(MODELS_KEY, name)
        if not isinstance(name, str) or not name.strip():
            problems.append(Problem(source, line, where, str(name),
                                    "a model file name must be text"))
            continue
        if not isinstance(entry, Mapping) or set(entry) - {"revision"}:
            problems.append(Problem(source, line, f"{where} {name}", None,
                                    "must be {revision: <text>} (the only field)"))
            continue
        revision = entry.get("revision")
        if isinstance(revision, bool) or not isinstance(revision, (str, int, float)) \
                or not str(revision).strip():
            problems.append(Problem(source, doc.line_of(MODELS_KEY, name, "revision") or line,
                                    f"{where} {name}", "revision",
                                    "must be a non-empty text, e.g. \"2026-11\""))
            continue
        found[name] = str(revision).strip()
    if problems:
        raise InputError(problems)
    return tuple(sorted(found.items()))


def revision_table(raw: Any, source: str) -> tuple[tuple[str, str], ...]:
    """A ``models:`` table given as data (a saved RenderPresets block), checked like the
    file's; its problems name ``source`` and the entry."""
    return _revisions(raw, source) if raw else ()


def model_revisions(presets: Mapping[str, Preset]) -> dict[str, str]:
    """File name -> revision from the presets file's ``models:`` table (via any preset)."""
    found: dict[str, str] = {}
    for preset in presets.values():
        found.update(preset.model_revisions)
    return found
