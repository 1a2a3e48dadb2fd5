"""Provenance chunks: inserted into the PNG stream without touching the pixels, read back
with every CRC checked, and refused clearly on anything that is not a sound PNG."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from tower.runtime.provenance import (
    FIELDS,
    PngError,
    chunk_types,
    idat_bytes,
    provenance_fields,
    read_chunks,
    stamp,
)
from tower.shotlist.shots import Shot, ShotList
from tower.spec.takes import resolve_takes


def comfy_png(size: tuple[int, int] = (64, 48)) -> bytes:
    """A PNG as ComfyUI's SaveImage writes it: pixels plus prompt and workflow tEXt."""
    info = PngInfo()
    info.add_text("prompt", '{"3": {"class_type": "KSampler"}}')
    info.add_text("workflow", '{"nodes": []}')
    image = Image.linear_gradient("L").resize(size).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def sample_fields() -> dict[str, str]:
    [take] = resolve_takes(ShotList(episode="ep01", shots=(
        Shot(id="sh010", prompt="Aoi on the rooftop", takes=1, preset="draft", seed=11),)))
    take = take.with_model_identity({f"checkpoints/{take.checkpoint}": "f" * 16})
    return provenance_fields(take, server="sim-a", prompt_id="p-1", run_id="run-1")


def test_fields_name_the_take_the_render_and_the_checkpoint_fingerprint():
    fields = sample_fields()
    assert tuple(fields) == FIELDS
    assert (fields["episode"], fields["shot"], fields["take"], fields["noise_index"]) == \
        ("ep01", "sh010", "0", "0")
    assert (fields["seed"], fields["preset"], fields["server"]) == ("11", "draft", "sim-a")
    assert fields["checkpoint_fingerprint"] == "f" * 16
    assert len(fields["render_key"]) == 64


def test_a_checkpoint_without_identity_has_an_empty_fingerprint():
    [take] = resolve_takes(ShotList(episode="ep01", shots=(
        Shot(id="sh010", prompt="Aoi", takes=1, preset="draft", seed=11),)))
    assert provenance_fields(take, server="s", prompt_id="p", run_id="r")[
        "checkpoint_fingerprint"] == ""


def test_stamp_keeps_pixels_and_comfyui_chunks_and_adds_ours_before_iend(tmp_path):
    original = comfy_png()
    fields = sample_fields() | {"preset": "ドラフト"}  # iTXt: any UTF-8 fits
    stamped = stamp(original, fields)

    assert idat_bytes(stamped) == idat_bytes(original)  # the IDAT bytes, not re-encoded
    kinds = chunk_types(stamped)
    assert kinds[-1] == "IEND" and kinds[-1 - len(FIELDS):-1] == ["iTXt"] * len(FIELDS)
    path = tmp_path / "take.png"
    path.write_bytes(stamped)
    found = read_chunks(path)
    assert found.provenance == fields
    assert found.other_text == ("prompt", "workflow")
    assert found.text["prompt"] == '{"3": {"class_type": "KSampler"}}'
    with Image.open(path) as image, Image.open(io.BytesIO(original)) as before:
        assert image.tobytes() == before.tobytes()
        assert image.text["tower:render_key"] == fields["render_key"]  # Pillow reads them


def test_stamping_again_replaces_the_fields_instead_of_adding_a_second_set():
    once = stamp(comfy_png(), sample_fields())
    twice = stamp(once, sample_fields() | {"run_id": "run-2"})
    assert chunk_types(twice).count("iTXt") == len(FIELDS)
    assert stamp(once, sample_fields()) == once


def _corrupt_crc(data: bytes, kind: bytes) -> bytes:
    at = data.index(kind) - 4
    (length,) = struct.unpack(">I", data[at:at + 4])
    crc_at = at + 8 + length
    return data[:crc_at] + bytes(4) + data[crc_at + 4:]


@pytest.mark.parametrize("damage, message", [
    (lambda d: b"GIF89a" + d[6:], "not a PNG file"),
    (lambda d: d[:-20], "past the end"),
    (lambda d: _corrupt_crc(d, b"IDAT"), "bad CRC"),
    (lambda d: _corrupt_crc(d, b"tEXt"), "bad CRC"),
    (lambda d: d[:8] + struct.pack(">I", 2**31 - 1) + d[12:], "claims"),
])
def test_a_damaged_or_foreign_file_is_refused_naming_it(tmp_path, damage, message):
    path = tmp_path / "bad.png"
    path.write_bytes(damage(comfy_png()))
    with pytest.raises(PngError, match=message) as caught:
        read_chunks(path)
    assert str(path) in str(caught.value)
    with pytest.raises(PngError, match=message):
        stamp(path.read_bytes(), {"run_id": "r"}, name="bad.png")


def test_compressed_text_is_read_within_bounds(tmp_path):
    data = comfy_png()
    body = b"big\x00\x00" + zlib.compress(b"x" * (17 * 1024 * 1024))
    chunk = struct.pack(">I", len(body)) + b"zTXt" + body + struct.pack(
        ">I", zlib.crc32(b"zTXt" + body) & 0xFFFFFFFF)
    path = tmp_path / "bomb.png"
    path.write_bytes(data[:-12] + chunk + data[-12:])
    with pytest.raises(PngError, match="cannot be read"):
        read_chunks(path)
