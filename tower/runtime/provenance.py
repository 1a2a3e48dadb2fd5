"""Provenance in each stored PNG: which take, render and run made it, written into the file.

An image copied out of the render root (onto a review machine, into an edit) still says
where it came from: its render key, episode, shot, take, seed, noise index, preset,
checkpoint and the checkpoint's fingerprint, the server, ComfyUI's prompt id and the
run id. ``tower inspect FILE`` reads them back and checks them against the index.

Format: one uncompressed ``iTXt`` chunk per field (UTF-8, so any file or preset name
fits), keyword ``tower:<field>`` (:data:`FIELDS`), inserted right before ``IEND``.
Separate chunks rather than one JSON blob so that ordinary tools (``exiftool``,
``identify -verbose``, Pillow's ``Image.text``) show each field by name. ComfyUI's own
``prompt``/``workflow`` chunks and every other chunk are copied byte for byte, IDAT
included: nothing is decoded or re-encoded, so the pixels are exactly ComfyUI's.
Stamping a file that already carries ``tower:`` chunks replaces them (a re-stamp never
piles up two sets).

Reading (:func:`read_chunks`) walks the chunk stream with bounds: the signature must be
PNG's, each chunk must fit in the file, every CRC must match, and the stream must end
with ``IEND``; anything else is a :class:`PngError` naming the file and the offset.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tower.spec.takes import ResolvedTake

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PREFIX = "tower:"
# The fields, in the order they are written; each is the chunk keyword after PREFIX.
FIELDS = ("render_key", "episode", "shot", "take", "seed", "noise_index", "preset",
          "checkpoint", "checkpoint_fingerprint", "server", "prompt_id", "run_id")
TEXT_CHUNKS = (b"tEXt", b"iTXt", b"zTXt")
# A text chunk larger than this is not read into memory (ComfyUI's workflow chunk of a
# large graph is some hundred KB; nothing legitimate comes near this).
MAX_TEXT_CHUNK = 16 * 1024 * 1024
_HEADER = struct.Struct(">I4s")


class PngError(ValueError):
    """A file that is not a well-formed PNG (message names the file and what is wrong)."""


@dataclass(frozen=True)
class Chunk:
    """One chunk of a PNG stream: its type, where it starts, and its data length."""

    type: bytes
    offset: int
    length: int

    @property
    def end(self) -> int:
        """Offset just after the chunk (length, type, data, CRC)."""
        return self.offset + 12 + self.length


def provenance_fields(take: ResolvedTake, *, server: str, prompt_id: str,
                      run_id: str) -> dict[str, str]:
    """The values written into a take's PNG, keyed like :data:`FIELDS`.

    The noise index is the take index: the graph slices latent ``take`` out of a batch
    of the seed's noise (:mod:`tower.spec.graph`), so a take's noise does not depend on
    the batch it was rendered in. The checkpoint's fingerprint comes from
    ``take.model_identity`` and is empty when the server did not say.
    """
    identity = dict(take.model_identity)
    return {
        "render_key": take.key, "episode": take.episode, "shot": take.shot_id,
        "take": str(take.take), "seed": str(take.seed), "noise_index": str(take.take),
        "preset": take.preset, "checkpoint": take.checkpoint,
        "checkpoint_fingerprint": identity.get(f"checkpoints/{take.checkpoint}", ""),
        "server": server, "prompt_id": prompt_id, "run_id": run_id,
    }


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(
        ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def itxt_chunk(keyword: str, text: str) -> bytes:
    """An uncompressed iTXt chunk (no language tag, no translated keyword)."""
    key = keyword.encode("latin-1")
    if not 1 <= len(key) <= 79:
        raise ValueError(f"PNG keyword {keyword!r} must be 1 to 79 characters")
    return _chunk(b"iTXt", key + b"\x00\x00\x00\x00\x00" + text.encode("utf-8"))


def _walk(data: bytes | memoryview, name: str, *, check_crc: bool = True) -> list[Chunk]:
    """The chunks of a PNG held in ``data``, checked as the module docstring says."""
    if bytes(data[:8]) != PNG_SIGNATURE:
        raise PngError(f"{name}: not a PNG file (starts {bytes(data[:8])!r})")
    chunks, offset, size = [], 8, len(data)
    while True:
        if offset + 12 > size:
            raise PngError(f"{name}: truncated PNG: chunk header at byte {offset} "
                           f"past the end ({size} bytes), no IEND")
        length, kind = _HEADER.unpack_from(data, offset)
        end = offset + 12 + length
        if length > 0x7FFFFFFF or end > size:
            raise PngError(f"{name}: chunk {kind!r} at byte {offset} claims {length} bytes, "
                           f"past the end of the file ({size} bytes)")
        if check_crc:
            (crc,) = struct.unpack_from(">I", data, end - 4)
            if zlib.crc32(data[offset + 4:end - 4]) & 0xFFFFFFFF != crc:
                raise PngError(f"{name}: chunk {kind!r} at byte {offset} has a bad CRC")
        chunks.append(Chunk(kind, offset, length))
        offset = end
        if kind == b"IEND":
            break
    if chunks[0].type != b"IHDR":
        raise PngError(f"{name}: first chunk is {chunks[0].type!r}, not IHDR")
    return chunks


def _keyword(data: bytes | memoryview, chunk: Chunk) -> str:
    body = bytes(data[chunk.offset + 8:chunk.offset + 8 + min(chunk.length, 80)])
    return body.split(b"\x00", 1)[0].decode("latin-1")


def stamp(data: bytes, fields: Mapping[str, str], name: str = "PNG") -> bytes:
    """``data`` with one ``tower:<field>`` iTXt chunk per field inserted before IEND.

    Every other chunk is copied unchanged (ComfyUI's ``prompt``/``workflow`` included);
    ``tower:`` chunks already present are dropped first.

    Raises:
        PngError: ``data`` is not a well-formed PNG (naming ``name``).
    """
    view = memoryview(data)
    chunks = _walk(view, name)
    stamped = [itxt_chunk(PREFIX + key, value) for key, value in fields.items()]
    parts: list[bytes | memoryview] = [view[:8]]
    start = 8  # copy runs of kept chunks in one slice each
    for chunk in chunks:
        drop = chunk.type in TEXT_CHUNKS and _keyword(view, chunk).startswith(PREFIX)
        if drop or chunk.type == b"IEND":
            parts.append(view[start:chunk.offset])
            start = chunk.end
        if chunk.type == b"IEND":
            parts += stamped
            parts.append(view[chunk.offset:chunk.end])
    return b"".join(parts)


def _inflate(data: bytes) -> bytes:
    """zlib data, at most :data:`MAX_TEXT_CHUNK` bytes of it (a zip bomb stops there)."""
    inflater = zlib.decompressobj()
    out = inflater.decompress(data, MAX_TEXT_CHUNK)
    if inflater.unconsumed_tail:
        raise zlib.error(f"inflates past {MAX_TEXT_CHUNK} bytes")
    return out


def _text_value(kind: bytes, body: bytes) -> tuple[str, str]:
    """(keyword, text) of a tEXt, zTXt or iTXt chunk's data."""
    keyword, _, rest = body.partition(b"\x00")
    key = keyword.decode("latin-1")
    if kind == b"tEXt":
        return key, rest.decode("latin-1")
    if kind == b"zTXt":
        return key, _inflate(rest[1:]).decode("latin-1")
    compressed, rest = rest[0], rest[2:]  # compression flag, method
    _language, _, rest = rest.partition(b"\x00")
    _translated, _, text = rest.partition(b"\x00")
    return key, (_inflate(text) if compressed else text).decode("utf-8", "replace")


@dataclass(frozen=True)
class PngText:
    """What :func:`read_chunks` found: every chunk type in order and the text chunks."""

    chunk_types: tuple[str, ...]
    text: dict[str, str]

    @property
    def provenance(self) -> dict[str, str]:
        """The ``tower:`` fields, without the prefix (empty when the file has none)."""
        return {k[len(PREFIX):]: v for k, v in self.text.items() if k.startswith(PREFIX)}

    @property
    def other_text(self) -> tuple[str, ...]:
        """Keywords of the text chunks that are not ours (ComfyUI's ``prompt``, ``workflow``)."""
        return tuple(k for k in self.text if not k.startswith(PREFIX))


def read_chunks(path: Path) -> PngText:
    """The chunk types and text chunks of the PNG at ``path``, every CRC checked.

    Raises:
        PngError: not a PNG, truncated, a bad CRC, or a text chunk over
            :data:`MAX_TEXT_CHUNK` (the message names ``path``).
        OSError: the file cannot be read.
    """
    data = path.read_bytes()
    chunks = _walk(data, str(path))
    text: dict[str, str] = {}
    for chunk in chunks:
        if chunk.type not in TEXT_CHUNKS:
            continue
        if chunk.length > MAX_TEXT_CHUNK:
            raise PngError(f"{path}: text chunk at byte {chunk.offset} is {chunk.length} "
                           f"bytes, over the {MAX_TEXT_CHUNK} read")
        body = data[chunk.offset + 8:chunk.end - 4]
        try:
            key, value = _text_value(chunk.type, body)
        except (zlib.error, IndexError) as err:
            raise PngError(f"{path}: text chunk at byte {chunk.offset} cannot be read: "
                           f"{err}") from err
        text.setdefault(key, value)
    return PngText(tuple(c.type.decode("latin-1") for c in chunks), text)


def chunk_types(data: bytes, name: str = "PNG") -> list[str]:
    """The chunk types of ``data`` in order (for tests and diagnostics)."""
    return [c.type.decode("latin-1") for c in _walk(data, name)]


def idat_bytes(data: bytes, name: str = "PNG") -> bytes:
    """The concatenated IDAT data: equal before and after :func:`stamp`."""
    return b"".join(data[c.offset + 8:c.end - 4] for c in _walk(data, name)
                    if c.type == b"IDAT")
