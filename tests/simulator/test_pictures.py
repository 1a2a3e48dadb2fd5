"""What a simulated picture shows, by tables: every input that changes a real render
changes the pixels and equal inputs give equal pixels; takes look plainly different; a
caption a person can read names the take, seed, size, checkpoint and steps; hints
compare by their pixels."""

from __future__ import annotations

from itertools import combinations
from typing import Any

import pytest
from PIL import Image, ImageChops, ImageStat

from tower.simulator.pictures import (
    Control,
    Loaded,
    Lora,
    Resize,
    Sampled,
    Upscaled,
    backdrop,
    caption,
    draw_caption,
    fit,
    pixel_digest,
    render,
    text_size,
)


def _sampled(**changes: Any) -> Sampled:
    values: dict[str, Any] = {"checkpoint": "c.safetensors", "text": "aoi", "seed": 1,
                              "index": 0, "width": 64, "height": 64} | changes
    return Sampled(**values)


INIT = Loaded(64, 64, bytes(range(256)) * 48)
HINT = Loaded(64, 64, (b"\xff" * 3 * 4 + b"\x00" * 3 * 60) * 64)  # a white bar on black
CONTROL = Control("layout-lineart-sd15.safetensors", HINT, 0.9, 0.0, 1.0)


@pytest.mark.parametrize("changes", [
    {"seed": 2}, {"index": 1}, {"text": "ren"}, {"checkpoint": "d.safetensors"},
    {"width": 72}, {"loras": (Lora("a", 0.8),)}, {"loras": (Lora("a", 0.7),)},
    {"clip_loras": (Lora("a", 0.8),)}, {"base": INIT}, {"base": INIT, "denoise": 0.5},
    {"denoise": 0.5}, {"steps": 20}, {"controls": (CONTROL,)},
    {"width": 128, "height": 128, "base": Resize(_sampled(), 128, 128), "denoise": 0.5},
])
def test_every_input_changes_the_pixels(changes: dict[str, Any]) -> None:
    assert pixel_digest(_sampled(**changes)) != pixel_digest(_sampled())
    assert render(_sampled(**changes)).tobytes() == render(_sampled(**changes)).tobytes()


def test_an_upscaled_picture_is_drawn_the_same_each_time() -> None:
    hires = _sampled(width=96, height=96, base=Resize(_sampled(), 96, 96), denoise=0.5)
    first, again = (Upscaled(hires, "anime-x2-compact.safetensors", 2) for _ in range(2))
    assert render(first).tobytes() == render(again).tobytes()
    assert render(first).size == (192, 192)


def test_takes_and_prompts_look_plainly_different() -> None:
    """Mean difference per channel over the whole picture, caption included: full
    noise differs by about 85, one grey level by 1; a person sees 10 at a glance."""
    pictures = [render(_sampled(width=128, height=128, steps=20, **changes))
                for changes in ({}, {"index": 1}, {"index": 2}, {"index": 3},
                                {"text": "ren on the bridge"}, {"seed": 2})]
    for a, b in combinations(pictures, 2):
        assert sum(ImageStat.Stat(ImageChops.difference(a, b)).mean) / 3 > 10


@pytest.mark.parametrize(("changes", "expected"), [
    ({}, ("take 0", "aoi", ("seed 1 · 64x64", "c"))),
    ({"index": 3, "seed": 2**64 - 1, "steps": 20, "width": 512, "height": 768,
      "checkpoint": "sd15/anime-final-sd15.safetensors", "text": " aoi,\n on the  bridge "},
     ("take 3", "aoi, on the bridge",
      ("seed 18446744073709551615 · 512x768", "anime-final-sd15 · 20 steps"))),
    ({"checkpoint": "old\\model.ckpt", "steps": 4}, ("take 0", "aoi", ("seed 1 · 64x64",
                                                                        "model · 4 steps"))),
    ({"checkpoint": "", "text": ""}, ("take 0", "", ("seed 1 · 64x64", "?"))),
])
def test_caption_names_take_seed_size_checkpoint_and_steps(
        changes: dict[str, Any], expected: tuple[str, str, tuple[str, ...]]) -> None:
    assert caption(_sampled(**changes)) == expected


def test_the_caption_is_drawn_as_written() -> None:
    """OCR-free: the picture equals its backdrop with the expected words drawn on it,
    and differs from one drawn with another take or seed."""
    s = _sampled(index=2, seed=7, steps=20, width=256, height=256)

    def drawn(headline: str, facts: tuple[str, ...]) -> bytes:
        image = backdrop(s)
        draw_caption(image, headline, "aoi", facts)
        return image.tobytes()

    facts = ("seed 7 · 256x256", "c · 20 steps")
    assert render(s).tobytes() == drawn("take 2", facts)
    assert render(s).tobytes() != drawn("take 3", facts)
    assert render(s).tobytes() != drawn("take 2", ("seed 8 · 256x256", facts[1]))


def test_steps_change_only_the_caption_in_the_bottom_left_corner() -> None:
    twenty, thirty = (render(_sampled(steps=n, width=256, height=256)) for n in (20, 30))
    box = ImageChops.difference(twenty, thirty).getbbox()
    assert box is not None and box[0] < 256 // 8 and box[1] > 256 // 2


def test_a_long_prompt_is_wrapped_and_cut_to_three_lines() -> None:
    grey = Image.new("RGB", (256, 256), (128, 128, 128))

    def panel_top(prompt: str) -> tuple[int, bytes]:
        image = grey.copy()
        draw_caption(image, "take 0", prompt, ("seed 1",))
        box = ImageChops.difference(image, grey).getbbox()
        assert box is not None
        return box[1], image.tobytes()

    words = "Aoi crossing the rope bridge between two towers under a full moon " * 4
    top_short, _ = panel_top("aoi")
    top_long, long_pixels = panel_top(words + "sparks")
    assert panel_top(words + "rain") == (top_long, long_pixels)  # the tail is cut
    assert top_short - top_long == 2 * round(text_size(256, 256) * 1.2)  # two more lines


@pytest.mark.parametrize(("size", "expected"), [
    ((64, 64), 6), ((512, 512), 26), ((512, 768), 38), ((768, 512), 32), ((1024, 1536), 77),
])
def test_text_follows_the_image_and_reads_on_a_thumbnail(size: tuple[int, int],
                                                         expected: int) -> None:
    assert text_size(*size) == expected
    if min(size) >= 512:  # a 192 px thumbnail keeps letters 8 px or more
        assert expected * 192 / max(size) >= 8


def test_a_hires_pass_is_captioned_once() -> None:
    """The earlier pass is blended in without its caption, so no faded caption shows
    under the new one (denoise 0 keeps the earlier pass whole)."""
    first = _sampled(steps=20)
    hires = _sampled(width=128, height=128, steps=8, base=Resize(first, 128, 128),
                     denoise=0.0)
    expected = backdrop(first).resize((128, 128), Image.Resampling.NEAREST)
    draw_caption(expected, *caption(hires))
    assert render(hires).tobytes() == expected.tobytes()


def test_a_fitted_hint_equals_its_precropped_copy() -> None:
    wide = Loaded(96, 64, bytes(range(96)) * 64 * 3)
    cropped = render(wide).crop((16, 0, 80, 64))
    assert pixel_digest(fit(wide, 64, 64)) == pixel_digest(Loaded(64, 64, cropped.tobytes()))
    assert fit(INIT, 64, 64) is INIT
