"""Where a take's image lives under the render root.

One name per take, derived from the take alone, so a re-run, a retry or a different
batch split writes the same file, and the index can point at it. The render key in the
name keeps takes of the same shot at different settings (another preset, a tiled
decode) from overwriting one another.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from tower.spec.takes import ResolvedTake

KEY_CHARS_IN_NAME = 12


def take_output_path(take: ResolvedTake) -> str:
    """The image's path relative to the render root.

    ``<episode>/<shot>/<shot>_t<take:02d>_<key[:12]>.png``; episode and shot ids are
    checked names (``tower.shotlist.names``), so the path never leaves the render root.
    """
    key = take.key[:KEY_CHARS_IN_NAME]
    return f"{take.episode}/{take.shot_id}/{take.shot_id}_t{take.take:02d}_{key}.png"



def sheet_items(takes: Sequence[ResolvedTake], render_root: Path,
                served: Mapping[str, str] | None = None) -> list[tuple[str, Path]]:
    """Contact-sheet entries for ``takes`` in shot-list order, each with its image.

    A take shows its own file when it has one, else the file ``served`` names for its
    render key (an image indexed under another shot, or rendered for a take it shares
    its key with); a take with neither (a failed render) is left out.
    """
    served = served or {}
    items = []
    for take in takes:
        path = render_root / take_output_path(take)
        label = f"{take.shot_id} t{take.take}"
        if not path.is_file() and take.key in served:
            path = render_root / served[take.key]
            label += f" ={path.parent.name}" if path.parent.name != take.shot_id else ""
        if path.is_file():
            items.append((label, path))
    return items
