"""Characters: defined once per shot list or in shared files the list includes.

A character is a LoRA, its strengths and its trigger words. A list defines characters
under a top-level ``characters:`` mapping, or includes shared files
(``include: [characters.yaml]``, paths relative to the list's folder) that hold one.
Every definition is checked where it is written, so a problem in an included file names
that file and its line; a name defined twice is an error naming both places.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tower.shotlist.documents import Document, format_of, parse, read_text
from tower.shotlist.errors import InputError, Problem, located_problems, suggest
from tower.shotlist.names import check_name
from tower.shotlist.parts import Character

INCLUDE = "include"
CHARACTERS = "characters"


@dataclass(frozen=True)
class _Defined:
    character: Character | None  # None: written but invalid (reported)
    source: str
    line: int | None


@dataclass
class Cast:
    """The characters a list can use, and what reading them found wrong."""

    characters: dict[str, Character] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    written: frozenset[str] = frozenset()
    complete: bool = True

    def is_unknown(self, name: str) -> bool:
        """True for a name no definition wrote; never when a file could not be read,
        nor for a definition already reported as invalid (one problem, not two)."""
        return self.complete and name not in self.written


def _include_names(doc: Document, value: Any) -> tuple[list[str], list[Problem]]:
    """The file names ``include:`` lists (one name or a list of names)."""
    if value is None:
        return [], []
    names = [value] if isinstance(value, str) else value
    if isinstance(names, list) and all(isinstance(n, str) and n.strip() for n in names):
        return [n.strip() for n in names], []
    return [], [Problem(doc.source, doc.line_of(INCLUDE), None, INCLUDE,
                        f"must be a file name or a list of file names (got {value!r})")]


def read_characters(doc: Document, data: Mapping[str, Any], folder: Path) -> Cast:
    """Every character the list defines or includes, in order, with every problem.

    Included files come first, in the order listed, then the list's own ``characters:``.

    Args:
        doc: the shot list (its lines locate the ``include`` entries).
        data: the list's top-level mapping (a CSV's header values).
        folder: what relative include paths are relative to.
    """
    names, problems = _include_names(doc, data.get(INCLUDE))
    complete = not problems
    documents: list[tuple[Document, Any]] = []
    for index, name in enumerate(names):
        included, found = _read_include(doc, index, folder / name)
        problems += found
        if included is None:
            complete = False
        else:
            documents.append((included, included.data.get(CHARACTERS)))
    if CHARACTERS in data:
        documents.append((doc, data[CHARACTERS]))
    defined: dict[str, _Defined] = {}
    for source_doc, raw in documents:
        if not isinstance(raw, Mapping):
            complete = False
        problems += _define(source_doc, raw, defined)
    return Cast({name: d.character for name, d in defined.items() if d.character is not None},
                problems, frozenset(defined), complete)


def _read_include(doc: Document, index: int, path: Path) -> tuple[Document | None, list[Problem]]:
    """The included file parsed, or the problems that stop it being read."""
    line = doc.line_of(INCLUDE, index)
    try:
        fmt = format_of(path)
        if fmt == "csv":
            raise InputError([Problem(str(path), None, None, None,
                                      "must be a YAML or JSON file of characters")])
        source, text = read_text(path)
    except InputError as err:
        return None, [Problem(doc.source, line, None, INCLUDE,
                              f"cannot read {path}: {p.message}") for p in err.problems]
    try:
        included = parse(source, text, fmt)
    except InputError as err:
        return None, err.problems
    data = included.data
    if not isinstance(data, Mapping) or CHARACTERS not in data:
        return None, [Problem(source, 1, None, None, "must hold a 'characters:' mapping")]
    problems = [Problem(source, included.line_of(key), None, str(key),
                        "unknown field" + suggest(key, (CHARACTERS,)))
                for key in data if key != CHARACTERS]
    return included, problems


def _define(doc: Document, raw: Any, defined: dict[str, _Defined]) -> list[Problem]:
    """Add the characters of one ``characters:`` mapping to ``defined``; its problems."""
    if not isinstance(raw, Mapping):
        return [Problem(doc.source, doc.line_of(CHARACTERS), None, CHARACTERS,
                        "must map character names to their LoRA, strengths and trigger words")]
    problems: list[Problem] = []
    for name, definition in raw.items():
        path = (CHARACTERS, name)
        line = doc.line_of(*path)
        where = f"character {name}"
        if not isinstance(name, str):  # YAML reads `1:` or `null:` as a number or None
            problems.append(Problem(doc.source, line, where, None,
                                    "character names must be text; put it in quotes"))
            continue
        if name in defined:
            first = defined[name]
            place = first.source if first.line is None else f"{first.source}:{first.line}"
            problems.append(Problem(doc.source, line, where, None,
                                    f"defined twice: first in {place}"))
            continue
        defined[name] = _Defined(None, doc.source, line)
        try:
            check_name(name)
        except ValueError as err:
            problems.append(Problem(doc.source, line, where, None, f"character name {err}"))
            continue
        try:
            character = Character.model_validate(definition)
        except ValidationError as err:
            problems += located_problems(err, doc.source, doc.line_of, path, where, Character)
            continue
        defined[name] = _Defined(character, doc.source, line)
    return problems
