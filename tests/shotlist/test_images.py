"""Input images: checked when the list is loaded, identified by content, cropped with a warning."""

from __future__ import annotations

import io
import os
import shutil
import sys
from pathlib import Path

import pytest
from studio import LIST_YAML, studio, write_png
from typer.testing import CliRunner

from tower.planning.pipeline import plan_run
from tower.planning.planner import ServerSpec
from tower.shotlist.images import (
    MAX_IMAGE_BYTES,
    ImageError,
    _identify,
    read_image,
)
from tower.shotlist.presets import BUILTIN_PRESETS
from tower.shotlist.shots import load_shot_list
from tower.spec.cropping import aspect_warnings, crop_fraction
from tower.spec.takes import resolve_takes
from tower.store.files import DataRoot


def _keys(path: Path) -> list[str]:
    return [t.key for t in resolve_takes(load_shot_list(path))]


# ---- reading one image -----------------------------------------------------------------

def test_an_image_is_identified_by_its_content(tmp_path: Path) -> None:
    path = write_png(tmp_path / "Layout.PNG", (640, 360))
    image = read_image(path)
    assert (image.path, image.width, image.height, image.suffix) == (
        str(path), 640, 360, ".png")
    assert len(image.sha256) == 64
    assert image.upload_name == f"tower-{image.sha256}.png"
    copy = tmp_path / "elsewhere" / "copy.png"
    copy.parent.mkdir()
    shutil.copyfile(path, copy)
    assert read_image(copy).sha256 == image.sha256


def test_a_relative_path_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_png(tmp_path / "a.png")
    monkeypatch.chdir(tmp_path)
    assert read_image("a.png").path == str(tmp_path / "a.png")


def test_an_unchanged_file_is_not_hashed_again_and_an_edited_one_is(tmp_path: Path) -> None:
    path = write_png(tmp_path / "a.png", colour="white")
    first = read_image(path)
    misses = _identify.cache_info().misses
    assert read_image(path) is first
    assert _identify.cache_info().misses == misses
    write_png(path, (768, 432), colour="red")
    os.utime(path, ns=(1, 1))  # a different mtime even on a coarse clock
    edited = read_image(path)
    assert (edited.sha256 != first.sha256, edited.height) == (True, 432)


def _truncated_png(path: Path) -> None:
    write_png(path, (64, 64), colour="blue")
    path.write_bytes(path.read_bytes()[:60])


@pytest.mark.parametrize(("make", "expected"), [
    (lambda p: None, "missing file {path}"),
    (lambda p: p.mkdir(), "is a folder, not an image file: {path}"),
    (lambda p: p.write_text("a storyboard note, not a picture"), "not an image: {path}"),
    (lambda p: p.write_bytes(b""), "not an image: {path}"),
    (_truncated_png, "damaged image: {path}"),
    (lambda p: os.mkfifo(p), "not a regular file: {path}"),
])
def test_unusable_files_are_one_clear_error(tmp_path: Path, make: object, expected: str) -> None:
    path = tmp_path / "layout.png"
    make(path)  # type: ignore[operator]
    with pytest.raises(ImageError) as caught:
        read_image(path)
    assert str(caught.value).startswith(expected.format(path=path))


def test_a_file_over_50_mb_is_refused_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "huge.png"
    with path.open("wb") as handle:
        handle.truncate(MAX_IMAGE_BYTES + 1)
    with pytest.raises(ImageError, match=f"larger than 50 MB \\(50 MB\\): {path}"):
        read_image(path)


# ---- images in a shot list -------------------------------------------------------------

def test_an_edited_layout_changes_the_keys_of_its_shot_only(tmp_path: Path) -> None:
    folder = studio(tmp_path)
    before = _keys(folder / "ep.yaml")
    write_png(folder / "layouts" / "sh020.png", colour="grey")
    after = _keys(folder / "ep.yaml")
    changed = [n for n, (b, a) in enumerate(zip(before, after, strict=True)) if a != b]
    assert changed == [2]  # sh010 has two takes; sh020 is the third


def test_a_moved_or_renamed_identical_image_keeps_the_keys(tmp_path: Path) -> None:
    folder = studio(tmp_path)
    before = _keys(folder / "ep.yaml")
    (folder / "frames").mkdir()
    (folder / "layouts" / "sh020.png").rename(folder / "frames" / "corridor-final.png")
    (folder / "lineart" / "sh030.png").rename(folder / "frames" / "bridge.png")
    path = folder / "ep.yaml"
    path.write_text(LIST_YAML.replace("layouts/sh020.png", "frames/corridor-final.png")
                    .replace("lineart/sh030.png", str(folder / "frames" / "bridge.png")))
    assert _keys(path) == before


