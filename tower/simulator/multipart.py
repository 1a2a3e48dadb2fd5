"""A ``multipart/form-data`` reader for ``POST /upload/image``.

Starlette's form parser needs python-multipart, which the project does not depend on;
uploads are small, so the whole body is split here. Parameters are read the way
aiohttp (ComfyUI's server) reads them: a quoted filename is unescaped and kept verbatim,
``%2F`` included, and ``filename*`` (RFC 5987) wins over ``filename``.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from tower.simulator.folders import UploadedFile

_PARAM = re.compile(r';\s*([^\s=;]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


class MalformedForm(ValueError):
    """A body aiohttp's reader would fail on (the server answers 500)."""


def header_params(value: str) -> tuple[str, dict[str, str]]:
    """``form-data; name="image"`` -> ``("form-data", {"name": "image"})``."""
    main, _, rest = value.partition(";")
    params: dict[str, str] = {}
    for match in _PARAM.finditer(";" + rest):
        key, raw = match.group(1).lower(), match.group(2).strip()
        if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1].lstrip("\\/"))
        elif key.endswith("*"):
            charset, _, encoded = raw.partition("'")
            _, _, encoded = encoded.partition("'")
            raw = unquote(encoded, charset or "utf-8")
        params.setdefault(key, raw)
    return main.strip().lower(), params


def parse_form(content_type: str, body: bytes) -> dict[str, str | UploadedFile]:
    """The form's fields, first occurrence of each name; file parts as UploadedFile.

    A body that is not ``multipart/form-data`` has no fields (aiohttp's ``post()`` reads
    other types as empty or as text fields, which never hold a file either).

    Raises:
        MalformedForm: a multipart body without a boundary or closing delimiter.
    """
    kind, params = header_params(content_type)
    if kind != "multipart/form-data":
        return {}
    boundary = params.get("boundary")
    if not boundary:
        raise MalformedForm("multipart body without a boundary")
    delimiter = b"--" + boundary.encode("latin-1")
    chunks = body.split(delimiter)
    if len(chunks) < 2 or not chunks[-1].startswith(b"--"):
        raise MalformedForm("multipart body without its closing delimiter")
    fields: dict[str, str | UploadedFile] = {}
    for chunk in chunks[1:-1]:
        head, sep, data = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        if not sep:
            raise MalformedForm("a part without headers")
        data = data.removesuffix(b"\r\n")
        headers = _headers(head.decode("utf-8", "replace"))
        _, disposition = header_params(headers.get("content-disposition", ""))
        name = disposition.get("name")
        if name is None or name in fields:
            continue
        filename = disposition.get("filename*", disposition.get("filename"))
        if filename is None:
            fields[name] = data.decode("utf-8", "replace")
        else:
            fields[name] = UploadedFile(filename, data, headers.get(
                "content-type", "application/octet-stream"))
    return fields


def _headers(block: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.split("\r\n"):
        key, sep, value = line.partition(":")
        if sep:
            headers.setdefault(key.strip().lower(), value.strip())
    return headers
