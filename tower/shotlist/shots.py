"""Shot lists: the models and the loader that validates them.

A shot list is the production team's plan for an episode: shots, each with a prompt
and a number of takes, optionally with characters (LoRAs and trigger words), a layout
image (img2img) and line art through a ControlNet. It is validated once, at the edge;
everything downstream takes these models. Loading reports every problem in the file
(and in the files it includes) at once, each with the file, line (or CSV row), shot id,
field and what is wrong, and reads every input image before anything is queued.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from tower.shotlist.characters import INCLUDE, Cast, read_characters
from tower.shotlist.documents import STDIN, Document, format_of, parse, read_text
from tower.shotlist.errors import InputError, Problem, Whole, located_problems, suggest
from tower.shotlist.images import ImageError, image_path, read_image
from tower.shotlist.names import check_name
from tower.shotlist.parts import Character, Control, FileName, Layout
from tower.shotlist.presets import BUILTIN_PRESETS, Preset

MAX_TAKES = 64
MAX_SEED = 2**64 - 1
SIZE_RULE = "must be a multiple of 8 between 64 and 4096"
CheckpointName = FileName  # a file name on the ComfyUI server, spaces stripped
CONTROL_MODEL_RULE = "is required (or set defaults.control_model)"


def _check_size(value: int | None) -> int | None:
    if value is not None and (value % 8 or not 64 <= value <= 4096):
        raise ValueError(f"{SIZE_RULE} (got {value})")
    return value


# C0 and C1 control characters but tab and line breaks; YAML refuses them unescaped too.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def _check_text(value: str | None) -> str | None:
    """Refuse invisible control characters in prompts and notes.

    They come from copy-paste, change the render key without a visible difference and
    would reach terminals and logs as escape sequences.
    """
    found = _CONTROL.search(value) if isinstance(value, str) else None
    if found:
        raise ValueError(f"must not contain control characters (got {found.group()!r} "
                         f"at character {found.start() + 1})")
    return value


def _check_takes(value: int | None) -> int | None:
    if value is not None and not 1 <= value <= MAX_TAKES:
        raise ValueError(f"must be between 1 and {MAX_TAKES} (got {value})")
    return value


class ShotDefaults(BaseModel):
    """Values every shot inherits unless it sets its own."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: str = "standard"
    checkpoint: CheckpointName | None = None
    negative: str = ""
    style_prefix: str = ""
    style_suffix: str = ""
    width: Whole | None = None
    height: Whole | None = None
    takes: Whole = 1
    control_model: FileName | None = None

    _size = field_validator("width", "height")(_check_size)
    _takes = field_validator("takes")(_check_takes)
    _text = field_validator("negative", "style_prefix", "style_suffix")(_check_text)


class Shot(BaseModel):
    """One shot: a prompt rendered ``takes`` times (take k uses noise index k)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    prompt: str
    negative: str | None = None
    preset: str | None = None
    takes: Whole | None = None
    seed: Whole | None = None
    checkpoint: CheckpointName | None = None
    width: Whole | None = None
    height: Whole | None = None
    notes: str | None = None
    tags: tuple[str, ...] = ()
    characters: tuple[str, ...] = ()
    layout: Layout | None = None
    control: Control | None = None

    _id = field_validator("id")(check_name)
    _size = field_validator("width", "height")(_check_size)
    _takes = field_validator("takes")(_check_takes)
    _text = field_validator("prompt", "negative", "notes")(_check_text)

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("seed")
    @classmethod
    def _seed_in_range(cls, value: int | None) -> int | None:
        if value is not None and not 0 <= value <= MAX_SEED:
            raise ValueError(f"must be between 0 and 2^64-1 (got {value})")
        return value

    @field_validator("characters")
    @classmethod
    def _each_character_once(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        twice = sorted({name for name in value if value.count(name) > 1})
        if twice:
            raise ValueError(f"lists {', '.join(map(repr, twice))} more than once")
        return value


class ShotList(BaseModel):
    """An episode's shots, in the order the team wrote them.

    ``characters`` holds every character the list defines or includes (the loader
    reads the included files, so the model needs none). Image paths are absolute
    once loaded: the list's folder is where relative paths were found.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    episode: str
    title: str | None = None
    defaults: ShotDefaults = ShotDefaults()
    characters: dict[str, Character] = Field(default_factory=dict)
    shots: tuple[Shot, ...] = Field(min_length=1)

    _episode = field_validator("episode")(check_name)

    @field_validator("characters")
    @classmethod
    def _names_are_ids(cls, value: dict[str, Character]) -> dict[str, Character]:
        for name in value:
            check_name(name)
        return value

    @model_validator(mode="after")
    def _references_resolve(self) -> ShotList:
        """What the loader reports with lines, for lists built in code."""
        for shot in self.shots:
            for name in shot.characters:
                if name not in self.characters:
                    raise ValueError(f"shot {shot.id}: characters: "
                                     + unknown_character(name, self.characters))
            if needs_control_model(shot.control, self.defaults.control_model):
                raise ValueError(f"shot {shot.id}: control.model: {CONTROL_MODEL_RULE}")
        return self


