"""Where a take's image lives under the render root.

One name per take, derived from the take alone, so a re-run, a retry or a different
batch split writes the same file, and the index can point at it. The render key in the
name keeps takes of the same shot at different settings (another preset, a tiled
decode) from overwriting one another.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tower.takes import ResolvedTake

KEY_CHARS_IN_NAME = 12


def take_output_path(take: ResolvedTake) -> str:
    """The image's path relative to the render root.

    ``<episode>/<shot>/<shot>_t<take:02d>_<key[:12]>.png``; episode and shot ids are
    checked names (``tower.names``), so the path never leaves the render root.
    """
    key = take.key[:KEY_CHARS_IN_NAME]
    return f"{take.episode}/{take.shot_id}/{take.shot_id}_t{take.take:02d}_{key}.png"


def shared_images(pairs: Sequence[tuple[ResolvedTake, ResolvedTake]],
                  render_root: Path) -> list[tuple[str, Path]]:
    """Contact-sheet entries for takes that share another take's image.

    ``pairs`` are (take, the take rendered in its place), as in ``DedupResult.same_as``;
    a pair is shown only once its image exists, so a failed render shows nothing.
    """
    shown = []
    for take, rendered in pairs:
        path = render_root / take_output_path(rendered)
        if path.is_file():
            shown.append((f"{take.shot_id} t{take.take}={rendered.shot_id}", path))
    return shown
