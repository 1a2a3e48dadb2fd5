"""Atomic writes: a whole file or none, and a failure that names the file."""

from __future__ import annotations

import errno
import threading
import time
from pathlib import Path

import pytest

from tower.store.files import atomic_path, atomic_write_bytes, naming, stripe_lock


def test_a_write_that_fails_leaves_neither_file_nor_temporary_and_names_the_file(
        tmp_path: Path) -> None:
    dest = tmp_path / "ep01" / "sh010.png"
    with pytest.raises(OSError) as caught, atomic_path(dest) as tmp:
        tmp.write_bytes(b"half an ima")
        raise OSError(errno.ENOSPC, "No space left on device")   # what write(2) says
    assert caught.value.errno == errno.ENOSPC
    assert caught.value.filename == str(dest)
    assert "No space left on device" in str(caught.value) and str(dest) in str(caught.value)
    assert list(dest.parent.iterdir()) == []


def test_a_folder_where_the_file_goes_is_named_too(tmp_path: Path) -> None:
    dest = tmp_path / "sh010.png"
    dest.mkdir()
    with pytest.raises(IsADirectoryError) as caught:
        atomic_write_bytes(dest, b"png")
    assert str(dest) in str(caught.value)
    assert [p.name for p in tmp_path.iterdir()] == ["sh010.png"]


@pytest.mark.parametrize(("err", "named"), [
    (OSError(errno.ENOSPC, "No space left on device"), True),
    (PermissionError(errno.EACCES, "Permission denied"), True),
    (OSError(errno.EROFS, "Read-only file system", "/already/named"), False),
    (OSError("no errno"), False),
])
def test_naming_adds_the_path_only_where_the_error_lacks_one(err: OSError, named: bool) -> None:
    result = naming(err, Path("/data/renders/a.png"))
    assert (result is not err) is named
    assert type(result) is type(err) and result.errno == err.errno
    if named:
        assert result.filename == "/data/renders/a.png"


def test_a_stripe_lock_makes_a_second_holder_wait(tmp_path: Path) -> None:
    """Two runs storing one prompt's images: the second waits for the first to finish."""
    held = threading.Event()
    order: list[str] = []

    def first() -> None:
        with stripe_lock(tmp_path, "tower-prompt-1"):
            held.set()
            time.sleep(0.3)
            order.append("first done")

    thread = threading.Thread(target=first)
    thread.start()
    held.wait(5)
    with stripe_lock(tmp_path, "tower-prompt-1"):
        order.append("second in")
    thread.join()
    assert order == ["first done", "second in"]
    assert len(list((tmp_path / ".locks").iterdir())) == 1
