"""Output checks: flat, near-black, near-white and tiny images are suspect; renders are not."""

from __future__ import annotations

import io

from PIL import Image

from tower.runtime.checks import check_batch, pixel_reasons, size_reason
from tower.simulator.pictures import Sampled, render


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def sim_render(index: int = 0, text: str = "Aoi running across a rope bridge") -> bytes:
    return png(render(Sampled("anime-draft-sd15.safetensors", text, 7, index, 512, 512,
                              steps=20)))


def test_a_render_passes():
    assert pixel_reasons(sim_render()) == []


def test_flat_black_white_and_dark_images_are_named():
    assert pixel_reasons(png(Image.new("RGB", (512, 512), (0, 0, 0)))) == \
        ["all one colour (#000000)", "near-black"]
    assert pixel_reasons(png(Image.new("RGB", (512, 512), (255, 255, 255)))) == \
        ["all one colour (#ffffff)", "near-white"]
    assert pixel_reasons(png(Image.new("RGB", (300, 200), (40, 90, 200)))) == \
        ["all one colour (#285ac8)"]
    dark = Image.linear_gradient("L").resize((512, 512)).point(lambda v: v // 17)
    dark = dark.convert("RGB")  # a night with nothing in it: levels 0..15
    assert pixel_reasons(png(dark)) == ["near-black"]


def test_a_file_that_is_no_image_is_suspect_not_an_error():
    [reason] = pixel_reasons(b"\x89PNG\r\n\x1a\n garbage")
    assert reason.startswith("cannot be decoded")


def test_size_is_judged_against_the_siblings_median():
    assert size_reason(1000, []) is None
    assert size_reason(1000, [4000]) is None
    assert "under 20%" in size_reason(999, [5000, 5100, 90])


def test_a_batch_flags_only_its_bad_image():
    images = [sim_render(0), png(Image.new("RGB", (512, 512), (0, 0, 0))), sim_render(2)]
    verdicts = check_batch(images)
    assert [v.status for v in verdicts] == ["ok", "suspect", "ok"]
    assert verdicts[1].reason.startswith("all one colour (#000000); near-black; file ")