def test_a_list_from_stdin_finds_images_in_the_current_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = studio(tmp_path)
    monkeypatch.chdir(folder)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(LIST_YAML.encode())))
    takes = resolve_takes(load_shot_list("-"))
    assert [t.key for t in takes] == _keys(folder / "ep.yaml")
    assert takes[2].init_image is not None
    assert takes[2].init_image.path == str(folder / "layouts" / "sh020.png")


def test_an_image_that_vanishes_after_loading_fails_resolution_clearly(tmp_path: Path) -> None:
    folder = studio(tmp_path)
    shot_list = load_shot_list(folder / "ep.yaml")
    (folder / "lineart" / "sh030.png").unlink()
    with pytest.raises(ValueError, match=f"ep01 shot sh030: control: missing file {folder}"):
        resolve_takes(shot_list)


# ---- aspect ----------------------------------------------------------------------------

@pytest.mark.parametrize(("image", "frame", "cropped"), [
    ((768, 768), (768, 768), 0.0),
    ((1920, 1080), (768, 432), 0.0),
    ((1920, 1080), (768, 768), 1 - 1080 / 1920),
    ((768, 1024), (1024, 768), 1 - (768 / 1024) ** 2),
])
def test_crop_fraction(image: tuple[int, int], frame: tuple[int, int], cropped: float) -> None:
    assert crop_fraction(image, frame) == pytest.approx(cropped)


def test_an_image_of_another_aspect_is_a_warning_per_shot(tmp_path: Path) -> None:
    folder = studio(tmp_path)
    write_png(folder / "layouts" / "sh020.png", (1920, 1080))
    write_png(folder / "lineart" / "sh030.png", (1536, 1536))  # same aspect: no warning
    (folder / "ep.yaml").write_text(LIST_YAML.replace("prompt: corridor",
                                                      "prompt: corridor\n    takes: 3"))
    takes = resolve_takes(load_shot_list(folder / "ep.yaml"))
    assert aspect_warnings(takes) == [
        f"ep01 shot sh020: layout image {folder}/layouts/sh020.png is 1920x1080 but the take "
        "is 768x768; it will be scaled to cover the take and centre-cropped"]
    write_png(folder / "lineart" / "sh030.png", (512, 768))
    assert aspect_warnings(resolve_takes(load_shot_list(folder / "ep.yaml")))[1] == (
        f"ep01 shot sh030: control image {folder}/lineart/sh030.png is 512x768 but the take "
        "is 768x768; ControlNet will centre-crop the hint to the take's aspect")


def test_the_plan_carries_the_aspect_warnings(tmp_path: Path) -> None:
    folder = studio(tmp_path / "lists")
    write_png(folder / "layouts" / "sh020.png", (1024, 576))
    plan = plan_run(folder / "ep.yaml", presets=BUILTIN_PRESETS,
                    servers=[ServerSpec("a", 22_000.0)], data_root=DataRoot(tmp_path / "data"))
    assert [w for w in plan.warnings if "centre-cropped" in w] == [
        f"ep01 shot sh020: layout image {folder}/layouts/sh020.png is 1024x576 but the take "
        "is 768x768; it will be scaled to cover the take and centre-cropped"]


# ---- the command line ------------------------------------------------------------------

def test_tower_validate_prints_an_image_problem_on_one_line(tmp_path: Path) -> None:
    from tower.cli import app

    folder = studio(tmp_path)
    (folder / "lineart" / "sh030.png").write_text("not a picture\n")
    result = CliRunner().invoke(app, ["validate", str(folder / "ep.yaml")])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"{folder}/ep.yaml:16 shot sh030: control.image: not an image: "
        f"{folder}/lineart/sh030.png",
        "1 problem(s) found."]


def test_tower_validate_accepts_the_full_vocabulary(tmp_path: Path) -> None:
    from tower.cli import app

    folder = studio(tmp_path)
    for name in ("ep.yaml", "ep.json", "ep.csv"):
        result = CliRunner().invoke(app, ["validate", str(folder / name)])
        assert (result.exit_code, result.stderr) == (0, ""), result.output
        assert "shots: 4, takes: 5, unique images: 5" in result.stdout

