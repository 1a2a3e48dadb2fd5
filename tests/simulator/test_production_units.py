"""Pure parts of the simulator's production nodes, by tables: upload naming, the
multipart reader, annotated names, crops and sizes, costs (pixels: test_pictures)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from simulator_helpers import multipart, png

from tower.simulator import costs
from tower.simulator.folders import Folders, UploadedFile, UploadRefused, store_upload
from tower.simulator.multipart import MalformedForm, parse_form
from tower.simulator.nodes import Latent, LatentItem, latent_upscale_by, model_scale
from tower.simulator.pictures import center_box

RED, BLUE = png((255, 0, 0)), png((0, 0, 255))


@pytest.fixture
def folders(tmp_path: Path) -> Folders:
    for name in ("output", "input", "temp"):
        (tmp_path / name).mkdir()
    return Folders.at(tmp_path / "output", tmp_path / "input", tmp_path / "temp")


def _image(filename: str, data: bytes = RED) -> UploadedFile:
    return UploadedFile(filename, data, "image/png")


# (files already in input/, form fields, reply name and subfolder, the stored bytes)
UPLOADS = [
    ({}, {"image": _image("a.png")}, ("a.png", ""), RED),
    ({"a.png": RED}, {"image": _image("a.png")}, ("a.png", ""), RED),  # same bytes: dedup
    ({"a.png": RED}, {"image": _image("a.png", BLUE)}, ("a (1).png", ""), BLUE),
    ({"a.png": RED, "a (1).png": BLUE}, {"image": _image("a.png", BLUE)}, ("a (1).png", ""),
     BLUE),
    ({"a.png": RED, "a (1).png": RED}, {"image": _image("a.png", BLUE)}, ("a (2).png", ""),
     BLUE),
    ({"a.png": RED}, {"image": _image("a.png", BLUE), "overwrite": "true"}, ("a.png", ""),
     BLUE),
    ({"a.png": RED}, {"image": _image("a.png", BLUE), "overwrite": "1"}, ("a.png", ""), BLUE),
    ({"a.png": RED}, {"image": _image("a.png", BLUE), "overwrite": "True"}, ("a (1).png", ""),
     BLUE),
    ({}, {"image": _image("a.png"), "subfolder": "ep02/refs"}, ("a.png", "ep02/refs"), RED),
    ({}, {"image": _image("..%2Fx.png")}, ("..%2Fx.png", ""), RED),
    ({}, {"image": _image("notes.txt", b"text")}, ("notes.txt", ""), b"text"),
]


@pytest.mark.parametrize(("existing", "fields", "reply", "stored"), UPLOADS)
def test_upload_naming(folders: Folders, existing: dict[str, bytes], fields: dict[str, Any],
                       reply: tuple[str, str], stored: bytes) -> None:
    for name, data in existing.items():
        (folders.input / name).write_bytes(data)
    body = store_upload(folders, fields)
    assert body == {"name": reply[0], "subfolder": reply[1], "type": "input"}
    assert (folders.input / reply[1] / reply[0]).read_bytes() == stored
    for name, data in existing.items():
        if name != reply[0]:
            assert (folders.input / name).read_bytes() == data  # others untouched


@pytest.mark.parametrize(("fields", "error"), [
    ({}, UploadRefused),
    ({"image": _image("")}, UploadRefused),
    ({"image": _image("../x.png")}, UploadRefused),
    ({"image": _image("x.png"), "subfolder": "../.."}, UploadRefused),
    ({"image": _image("x.png"), "subfolder": "/etc"}, UploadRefused),
    ({"image": _image("nodir/x.png")}, FileNotFoundError),
    ({"image": "not a file"}, TypeError),
    ({"image": _image("x.png"), "type": "models"}, UnboundLocalError),
])
def test_upload_refusals_and_crashes(folders: Folders, fields: dict[str, Any],
                                     error: type[Exception]) -> None:
    with pytest.raises(error):
        store_upload(folders, fields)
    assert list(folders.input.iterdir()) == []


@pytest.mark.parametrize("kind", ["output", "temp"])
def test_upload_to_other_folders(folders: Folders, kind: str) -> None:
    body = store_upload(folders, {"image": _image("x.png"), "type": kind})
    assert body["type"] == kind
    assert (folders.by_type(kind) / "x.png").read_bytes() == RED  # type: ignore[operator]


@pytest.mark.parametrize(("disposition", "filename"), [
    ('form-data; name="image"; filename="a b (1).png"', "a b (1).png"),
    ('form-data; name="image"; filename="..%2Fx.png"', "..%2Fx.png"),
    ('form-data; name="image"; filename="sub/x.png"', "sub/x.png"),
    ('form-data; name="image"; filename="/abs.png"', "abs.png"),  # aiohttp strips it
    ('form-data; name="image"; filename="q\\"uote.png"', 'q"uote.png'),
    ('form-data; name="image"; filename="x;y.png"', "x;y.png"),
    ("form-data; name=image; filename=plain.png", "plain.png"),
    ("form-data; name=\"image\"; filename=\"a.png\"; filename*=UTF-8''%C3%A9.png", "é.png"),
])
def test_multipart_filenames(disposition: str, filename: str) -> None:
    boundary = "XyZ"
    body = (f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + RED + f"\r\n--{boundary}--\r\n".encode()
    fields = parse_form(f"multipart/form-data; boundary={boundary}", body)
    assert fields["image"] == UploadedFile(filename, RED, "image/png")


def test_multipart_fields_and_binary_bodies() -> None:
    data = b"\r\n--not-the-boundary\r\n\x00\xff" * 3
    body, content_type = multipart([("image", ("x.png", data, "image/png")),
                                    ("type", "input"), ("overwrite", "false"),
                                    ("type", "ignored second value")])
    fields = parse_form(content_type, body)
    assert fields == {"image": UploadedFile("x.png", data, "image/png"), "type": "input",
                      "overwrite": "false"}
    assert parse_form("application/json", b"{}") == {}
    with pytest.raises(MalformedForm):
        parse_form("multipart/form-data", body)
    with pytest.raises(MalformedForm):
        parse_form(content_type, body[:-20])


@pytest.mark.parametrize(("name", "relative", "kind"), [
    ("x.png", "x.png", "input"),
    ("ep02/refs/x.png", "ep02/refs/x.png", "input"),
    ("ep02/sh010_00001_.png [output]", "ep02/sh010_00001_.png", "output"),
    ("x.png [input]", "x.png", "input"),
    ("x.png [temp]", "x.png", "temp"),
    ("x.png[output]", "x.pn", "output"),  # ComfyUI cuts one more character, whatever it is
])
def test_annotated_names(folders: Folders, name: str, relative: str, kind: str) -> None:
    assert folders.annotated_path(name) == folders.by_type(kind) / relative  # type: ignore[operator]


def test_input_listing_is_top_level_images_sorted(folders: Folders) -> None:
    for name in ("b.png", "a.jpg", "c.webp", "notes.txt", "..%2Fx.png", "noext"):
        (folders.input / name).write_bytes(RED)
    (folders.input / "sub").mkdir()
    (folders.input / "sub" / "d.png").write_bytes(RED)
    assert folders.input_files() == ["..%2Fx.png", "a.jpg", "b.png", "c.webp"]
    assert folders.input_files(None) == ["..%2Fx.png", "a.jpg", "b.png", "c.webp", "noext",
                                         "notes.txt"]


@pytest.mark.parametrize(("size", "to", "box"), [
    ((96, 64), (64, 64), (16, 0, 64, 64)),  # the recorded hint: columns 16-79
    ((64, 96), (64, 64), (0, 16, 64, 64)),
    ((64, 64), (128, 64), (0, 16, 64, 32)),
    ((100, 100), (100, 100), (0, 0, 100, 100)),
    ((101, 64), (64, 64), (18, 0, 65, 64)),  # round(18.5) is 18, as in ComfyUI
])
def test_center_crop_box(size: tuple[int, int], to: tuple[int, int],
                         box: tuple[int, int, int, int]) -> None:
    assert center_box(*size, *to) == box


@pytest.mark.parametrize(("width", "scale", "expected"), [
    (64, 1.5, 96), (72, 1.5, 112), (80, 1.25, 96), (64, 2.0, 128), (512, 1.5, 768),
])
def test_latent_upscale_rounds_like_comfyui(width: int, scale: float, expected: int) -> None:
    latent = Latent(width, width, (LatentItem(3),))
    (out,), _ = latent_upscale_by(None, "10",  # type: ignore[arg-type]
                                  {"samples": latent, "scale_by": scale,
                                   "upscale_method": "nearest-exact"})
    assert (out.width, out.height, out.indices) == (expected, expected, (3,))


@pytest.mark.parametrize(("name", "scale"), [
    ("anime-x2-compact.safetensors", 2), ("4x-UltraSharp.pth", 4),
    ("RealESRGAN_x4plus_anime_6B.pth", 4), ("x3-model.pt", 3), ("mystery.safetensors", 4),
])
def test_upscale_model_scale_from_its_name(name: str, scale: int) -> None:
    assert model_scale(name) == scale


def test_controlnet_and_upscale_costs() -> None:
    plain = costs.step_s(512, 768, 2, 0.25)
    assert costs.step_s(512, 768, 2, 0.25, controlnets=1) == pytest.approx(1.85 * plain)
    assert costs.sampling_mb(512, 768, 2, 1) == pytest.approx(
        costs.sampling_mb(512, 768, 2) + costs.CONTROLNET_MB)
    assert costs.upscale_tiles(64, 64, 1) == 1  # fact 27: one progress frame
    assert costs.upscale_tiles(1024, 1024, 2) == 18
    assert round(costs.UPSCALE_MB) == 2304
    assert costs.lora_patch_s(3.0) == pytest.approx(1.2)
    assert costs.encode_mb(512, 512, 1) < costs.decode_mb(512, 512, 1, None)