def unknown_character(name: str, known: Collection[str]) -> str:
    """The complaint about a shot naming a character nothing defines."""
    return (f"unknown character {name!r}{suggest(name, known)}; "
            f"known: {', '.join(sorted(known)) or 'none (define characters: or include a file)'}")


def needs_control_model(control: Any, default: Any) -> bool:
    """True for a ``control`` (model or raw) naming no model when the defaults name none."""
    if default is not None or control is None:
        return False
    if isinstance(control, str):
        return True
    if isinstance(control, Control):
        return control.model is None
    return isinstance(control, Mapping) and control.get("model") is None


@dataclass
class LoadedShotList:
    """A validated shot list with where it came from and any warnings."""

    shot_list: ShotList
    source: str
    warnings: list[Problem] = field(default_factory=list)


# CSV columns that fill a part of a shot: column -> (shot field, field of the part).
CSV_PARTS = {
    "layout": ("layout", "image"), "layout_denoise": ("layout", "denoise"),
    "control": ("control", "image"), "control_model": ("control", "model"),
    "control_strength": ("control", "strength"), "control_start": ("control", "start"),
    "control_end": ("control", "end"),
}
# Columns that hold the same value on every row; `include` may list files split by ';'.
CSV_HEADER = ("episode", "title", INCLUDE)
CSV_LISTS = ("tags", "characters")
CSV_COLUMNS = {*CSV_HEADER, *Shot.model_fields, *CSV_PARTS}
# How a CSV spells a field a problem names (``layout.denoise`` is ``layout_denoise``).
_CSV_NAMES = {(part, key): column for column, (part, key) in CSV_PARTS.items()}
_CSV_NAMES |= {(part,): part for part, _ in CSV_PARTS.values()}


@dataclass(frozen=True)
class _Context:
    """What validating one list's shots needs besides the shots."""

    doc: Document
    presets: Mapping[str, Preset]
    cast: Cast
    folder: Path
    control_model: Any
    csv: bool

    @property
    def names(self) -> Mapping[tuple[Any, ...], str]:
        """How the file spells a field path (a CSV's columns; dotted otherwise)."""
        return _CSV_NAMES if self.csv else {}

    def field(self, *loc: Any) -> str:
        return self.names.get(loc) or ".".join(map(str, loc))


def _shot_where(raw: Any, index: int) -> str:
    shot_id = raw.get("id") if isinstance(raw, Mapping) else None
    return f"shot {shot_id}" if isinstance(shot_id, str) and shot_id else f"shot #{index + 1}"


def _preset_problem(doc: Document, name: Any, path: tuple[Any, ...], where: str | None,
                    presets: Mapping[str, Preset]) -> list[Problem]:
    """An unknown preset named at ``path`` (a shot's, or the defaults' when no ``where``)."""
    if not isinstance(name, str) or name in presets:
        return []  # absent, or a type error pydantic reports
    field = "preset" if where else "defaults.preset"
    return [Problem(doc.source, doc.line_of(*path), where, field,
                    f"unknown preset {name!r}{suggest(name, presets)}; "
                    f"known: {', '.join(sorted(presets))}")]


def _validate_header(doc: Document, data: Mapping[str, Any],
                     presets: Mapping[str, Preset]) -> tuple[ShotList | None, list[Problem]]:
    """Everything but the shots and characters (validated with a placeholder shot)."""
    header = {k: v for k, v in data.items() if k not in ("shots", "characters", INCLUDE)}
    defaults = header.get("defaults")
    problems = _preset_problem(doc, defaults.get("preset") if isinstance(defaults, Mapping)
                               else None, ("defaults", "preset"), None, presets)
    try:
        top = ShotList.model_validate({**header, "shots": [{"id": "x", "prompt": "x"}]})
    except ValidationError as err:
        return None, located_problems(err, doc.source, doc.line_of, (), None, ShotList,
                                      also_known=(INCLUDE,)) + problems
    return top, problems


