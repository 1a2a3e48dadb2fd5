"""Shot lists: the models and the loader that validates them.

A shot list is the production team's plan for an episode: shots, each with a prompt
and a number of takes. It is validated once, at the edge; everything downstream takes
these models. Loading reports every problem in the file at once, each with the file,
line (or CSV row), shot id, field and what is wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)

from tower.shotlist.documents import Document, format_of, parse, read_text
from tower.shotlist.errors import InputError, Problem, Whole, describe_error, suggest
from tower.shotlist.names import check_name
from tower.shotlist.presets import BUILTIN_PRESETS, Preset

MAX_TAKES = 64
MAX_SEED = 2**64 - 1
SIZE_RULE = "must be a multiple of 8 between 64 and 4096"
# A file name on the ComfyUI server; stray spaces from a spreadsheet are not part of it.
CheckpointName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


def _check_size(value: int | None) -> int | None:
    if value is not None and (value % 8 or not 64 <= value <= 4096):
        raise ValueError(f"{SIZE_RULE} (got {value})")
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

    _size = field_validator("width", "height")(_check_size)
    _takes = field_validator("takes")(_check_takes)


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

    _id = field_validator("id")(check_name)
    _size = field_validator("width", "height")(_check_size)
    _takes = field_validator("takes")(_check_takes)

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


class ShotList(BaseModel):
    """An episode's shots, in the order the team wrote them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    episode: str
    title: str | None = None
    defaults: ShotDefaults = ShotDefaults()
    shots: tuple[Shot, ...] = Field(min_length=1)

    _episode = field_validator("episode")(check_name)


@dataclass
class LoadedShotList:
    """A validated shot list with where it came from and any warnings."""

    shot_list: ShotList
    source: str
    warnings: list[Problem] = field(default_factory=list)


CSV_COLUMNS = {"episode", "title", *Shot.model_fields}


def _problems_from(err: ValidationError, doc: Document, base: tuple[Any, ...],
                   where: str | None, known: Any) -> list[Problem]:
    """Problems for a model error at ``base`` in ``doc``, with hints for typos and numbers."""
    problems = []
    for error in err.errors(include_url=False):
        loc = tuple(error["loc"])
        if error["type"] == "invalid_key":  # pydantic writes a None key as 'None'
            loc = (*loc[:-1], error.get("input"))
        message = describe_error(error)
        if error["type"] == "extra_forbidden":
            in_defaults = len(loc) > 1 and loc[0] == "defaults"
            message += suggest(loc[-1], ShotDefaults.model_fields if in_defaults else known)
        elif error["type"] == "string_type" and isinstance(error.get("input"), int | float | bool):
            message += "; put it in quotes"
        line = doc.line_of(*base, *loc)
        problems.append(Problem(doc.source, line, where, ".".join(map(str, loc)), message))
    return problems


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
    """Everything but the shots (validated with a placeholder shot)."""
    header = {k: v for k, v in data.items() if k != "shots"}
    defaults = header.get("defaults")
    problems = _preset_problem(doc, defaults.get("preset") if isinstance(defaults, Mapping)
                               else None, ("defaults", "preset"), None, presets)
    try:
        top = ShotList.model_validate({**header, "shots": [{"id": "x", "prompt": "x"}]})
    except ValidationError as err:
        return None, _problems_from(err, doc, (), None, ShotList.model_fields) + problems
    return top, problems


def _validate_shots(doc: Document, raw_shots: list[Any], shot_path: tuple[Any, ...],
                    presets: Mapping[str, Preset]) -> tuple[list[Shot], list[Problem]]:
    """Each shot on its own, so that one bad shot hides nothing about the others."""
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
        problems += _preset_problem(doc, raw.get("preset"), (*base, "preset"), where, presets)
        try:
            shots.append(Shot.model_validate(raw))
        except ValidationError as err:
            problems += _problems_from(err, doc, base, where, Shot.model_fields)
    return shots, problems


def _validate(doc: Document, data: Mapping[str, Any], shot_path: tuple[Any, ...],
              presets: Mapping[str, Preset], found: list[Problem]) -> ShotList:
    """The validated list, or an InputError with ``found`` and every other problem."""
    top, problems = _validate_header(doc, data, presets)
    problems = found + problems
    raw_shots = data.get("shots")
    if not isinstance(raw_shots, list) or not raw_shots:
        problems.append(Problem(doc.source, doc.line_of("shots"), None, "shots",
                                "must be a non-empty list of shots"))
        raw_shots = []
    shots, shot_problems = _validate_shots(doc, raw_shots, shot_path, presets)
    problems += shot_problems
    if problems or top is None:
        raise InputError(sorted(problems, key=lambda p: p.line or 0))
    return top.model_copy(update={"shots": tuple(shots)})


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
        for key in ("episode", "title"):
            value = row.get(key)
            if value is None:
                continue
            if key in header and header[key] != value:
                problems.append(Problem(
                    doc.source, line, None, key,
                    f"differs from earlier rows ({header[key]!r} vs {value!r})"))
            header.setdefault(key, value)
        shot = {k: v for k, v in row.items() if k in Shot.model_fields}
        if "tags" in shot:
            shot["tags"] = [t.strip() for t in shot["tags"].split(";") if t.strip()]
        shots.append(shot)
    if "episode" not in header:
        problems.append(Problem(doc.source, 1, None, "episode",
                                "is required: add an 'episode' column"))
        header["episode"] = "missing"  # reported above; lets the rows be checked too
    return {**header, "shots": shots}, warnings, problems


def read_shot_list(path: str | Path,
                   presets: Mapping[str, Preset] = BUILTIN_PRESETS) -> LoadedShotList:
    """Load and validate a shot list (YAML, CSV or JSON by extension; ``-`` is stdin).

    Raises:
        InputError: with every problem found, each naming file, line, shot and field.
    """
    fmt = format_of(path)
    source, text = read_text(path)
    doc = parse(source, text, fmt)
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
    return LoadedShotList(_validate(doc, data, shot_path, presets, problems), source, warnings)


def load_shot_list(path: str | Path,
                   presets: Mapping[str, Preset] = BUILTIN_PRESETS) -> ShotList:
    """Like :func:`read_shot_list`, returning only the validated list."""
    return read_shot_list(path, presets).shot_list
