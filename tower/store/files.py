"""Where the pipeline writes, and how: one data root, atomic writes only.

Everything the pipeline writes lives under one data root (renders, output index,
metrics, reports). Paths that come from outside (a ComfyUI response, a shot id) are
joined through :meth:`DataRoot.inside`, which refuses anything that would escape it.
Files others read are written to a temporary name in the same folder and renamed, so
a reader or a crash never sees half a file. They get the permissions a plain ``open()``
would give under the process umask (0644 under the usual 022): a studio's compositors,
review tools and other workers must be able to read what the pipeline renders.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DATA_ROOT = Path("data")


class UnsafePathError(ValueError):
    """A relative path would leave the folder it must stay in."""


def inside(base: Path, relative: str | os.PathLike[str]) -> Path:
    """``base / relative``, refusing absolute paths, ``..`` and anything resolving outside."""
    rel = Path(relative)
    if rel.is_absolute() or any(part == ".." for part in rel.parts) or str(relative) == "":
        raise UnsafePathError(f"refusing path {str(relative)!r}: must stay inside {base}")
    target = (base / rel).resolve()
    if not target.is_relative_to(base.resolve()):
        raise UnsafePathError(f"refusing path {str(relative)!r}: resolves outside {base}")
    return base / rel


@dataclass(frozen=True)
class DataRoot:
    """The folder layout under the data root."""

    root: Path = DEFAULT_DATA_ROOT

    @property
    def renders(self) -> Path:
        return self.root / "renders"

    @property
    def index(self) -> Path:
        return self.root / "index"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    def inside(self, relative: str | os.PathLike[str]) -> Path:
        """A path under the data root; see :func:`inside`."""
        return inside(self.root, relative)


LOCK_STRIPES = 64


@contextmanager
def stripe_lock(root: Path, name: str) -> Iterator[None]:
    """Hold an exclusive lock shared by every process that asks for ``name`` under the
    data root ``root`` (``flock`` on one of :data:`LOCK_STRIPES` files in ``.locks/``).

    Two runs that adopted the same ComfyUI prompt store its images one after the other,
    so the second finds them stored and indexed instead of stamping and indexing them
    again. A fixed set of lock files: nothing to clean up, and unrelated names rarely
    wait for each other (a stripe is held for one batch's download).
    """
    folder = root / ".locks"
    folder.mkdir(parents=True, exist_ok=True)
    stripe = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big") % LOCK_STRIPES
    fd = os.open(folder / f"{stripe:02d}.lock", os.O_CREAT | os.O_RDWR, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)      # closing releases the lock


def _new_temporary(dest: Path) -> Path:
    """Create an empty, uniquely named hidden file next to ``dest``.

    ``tempfile.mkstemp`` would create it 0600 whatever the umask; mode 0666 here lets
    the umask decide, as for any ordinary file.
    """
    while True:
        tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(6)}.tmp")
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            continue
        return tmp


@contextmanager
def atomic_path(dest: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``dest``; rename it to ``dest`` if the block succeeds."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = _new_temporary(dest)
    except OSError as err:
        raise naming(err, dest) from err
    try:
        yield tmp
        os.replace(tmp, dest)
    except OSError as err:
        raise naming(err, dest) from err
    finally:
        tmp.unlink(missing_ok=True)


def naming(err: OSError, path: Path) -> OSError:
    """``err`` itself if it names a file, else the same error naming ``path``.

    A full disk answers a ``write`` with ``[Errno 28] No space left on device`` and no
    file name; the run's failure must say which file (and so which disk) it was.
    """
    if err.filename is not None or err.errno is None:
        return err
    return type(err)(err.errno, err.strerror or str(err), str(path))


def atomic_write_bytes(dest: Path, data: bytes) -> None:
    """Write ``data`` to ``dest`` atomically."""
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(dest: Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``dest`` atomically."""
    atomic_write_bytes(dest, text.encode("utf-8"))