def _reference_problems(ctx: _Context, raw: Mapping[str, Any], base: tuple[Any, ...],
                        where: str) -> list[Problem]:
    """Characters nothing defines and a ControlNet without a model, on the raw shot."""
    doc, problems = ctx.doc, []
    listed = raw.get("characters")
    for index, name in enumerate(listed if isinstance(listed, list) else []):
        if isinstance(name, str) and ctx.cast.is_unknown(name):
            problems.append(Problem(doc.source, doc.line_of(*base, "characters", index), where,
                                    "characters", unknown_character(name, ctx.cast.written)))
    if needs_control_model(raw.get("control"), ctx.control_model):
        rule = "is required" if ctx.csv else CONTROL_MODEL_RULE  # a CSV has no defaults
        problems.append(Problem(doc.source, doc.line_of(*base, "control"), where,
                                ctx.field("control", "model"), rule))
    return problems


def _read_images(ctx: _Context, raw: Mapping[str, Any], base: tuple[Any, ...],
                 where: str) -> tuple[dict[str, str], list[Problem]]:
    """The absolute path of each image the raw shot names, each read and checked.

    Read from the raw shot, so a missing image is reported with the shot's other
    problems rather than after they are fixed.
    """
    paths: dict[str, str] = {}
    problems: list[Problem] = []
    for role in ("layout", "control"):
        part = raw.get(role)
        text = part.get("image") if isinstance(part, Mapping) else part
        if not isinstance(text, str) or not text.strip():
            continue  # absent, or a problem the model reports
        path = image_path(text.strip(), ctx.folder)
        try:
            read_image(path)
        except ImageError as err:
            field = ctx.field(role) if isinstance(part, str) else ctx.field(role, "image")
            problems.append(Problem(ctx.doc.source, ctx.doc.line_of(*base, role, "image"), where,
                                    field, str(err)))
            continue
        paths[role] = str(path)
    return paths, problems


def _with_paths(shot: Shot, paths: Mapping[str, str]) -> Shot:
    """``shot`` with its images' paths replaced by the absolute ones."""
    return shot.model_copy(update={role: getattr(shot, role).model_copy(update={"image": path})
                                   for role, path in paths.items()})


def _validate_shots(ctx: _Context, raw_shots: list[Any],
                    shot_path: tuple[Any, ...]) -> tuple[list[Shot], list[Problem]]:
    """Each shot on its own, so that one bad shot hides nothing about the others."""
    doc = ctx.doc
    problems: list[Problem] = []
    shots: list[Shot] = []
    first_line: dict[str, int | None] = {}
    for index, raw in enumerate(raw_shots):
        base = (*shot_path, index)
        where = _shot_where(raw, index)
        if not isinstance(raw, Mapping):
            problems.append(Problem(doc.source, doc.line_of(*base), where, None,
                                    "must be a mapping of fields (id, prompt, ...)"))
            continue
        shot_id, line = raw.get("id"), doc.line_of(*base)
        if isinstance(shot_id, str) and shot_id in first_line:
            problems.append(Problem(doc.source, line, where, "id", "duplicate shot id "
                                    f"(first used on line {first_line[shot_id]})"))
        elif isinstance(shot_id, str):
            first_line[shot_id] = line
        problems += _preset_problem(doc, raw.get("preset"), (*base, "preset"), where,
                                    ctx.presets)
        problems += _reference_problems(ctx, raw, base, where)
        paths, found = _read_images(ctx, raw, base, where)
        problems += found
        try:
            shots.append(_with_paths(Shot.model_validate(raw), paths))
        except ValidationError as err:
            problems += located_problems(err, doc.source, doc.line_of, base, where, Shot,
                                         names=ctx.names)
    return shots, problems


def _validate(doc: Document, data: Mapping[str, Any], shot_path: tuple[Any, ...],
              presets: Mapping[str, Preset], found: list[Problem], folder: Path,
              csv: bool) -> ShotList:
    """The validated list, or an InputError with ``found`` and every other problem."""
    top, problems = _validate_header(doc, data, presets)
    cast = read_characters(doc, data, folder)
    problems = found + problems + cast.problems
    raw_shots = data.get("shots")
    if not isinstance(raw_shots, list) or not raw_shots:
        problems.append(Problem(doc.source, doc.line_of("shots"), None, "shots",
                                "must be a non-empty list of shots"))
        raw_shots = []
    defaults = data.get("defaults")
    control_model = defaults.get("control_model") if isinstance(defaults, Mapping) else None
    ctx = _Context(doc, presets, cast, folder, control_model, csv)
    shots, shot_problems = _validate_shots(ctx, raw_shots, shot_path)
    problems += shot_problems
    if problems or top is None:
        # The list's own problems by line, then those of the files it includes.
        raise InputError(sorted(problems, key=lambda p: (p.source != doc.source, p.line or 0)))
    return top.model_copy(update={"shots": tuple(shots), "characters": cast.characters})


