"""The server's input, output and temp folders, with ComfyUI's path rules.

One place answers what ``folder_paths`` answers in ComfyUI (which folder a ``type``
names, what an annotated name like ``"x.png [output]"`` points to, what LoadImage lists)
and how ``POST /upload/image`` names what it stores, so the routes, validation and the
nodes cannot disagree. Naming follows ``server.py`` ``image_upload`` line for line
(facts 1-8 of the production recordings): the checks it skips are skipped here too.
"""

from __future__ import annotations

import hashlib
import mimetypes
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tower.store.files import atomic_write_bytes

mimetypes.add_type("image/webp", ".webp")  # as folder_paths does: some tables lack it

ANNOTATIONS = ("output", "input", "temp")


class UploadRefused(Exception):
    """What ``image_upload`` answers with an empty 400."""


@dataclass(frozen=True)
class UploadedFile:
    """A multipart file part."""

    filename: str
    data: bytes
    content_type: str = "application/octet-stream"


@dataclass(frozen=True)
class Folders:
    """Absolute paths of one server's folders."""

    output: Path
    input: Path
    temp: Path

    @classmethod
    def at(cls, output: Path, input: Path, temp: Path) -> Folders:
        return cls(Path(os.path.abspath(output)), Path(os.path.abspath(input)),
                   Path(os.path.abspath(temp)))

    def by_type(self, kind: str) -> Path | None:
        """``get_directory_by_type``: the folder a ``type`` names, None if none."""
        return {"output": self.output, "input": self.input, "temp": self.temp}.get(kind)

    def annotated(self, name: str) -> tuple[str, Path | None]:
        """``annotated_filepath``: strip a ``" [output]"``-style suffix, naming its folder.

        ComfyUI cuts the suffix plus one character, whatever that character is.
        """
        for kind in ANNOTATIONS:
            if name.endswith(f"[{kind}]"):
                return name[:-(len(kind) + 3)], self.by_type(kind)
        return name, None

    def annotated_path(self, name: str) -> Path:
        """``get_annotated_filepath``: where LoadImage reads ``name`` (input by default).

        No containment check, as in ComfyUI: ``"ep02/refs/x.png"`` reads a subfolder.
        """
        name, folder = self.annotated(name)
        return Path(os.path.join(folder or self.input, name))

    def exists_annotated(self, name: str) -> bool:
        """LoadImage's ``VALIDATE_INPUTS`` test (``exists_annotated_filepath``)."""
        return os.path.exists(self.annotated_path(name))

    def input_files(self, kinds: tuple[str, ...] | None = ("image",)) -> list[str]:
        """Sorted top-level files of the input folder whose extension maps to one of
        ``kinds`` (``filter_files_content_types``); all files when ``kinds`` is None."""
        try:
            names = sorted(e.name for e in os.scandir(self.input) if e.is_file())
        except FileNotFoundError:
            return []
        return _of_kinds(names, kinds)

    def input_lists(self, lists: Mapping[str, tuple[str, ...] | None]) -> dict[str, list[str]]:
        """:meth:`input_files` for each ``key -> kinds`` of ``lists``, from one read of
        the folder."""
        names = self.input_files(None)
        return {key: _of_kinds(names, kinds) for key, kinds in lists.items()}


def _of_kinds(names: list[str], kinds: tuple[str, ...] | None) -> list[str]:
    return names if kinds is None else [n for n in names if content_kind(n) in kinds]


def content_kind(name: str) -> str | None:
    """``"image"`` for ``x.png``: the part of the guessed MIME type before the slash."""
    mime, _ = mimetypes.guess_type(name, strict=False)
    return mime.split("/")[0] if mime else None


def media_type(name: str) -> str:
    """The ``Content-Type`` ``/view`` sends for a file: from its extension, with the types
    a browser would run forced to a download, as ComfyUI does."""
    mime = mimetypes.guess_type(name)[0] or "application/octet-stream"
    if mime in {"text/html", "text/html-sandboxed", "application/xhtml+xml",
                "text/javascript", "text/css"}:
        return "application/octet-stream"
    return mime


def within(base: str | Path, path: str) -> bool:
    """ComfyUI's containment test (``/view``, ``image_upload``): ``path``, made absolute
    but with links unresolved, is ``base`` or below it. Unlike
    :func:`tower.store.files.inside` it lets ``a/../b`` through, as ComfyUI does."""
    return os.path.commonpath((str(base), os.path.abspath(path))) == str(base)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def store_upload(folders: Folders, fields: dict[str, str | UploadedFile]) -> dict[str, str]:
    """Store an uploaded image like ``image_upload``; returns the JSON reply.

    Raises:
        UploadRefused: no ``image`` file part, an empty filename, or a path leaving the
            type folder (ComfyUI's empty 400).
        Exception: whatever ComfyUI would crash on (an unknown ``type``, a ``/`` in the
            filename whose folder does not exist): the caller answers its 500.
    """
    image = fields.get("image")
    if image is None:
        raise UploadRefused("no image part")
    if not isinstance(image, UploadedFile):
        raise TypeError("'str' object has no attribute 'file'")
    kind = fields.get("type")
    kind = "input" if kind is None else str(kind)
    upload_dir = folders.by_type(kind)
    if upload_dir is None:
        raise UnboundLocalError("cannot access local variable 'type_dir'")
    filename = image.filename
    if not filename:
        raise UploadRefused("empty filename")
    subfolder = str(fields.get("subfolder", ""))
    full_output_folder = os.path.join(upload_dir, os.path.normpath(subfolder))
    filepath = os.path.abspath(os.path.join(full_output_folder, filename))
    if not within(upload_dir, filepath):
        raise UploadRefused("outside the folder")
    if not os.path.exists(full_output_folder):
        os.makedirs(full_output_folder)
    stem, ext = os.path.splitext(filename)
    duplicate = False
    if fields.get("overwrite") not in ("true", "1"):
        digest = hashlib.sha256(image.data).hexdigest()
        i = 1
        while os.path.exists(filepath):
            if sha256_file(Path(filepath)) == digest:
                duplicate = True  # the same bytes under this name: nothing is written
                break
            filename = f"{stem} ({i}){ext}"
            filepath = os.path.join(full_output_folder, filename)
            i += 1
    if not duplicate:
        if not os.path.isdir(os.path.dirname(filepath)):  # open() in ComfyUI makes none
            raise FileNotFoundError(f"No such file or directory: {filepath!r}")
        atomic_write_bytes(Path(filepath), image.data)
    return {"name": filename, "subfolder": subfolder, "type": kind}
