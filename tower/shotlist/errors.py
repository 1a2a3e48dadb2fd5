"""Errors about user input (shot lists, presets files), reported all at once.

Every problem names the file, the line (YAML/JSON) or row (CSV), the shot when known,
the field and what is wrong, e.g. ``ep01.yaml:42 shot sh030: takes: must be between 1
and 64 (got 100)``, so the production team can fix a whole list in one pass.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, get_args

from pydantic import BaseModel, BeforeValidator, ValidationError


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input file."""

    source: str
    line: int | None
    where: str | None
    field: str | None
    message: str

    def __str__(self) -> str:
        location = self.source if self.line is None else f"{self.source}:{self.line}"
        parts = [location]
        if self.where:
            parts[0] = f"{location} {self.where}"
        text = ": ".join(parts)
        if self.field:
            text += f": {self.field}"
        return f"{text}: {self.message}"


class InputError(ValueError):
    """A file could not be used; carries every problem found, not just the first."""

    def __init__(self, problems: Iterable[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def reject_bool(value: Any) -> Any:
    """Refuse booleans where a number belongs.

    YAML reads ``yes``/``no``/``on``/``off`` as booleans and pydantic would quietly turn
    them into 1 and 0; ``takes: yes`` is a mistake to report, not one take.
    """
    if isinstance(value, bool):
        raise ValueError(f"must be a number, not true/false (got {value!r})")
    return value


Whole = Annotated[int, BeforeValidator(reject_bool)]
def reject_non_finite(value: Any) -> Any:
    """Refuse booleans (see :func:`reject_bool`), NaN and infinities where a number belongs.

    YAML reads ``.nan`` and ``.inf`` and a CSV cell ``nan`` parses as a float; NaN passes
    no range check and infinity breaks the arithmetic downstream: neither is a setting.
    """
    reject_bool(value)
    try:
        number = float(value) if isinstance(value, str | float) else None
    except ValueError:
        return value  # not a number at all: pydantic says so
    if number is not None and not math.isfinite(number):
        raise ValueError(f"must be a finite number (got {value!r})")
    return value


Number = Annotated[float, BeforeValidator(reject_non_finite)]


def suggest(name: Any, known: Iterable[Any]) -> str:
    """`` (did you mean 'prompt'?)`` for a near miss such as ``promt``, else ``""``."""
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


_RANGE_TYPES = {"greater_than_equal": "at least", "less_than_equal": "at most",
                "greater_than": "more than", "less_than": "less than"}
_MAPPING_TYPES = {"model_type", "dict_type", "model_attributes_type"}
# pydantic error type prefix -> sentence, for errors whose wording needs no context.
_BY_PREFIX = (
    ("int_", "must be a whole number"),
    ("float_", "must be a number"),
    ("bool_", "must be true or false"),
    ("list_", "must be a list"),
    ("tuple_", "must be a list"),
    ("string_", "must be text"),
)


def describe_error(error: dict[str, Any]) -> str:
    """A sentence for one pydantic error, without pydantic's jargon."""
    kind = error["type"]
    value = error.get("input")
    ctx = error.get("ctx") or {}
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "invalid_key":
        return f"field names must be text (got {value!r})"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    if kind in _RANGE_TYPES:
        bound = next(iter(ctx.values()), "?")
        return f"must be {_RANGE_TYPES[kind]} {bound} (got {value!r})"
    if kind == "multiple_of":
        return f"must be a multiple of {ctx.get('multiple_of')} (got {value!r})"
    if kind == "string_too_short":
        return "must not be empty"
    if kind in _MAPPING_TYPES:
        return f"must be a mapping of fields (got {value!r})"
    sentence = next((text for prefix, text in _BY_PREFIX if kind.startswith(prefix)), None)
    return f"{sentence or error['msg']} (got {value!r})"


Loc = tuple[Any, ...]


def fields_at(model: type[BaseModel], path: Loc) -> tuple[str, ...]:
    """The field names of the model found at ``path`` under ``model`` (for suggestions).

    List indices are skipped (``("loras", 0)`` is a LoRA entry); a path that leaves the
    models (a mapping's key, a plain value) has no fields.
    """
    current: type[BaseModel] | None = model
    for part in path:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part) if current is not None else None
        current = _model_in(field.annotation) if field is not None else None
    return tuple(current.model_fields) if current is not None else ()


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model an annotation such as ``Layout | None`` or ``tuple[PresetLora, ...]`` holds."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((found for arg in get_args(annotation)
                 if (found := _model_in(arg)) is not None), None)


def located_problems(err: ValidationError, source: str, line_of: Callable[..., int | None],
                     base: Loc, where: str | None, model: type[BaseModel], *,
                     also_known: Iterable[str] = (),
                     names: Mapping[Loc, str] | None = None) -> list[Problem]:
    """Problems for ``model``'s error at ``base`` in a document, with hints for typos.

    Args:
        line_of: the document's ``line_of`` (the line of a path or of its nearest parent).
        also_known: top-level names the document may hold besides the model's fields.
        names: how the file spells a field path (a CSV column such as ``layout_denoise``
            for ``layout.denoise``); other paths are written dotted.
    """
    problems = []
    for error in err.errors(include_url=False):
        loc = tuple(error["loc"])
        if error["type"] == "invalid_key":  # pydantic writes a None key as 'None'
            loc = (*loc[:-1], error.get("input"))
        message = describe_error(error)
        if error["type"] == "extra_forbidden":
            known = fields_at(model, loc[:-1])
            message += suggest(loc[-1], (*known, *also_known) if len(loc) == 1 else known)
        elif error["type"] == "string_type" and isinstance(error.get("input"), int | float | bool):
            message += "; put it in quotes"
        field = (names or {}).get(loc) or ".".join(map(str, loc)) or None
        problems.append(Problem(source, line_of(*base, *loc), where, field, message))
    return problems
