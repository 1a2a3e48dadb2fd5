"""Re-rendering suspect images once, for presets that ask for it.

An image the output check flags (:mod:`tower.runtime.checks`: blank, flat, far smaller
than its siblings) is kept and indexed as ``suspect`` either way. A preset with
``on_suspect: rerender`` also gets one more take of that shot, rendered in the same run
with the shot's next unused noise index: the same settings and seed, other noise,
so a degenerate sample is usually replaced by a usable one. It is a take of its own
(its own render key and file), so the suspect image stays for review, and it is only
ever tried once: a retake that is suspect too is flagged, not retried.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from tower.shotlist.presets import Preset
from tower.spec.outputs import take_output_path
from tower.spec.takes import ResolvedTake

RERENDER = "rerender"


def suspect_retakes(takes: Sequence[ResolvedTake], suspect: Collection[Path],
                    renders: Path, presets: Mapping[str, Preset]) -> list[ResolvedTake]:
    """One new take per take of ``takes`` whose stored image is in ``suspect`` and whose
    preset says ``on_suspect: rerender``, at its shot's next unused noise index.

    Args:
        takes: every take of the run (their indices decide which are unused).
        suspect: paths of this run's suspect images, ``renders / take_output_path``.
        renders: the render root the paths are under.
        presets: the run's presets, by name.
    """
    flagged = set(suspect)
    next_index: dict[tuple[str, str], int] = {}
    for take in takes:
        shot = (take.episode, take.shot_id)
        next_index[shot] = max(next_index.get(shot, 0), take.take + 1)
    retakes = []
    for take in takes:
        preset = presets.get(take.preset)
        if preset is None or preset.on_suspect != RERENDER:
            continue
        if renders / take_output_path(take) not in flagged:
            continue
        shot = (take.episode, take.shot_id)
        retakes.append(replace(take, take=next_index[shot]))
        next_index[shot] += 1
    return retakes
