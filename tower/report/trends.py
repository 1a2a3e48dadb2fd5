"""Headline figures of a window against the previous 7 days.

Counts are scaled to the current window's length (a 24-hour report compares with the
daily average of the week before); shares and seconds compare as they are.
"""

from __future__ import annotations

from tower.report.model import Figures, TrendRow


def _scaled(value: int, previous: Figures, current: Figures) -> float:
    return value * (current.window.length / previous.window.length)


def _failure_share(f: Figures) -> float | None:
    return f.volume.attempts_failed / f.volume.attempts if f.volume.attempts else None


def trends(current: Figures, previous: Figures) -> tuple[TrendRow, ...]:
    """Rows for volume, dedup, failures, seconds per take per preset and busy share."""
    cv, pv = current.volume, previous.volume
    rows = [
        TrendRow("images", cv.images, _scaled(pv.images, previous, current), True),
        TrendRow("takes rendered", cv.takes_rendered,
                 _scaled(pv.takes_rendered, previous, current), True),
        TrendRow("dedup hit rate", cv.dedup_hit_rate, pv.dedup_hit_rate, True),
        TrendRow("failed attempts share", _failure_share(current), _failure_share(previous),
                 False),
    ]
    before = {t.name: t for t in previous.presets}
    for t in current.presets:
        old = before.get(t.name)
        rows.append(TrendRow(f"{t.name} mean s/take", t.per_take.mean,
                             old.per_take.mean if old else None, False))
        rows.append(TrendRow(f"{t.name} p95 s/take", t.per_take.p95,
                             old.per_take.p95 if old else None, False))
    busy_before = {s.server: s.busy_share for s in previous.loads}
    for s in current.loads:
        rows.append(TrendRow(f"{s.server} GPU busy share", s.busy_share,
                             busy_before.get(s.server), True))
    return tuple(rows)