def _csv_shot(row: Mapping[str, str]) -> dict[str, Any]:
    """One row's cells in the shot's shape (lists split on ';', parts nested)."""
    shot: dict[str, Any] = {k: v for k, v in row.items()
                            if k in Shot.model_fields and k not in CSV_PARTS}
    for key in CSV_LISTS:
        if key in shot:
            shot[key] = [t.strip() for t in shot[key].split(";") if t.strip()]
    for column, (part, key) in CSV_PARTS.items():
        if column in row:
            shot.setdefault(part, {})[key] = row[column]
    return shot


def _csv_to_mapping(doc: Document) -> tuple[dict[str, Any], list[Problem], list[Problem]]:
    """CSV rows in the shot-list shape, the warnings (unknown columns) and the problems."""
    warnings = [Problem(doc.source, 1, None, column, "unknown column, ignored"
                        + suggest(column, CSV_COLUMNS))
                for column in doc.data["header"] if column not in CSV_COLUMNS]
    problems: list[Problem] = []
    header: dict[str, Any] = {}
    shots = []
    for index, row in enumerate(doc.data["rows"]):
        line = doc.line_of("rows", index)
        for key in CSV_HEADER:
            value = row.get(key)
            if value is None:
                continue
            if key in header and header[key] != value:
                problems.append(Problem(
                    doc.source, line, None, key,
                    f"differs from earlier rows ({header[key]!r} vs {value!r})"))
            if key not in header and line is not None:
                doc.lines[(key,)] = line
            header.setdefault(key, value)
        shots.append(_csv_shot(row))
    if "episode" not in header:
        problems.append(Problem(doc.source, 1, None, "episode",
                                "is required: add an 'episode' column"))
        header["episode"] = "missing"  # reported above; lets the rows be checked too
    if INCLUDE in header:
        header[INCLUDE] = [name.strip() for name in header[INCLUDE].split(";") if name.strip()]
    return {**header, "shots": shots}, warnings, problems


def read_shot_list(path: str | Path,
                   presets: Mapping[str, Preset] = BUILTIN_PRESETS) -> LoadedShotList:
    """Load and validate a shot list (YAML, CSV or JSON by extension; ``-`` is stdin).

    Included character files and input images are read and checked too; paths are
    relative to the list's folder (to the current folder for stdin).

    Raises:
        InputError: with every problem found, each naming file, line, shot and field.
    """
    fmt = format_of(path)
    source, text = read_text(path)
    doc = parse(source, text, fmt)
    # Relative as given, so included files are named as the list is; images are made
    # absolute when read (the current folder is a list from stdin's folder).
    folder = Path() if str(path) == STDIN else Path(path).parent
    warnings = list(doc.warnings)
    problems: list[Problem] = []
    if fmt == "csv":
        data, csv_warnings, problems = _csv_to_mapping(doc)
        warnings += csv_warnings
        shot_path: tuple[Any, ...] = ("rows",)
    else:
        data = doc.data
        shot_path = ("shots",)
        if not isinstance(data, Mapping):
            raise InputError([Problem(source, 1, None, None,
                                      "must be a mapping with 'episode' and 'shots'")])
    shot_list = _validate(doc, data, shot_path, presets, problems, folder, fmt == "csv")
    return LoadedShotList(shot_list, source, warnings)


def episode_of(path: str | Path) -> str | None:
    """The episode a shot list names, read without validating the list (run names need
    it before the presets that a full validation would take are known).

    Raises:
        InputError: the file cannot be read or parsed.
    """
    fmt = format_of(path)
    doc = parse(*read_text(path), fmt)
    if fmt == "csv":
        rows = doc.data["rows"]
        value = rows[0].get("episode") if rows else None
    else:
        value = doc.data.get("episode") if isinstance(doc.data, Mapping) else None
    return value if isinstance(value, str) and value else None


def load_shot_list(path: str | Path,
                   presets: Mapping[str, Preset] = BUILTIN_PRESETS) -> ShotList:
    """Like :func:`read_shot_list`, returning only the validated list."""
    return read_shot_list(path, presets).shot_list
