"""Reading hand-written files safely: size limits, encodings, YAML bombs, line numbers.

A shot list is edited by people and exported from spreadsheets, so the reader must
turn every way a file can be wrong (missing, empty, binary, huge, malicious YAML)
into a clear ``InputError`` and must remember where each value came from so that
later validation errors can name the line.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tower.shotlist.errors import InputError, Problem

# A 250-shot episode is about 100 KB; the limits leave room for any real list while
# keeping the worst case (parse, line map, validation) to a few seconds.
MAX_BYTES = 8 * 1024 * 1024
MAX_NODES = 200_000
# libyaml composes about five times faster than the pure-Python parser when present.
_Composer = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
STDIN = "-"

Path_ = tuple[Any, ...]


@dataclass
class Document:
    """Parsed data plus the line each path (``("shots", 3, "takes")``) starts on."""

    source: str
    data: Any
    lines: dict[Path_, int] = field(default_factory=dict)
    warnings: list[Problem] = field(default_factory=list)

    def line_of(self, *path: Any) -> int | None:
        """The line of ``path`` or of its nearest ancestor that has one."""
        for end in range(len(path), 0, -1):
            line = self.lines.get(tuple(path[:end]))
            if line is not None:
                return line
        return None


def _fail(source: str, message: str, line: int | None = None) -> InputError:
    return InputError([Problem(source, line, None, None, message)])


def read_text(path: str | Path) -> tuple[str, str]:
    """Return ``(source name, text)``, refusing files that cannot be a shot list."""
    source = "<stdin>" if str(path) == STDIN else str(path)
    try:
        if str(path) == STDIN:
            raw = sys.stdin.buffer.read(MAX_BYTES + 1)
        else:
            with open(path, "rb") as handle:
                raw = handle.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise _fail(source, "file not found") from None
    except IsADirectoryError:
        raise _fail(source, "is a directory, not a file") from None
    except PermissionError:
        raise _fail(source, "permission denied") from None
    if len(raw) > MAX_BYTES:
        raise _fail(source, f"file is larger than {MAX_BYTES // (1024 * 1024)} MiB; "
                            "split the episode into several shot lists")
    if b"\x00" in raw:
        raise _fail(source, "binary file: expected UTF-8 text (YAML, CSV or JSON)",
                    raw.count(b"\n", 0, raw.index(b"\x00")) + 1)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise _fail(source, f"not UTF-8 text (bad byte {raw[err.start]:#04x} at offset "
                            f"{err.start}); save the file as UTF-8", line) from None
    if not text.strip():
        raise _fail(source, "file is empty")
    return source, text


def parse(source: str, text: str, fmt: str) -> Document:
    """Parse ``text`` as ``fmt`` (yaml, json or csv)."""
    if fmt == "csv":
        return _parse_csv(source, text)
    if fmt == "json":
        return _parse_json(source, text)
    return _parse_yaml(source, text)


def format_of(path: str | Path) -> str:
    """The format implied by a file name; stdin is YAML."""
    suffix = Path(str(path)).suffix.lower()
    if str(path) == STDIN or suffix in {".yaml", ".yml"}:
        return "yaml"
    if suffix in {".json", ".csv"}:
        return suffix[1:]
    raise _fail(str(path), f"unknown file type {suffix or '(none)'!r}: "
                           "use .yaml, .yml, .csv or .json")


def _yaml_error(source: str, err: yaml.YAMLError, text: str = "") -> InputError:
    """PyYAML's complaint, with its line, without its ``<unicode string>`` marks."""
    if isinstance(err, yaml.reader.ReaderError):  # a character YAML does not allow
        line = text.count("\n", 0, err.position) + 1 if text else None
        what = f"#x{err.character:04x}" if isinstance(err.character, int) else \
            repr(err.character)
        return _fail(source, f"not valid YAML: character {what} is not allowed "
                             f"({err.reason}); write it escaped in double quotes", line)
    if isinstance(err, yaml.MarkedYAMLError) and err.problem:
        mark = err.problem_mark or err.context_mark
        return _fail(source, f"not valid YAML: {err.problem}", mark.line + 1 if mark else None)
    return _fail(source, f"not valid YAML: {err}")


def _compose(source: str, text: str) -> yaml.Node | None:
    loader = _Composer(text)
    try:
        return loader.get_single_node()
    except yaml.YAMLError as err:
        raise _yaml_error(source, err, text) from None
    except RecursionError:
        raise _fail(source, "nesting too deep") from None
    finally:
        loader.dispose()


def _expanded_size(node: yaml.Node, memo: dict[int, int], source: str) -> int:
    """Node count with aliases expanded, computed without expanding them."""
    key = id(node)
    if key in memo:
        if memo[key] < 0:
            raise _fail(source, "recursive YAML alias", node.start_mark.line + 1)
        return memo[key]
    memo[key] = -1
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(child, memo, source) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            size += _expanded_size(k, memo, source) + _expanded_size(v, memo, source)
    memo[key] = size
    return size


