"""Errors about user input (shot lists, presets files), reported all at once.

Every problem names the file, the line (YAML/JSON) or row (CSV), the shot when known,
the field and what is wrong, e.g. ``ep01.yaml:42 shot sh030: takes: must be between 1
and 64 (got 100)``, so the production team can fix a whole list in one pass.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BeforeValidator, ValidationError


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
Number = Annotated[float, BeforeValidator(reject_bool)]


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


def format_pydantic_error(
    err: ValidationError, source: str, where: str | None, line: int | None = None
) -> list[Problem]:
    """Turn a pydantic ValidationError into Problems, one per failing field."""
    problems = []
    for error in err.errors(include_url=False):
        field = ".".join(str(part) for part in error["loc"]) or None
        problems.append(Problem(source, line, where, field, describe_error(error)))
    return problems
