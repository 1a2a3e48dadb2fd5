"""Where a take's image lives under the render root, and what a contact sheet shows of it.

One name per take, derived from the take alone, so a re-run, a retry or a different
batch split writes the same file, and the index can point at it. The render key in the
name keeps takes of the same shot at different settings (another preset, a tiled
decode) from overwriting one another.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from tower.spec.takes import ResolvedTake

KEY_CHARS_IN_NAME = 12


def take_output_path(take: ResolvedTake) -> str:
    """The image's path relative to the render root.

    ``<episode>/<shot>/<shot>_t<take:02d>_<key[:12]>.png``; episode and shot ids are
    checked names (``tower.shotlist.names``), so the path never leaves the render root.
    """
    key = take.key[:KEY_CHARS_IN_NAME]
    return f"{take.episode}/{take.shot_id}/{take.shot_id}_t{take.take:02d}_{key}.png"



# What a contact-sheet tile says about its take. ``failed``: the run stored no image for
# it; ``cancelled``: the run stopped before it was rendered; ``suspect``: an image an
# output check flagged (drawn with a coloured frame and the word).
SheetStatus = Literal["ok", "suspect", "failed", "cancelled"]
SHEET_STATUSES: tuple[SheetStatus, ...] = get_args(SheetStatus)


@dataclass(frozen=True)
class SheetItem:
    """One tile of a contact sheet: a take's label, its image if it has one, its status.

    ``shot`` groups tiles when a long episode is split over several sheets: a shot's
    takes stay on one sheet.
    """

    label: str
    path: Path | None
    status: SheetStatus = "ok"
    shot: str = ""

    def __post_init__(self) -> None:
        if self.status not in SHEET_STATUSES:
            raise ValueError(f"sheet item {self.label!r}: unknown status {self.status!r}")


def sheet_items(takes: Sequence[ResolvedTake], render_root: Path,
                served: Mapping[str, str] | None = None, *,
                missing: SheetStatus = "failed",
                suspect: Collection[str] = ()) -> list[SheetItem]:
    """Contact-sheet tiles for ``takes`` in shot-list order, one per take.

    A take shows its own file when it has one, else the file ``served`` names for its
    render key (an image indexed under another shot, or rendered for a take it shares
    its key with). A take with neither gets a tile of status ``missing`` (``failed``
    after a finished run, ``cancelled`` after a cancelled one) and no image, so a hole in
    the night's work shows instead of vanishing. Takes whose render key is in
    ``suspect`` keep their image but are marked ``suspect``.
    """
    served = served or {}
    items = []
    for take in takes:
        path: Path | None = render_root / take_output_path(take)
        label = f"{take.shot_id} t{take.take}"
        if not path.is_file() and take.key in served:
            path = render_root / served[take.key]
            label += f" ={path.parent.name}" if path.parent.name != take.shot_id else ""
        if path.is_file():
            status: SheetStatus = "suspect" if take.key in suspect else "ok"
        else:
            path, status = None, missing
        items.append(SheetItem(label, path, status, take.shot_id))
    return items