def _key(node: yaml.Node, loader: yaml.SafeLoader) -> Any:
    """A mapping key as the data will hold it (``1`` for ``1``, None for ``null``)."""
    if not isinstance(node, yaml.ScalarNode):
        return None
    try:
        return loader.construct_object(node)
    except yaml.YAMLError:
        return node.value  # reported when the document is constructed


def _record_lines(node: yaml.Node, path: Path_, doc: Document, seen: set[int],
                  loader: yaml.SafeLoader) -> None:
    if id(node) in seen:
        return
    seen.add(id(node))
    doc.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.SequenceNode):
        for index, child in enumerate(node.value):
            _record_lines(child, (*path, index), doc, seen, loader)
    elif isinstance(node, yaml.MappingNode):
        keys_seen: set[Any] = set()
        for key_node, value_node in node.value:
            key = _key(key_node, loader)
            if key in keys_seen:
                doc.warnings.append(Problem(doc.source, key_node.start_mark.line + 1, None,
                                            str(key), "duplicate key"))
            if key is not None:
                keys_seen.add(key)
            doc.lines[(*path, key)] = key_node.start_mark.line + 1
            _record_lines(value_node, (*path, key), doc, seen, loader)


def _line_map(source: str, node: yaml.Node | None, doc: Document) -> None:
    if node is None:
        return
    try:
        size = _expanded_size(node, {}, source)
    except RecursionError:
        raise _fail(source, "nesting too deep") from None
    if size > MAX_NODES:
        raise _fail(source, f"document expands to {size:,} values (limit {MAX_NODES:,}); "
                            "YAML aliases may be nested too deeply")
    loader = yaml.SafeLoader("")
    try:
        _record_lines(node, (), doc, set(), loader)
    finally:
        loader.dispose()


def _parse_yaml(source: str, text: str) -> Document:
    node = _compose(source, text)
    doc = Document(source, None)
    _line_map(source, node, doc)
    if doc.warnings:
        # A duplicate key silently drops a value: make it an error, not a warning.
        raise InputError(doc.warnings)
    loader = yaml.SafeLoader("")
    try:
        doc.data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as err:
        raise _yaml_error(source, err) from None
    finally:
        loader.dispose()
    return doc


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _parse_json(source: str, text: str) -> Document:
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as err:
        # A duplicate key silently drops a value: an error, located via the YAML line map.
        doc = _json_lines(source, text)
        raise InputError(doc.warnings or [Problem(source, None, None, str(err.args[0]),
                                                  "duplicate key")]) from None
    except json.JSONDecodeError as err:
        raise _fail(source, f"not valid JSON: {err.msg} (column {err.colno})", err.lineno) from None
    except RecursionError:
        raise _fail(source, "nesting too deep") from None
    doc = _json_lines(source, text)
    doc.data = data
    doc.warnings.clear()
    return doc


def _json_lines(source: str, text: str) -> Document:
    """Line numbers for JSON, read with the YAML composer (JSON is nearly YAML)."""
    doc = Document(source, None)
    try:
        _line_map(source, _compose(source, text), doc)
    except InputError:
        doc.lines.clear()  # JSON that PyYAML cannot read still loads, without line numbers
    return doc


def _parse_csv(source: str, text: str) -> Document:
    """Rows become dicts of non-empty cells (empty cells mean "use the default").

    A row's line is the line its record starts on, which is the row number a
    spreadsheet shows as long as no cell holds a line break.
    """
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    doc = Document(source, {"rows": [], "header": []})
    try:
        header = _csv_header(source, reader)
        doc.data["header"] = header
        doc.lines[("header",)] = 1
        start = reader.line_num + 1
        for cells in reader:
            line, start = start, reader.line_num + 1
            if not any(cell.strip() for cell in cells):
                continue  # blank lines and rows of empty cells
            if len(cells) > len(header):
                doc.warnings.append(Problem(source, line, None, None,
                                            "more cells than header columns; extra cells ignored"))
            doc.lines[("rows", len(doc.data["rows"]))] = line
            doc.data["rows"].append({name: cell.strip() for name, cell
                                     in zip(header, cells, strict=False)
                                     if name and cell.strip()})
    except csv.Error as err:
        raise _fail(source, f"not valid CSV: {err}", reader.line_num) from None
    return doc


def _csv_header(source: str, reader: Any) -> list[str]:
    """The stripped column names; a repeated name would silently lose cells, so it fails."""
    header = [name.strip() for name in next(reader, [])]
    if not any(header):
        raise _fail(source, "CSV has no header row", 1)
    repeated = sorted({name for name in header if name and header.count(name) > 1})
    if repeated:
        raise _fail(source, f"column(s) repeated in the header: {', '.join(repeated)}", 1)
    return header
