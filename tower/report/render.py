"""Rendering a report as markdown (files, Prefect artifact), JSON and terminal text.

The report is first laid out as sections of tables, then each format draws the same
sections, so the terminal, the markdown file and the artifact never disagree. The
markdown shows each chart after the section that discusses it; what a chart's image
points at (a file beside the markdown, or the picture itself as a ``data:`` URI) is
the caller's choice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tower.report.model import CHART_TITLES, COMPONENTS, Figures, Stats, Timing, to_plain

if TYPE_CHECKING:
    from tower.report.build import Report

NO_RUNS = "No runs in this window: nothing was rendered, so there is nothing to measure."
PRESET_TIMING = "Time per preset (seconds, successful batches)"
GPU = "GPU per server"
TREND = "Trend against the previous 7 days"
CHARTS = "Charts"

# Each chart follows the section whose figures it draws; any other goes under CHARTS.
CHART_SECTIONS: dict[str, str] = {"seconds-per-take": TREND, "gpu-busy": GPU,
                                  "time-breakdown": PRESET_TIMING}


@dataclass(frozen=True)
class Section:
    """A titled block: optional lines of text, then an optional table."""

    title: str
    lines: tuple[str, ...] = ()
    headers: tuple[str, ...] = ()
    rows: tuple[tuple[str, ...], ...] = field(default_factory=tuple)


def _n(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{x:,.{digits}f}"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.0%}"


def _yes(x: bool | None) -> str:
    return "–" if x is None else ("yes" if x else "NO")


def _stats(s: Stats) -> tuple[str, ...]:
    return (_n(s.mean), _n(s.p50), _n(s.p95), _n(s.max))


def _volume(f: Figures) -> Section:
    v = f.volume
    rows = [("runs", str(v.runs)), ("batches", str(v.batches)),
            ("batch attempts", str(v.attempts)), ("takes requested", str(v.takes_requested)),
            ("takes served from dedup", f"{v.takes_deduped} ({_pct(v.dedup_hit_rate)})"),
            ("takes rendered", str(v.takes_rendered)),
            ("takes served from ComfyUI's cache", str(v.takes_cached)),
            ("images written", str(v.images)),
            ("suspect images (output check)", str(v.suspect_images)),
            ("batches failed", str(v.batches_failed)),
            ("failed attempts", str(v.attempts_failed)), ("retries (attempt > 1)", str(v.retries)),
            ("OOM splits", str(v.oom_splits)), ("model swaps", str(v.model_swaps))]
    return Section("Volume", headers=("figure", "value"), rows=tuple(rows))


def _timing(title: str, key: str, rows: Sequence[Timing]) -> Section:
    headers = (key, "batches", "takes", "s/take mean", "p50", "p95", "max", "s/batch mean",
               "p50", "p95", "max", *(f"{c} s" for c in COMPONENTS), "img/GPU min", "target s/take",
               "p95 within")
    body = tuple((t.name, str(t.batches), str(t.takes), *_stats(t.per_take), *_stats(t.per_batch),
                  *(_n(t.breakdown.get(c)) for c in COMPONENTS), _n(t.images_per_minute),
                  _n(t.target_s, 0), _yes(t.target_met)) for t in rows)
    return Section(title, headers=headers, rows=body)


def _gpu(f: Figures) -> Section:
    headers = ("server", "busy", "idle", "util %", "img/min", "swaps", "load min", "VRAM peak MB",
               "budget MB", "peak/budget", "estimate error", "OOMs", "failed", "retries")
    rows = tuple((s.server, _pct(s.busy_share), _pct(s.idle_share), _n(s.util_mean),
                  _n(s.images_per_minute),
                  str(s.model_swaps), _n(s.model_load_s / 60), _n(s.vram_peak_mb, 0),
                  _n(s.vram_budget_mb, 0), _pct(s.vram_peak_share), _pct(s.vram_estimate_error),
                  str(s.ooms), str(s.failures), str(s.retries)) for s in f.loads)
    return Section(GPU, headers=headers, rows=rows)


def _vram(f: Figures) -> Section:
    headers = ("preset", "batches", "VRAM peak MB", "budget MB", "peak/budget",
               "estimate error", "OOMs", "largest batch", "tiled VAE")
    rows = tuple((v.preset, str(v.batches), _n(v.peak_mb, 0), _n(v.budget_mb, 0),
                  _pct(v.peak_share), _pct(v.estimate_error), str(v.ooms), str(v.max_batch_used),
                  "yes" if v.vae_tiled else "no") for v in f.vram)
    return Section("VRAM per preset (peak vs budget vs the VRAM model's estimate)",
                   headers=headers, rows=rows)


def _runs(f: Figures) -> Section:
    headers = ("run", "flow", "episode", "status", "started", "wall s", "requested", "deduped",
               "rendered", "failed", "p95 s/take vs seed target")
    rows = tuple((r.run_id, r.flow, r.episode, r.status, r.started_at[:16], _n(r.wall_s),
                  str(r.takes_requested), str(r.takes_deduped), str(r.takes_rendered),
                  str(r.takes_failed),
                  ", ".join(f"{t.preset} {_n(t.p95_take_s)}/{_n(t.target_s, 0)} {_yes(t.met)}"
                            for t in r.targets) or "–") for r in f.runs)
    return Section("Runs", headers=headers, rows=rows)


def _trend_value(metric: str, x: float | None) -> str:
    return _pct(x) if ("rate" in metric or "share" in metric) else _n(x)


def _trend(report: Report) -> Section:
    rows = tuple((t.metric, _trend_value(t.metric, t.current), _trend_value(t.metric, t.previous),
                  _trend_value(t.metric, t.delta), t.arrow,
                  {True: "better", False: "worse", None: ""}[t.improved])
                 for t in report.trends)
    return Section(TREND, ("Counts are scaled to this window.",),
                   ("figure", "now", "previous 7 days", "delta", "", ""), rows)


def sections(report: Report) -> list[Section]:
    """The report laid out as titled tables, in reading order."""
    f = report.figures
    w = f.window
    head = Section(f"Tower performance report {w.label}",
                   (f"Window: {w.start:%Y-%m-%d %H:%M} to {w.end:%Y-%m-%d %H:%M} UTC.",))
    if report.skipped:
        head = Section(head.title, (*head.lines, "", *_skipped(report.skipped)))
    if f.empty:
        return [head, Section("No runs", (NO_RUNS,)), _trend(report)]
    bottlenecks = Section("Bottleneck per server", headers=("server", "bottleneck", "evidence",
                                                            "also"),
                          rows=tuple((v.server, v.bottleneck, v.evidence, ", ".join(v.also))
                                     for v in report.verdicts))
    recs = Section("Recommendations", tuple(f"{i}. {r.text}" for i, r in
                                            enumerate(report.recommendations, 1))
                   or ("Nothing to change: no threshold was crossed.",))
    return [head, _volume(f), bottlenecks, recs,
            _timing(PRESET_TIMING, "preset", f.presets),
            _timing("Time per server (seconds, successful batches)", "server", f.servers),
            _gpu(f), _vram(f), _runs(f), _trend(report)]


def _skipped(parts: Sequence[str]) -> tuple[str, ...]:
    return (f"**{len(parts)} data file(s) could not be read; their rows are missing from "
            "every figure below** (`tower index check` names them, `tower index repair` "
            "sets them aside):", *(f"- `{part}`" for part in parts))


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_sections(parts: Sequence[Section],
                      after: Mapping[str, Sequence[str]] | None = None) -> str:
    """Sections as GitHub-flavoured markdown, ``after[title]``'s blocks after each one."""
    out: list[str] = []
    for i, s in enumerate(parts):
        out.append(("# " if i == 0 else "## ") + s.title)
        out.append("")
        if s.lines:
            out.extend([*s.lines, ""])
        if s.headers:
            out.append("| " + " | ".join(_md_cell(h) for h in s.headers) + " |")
            out.append("|" + "---|" * len(s.headers))
            out.extend("| " + " | ".join(_md_cell(c) for c in row) + " |" for row in s.rows)
            out.append("")
        for block in (after or {}).get(s.title, ()):
            out.extend([block, ""])
    return "\n".join(out)


def chart_image(kind: str, source: str) -> str:
    """A markdown image of chart ``kind`` at ``source`` (a relative file name), titled."""
    return f"![{CHART_TITLES.get(kind, kind)}]({source})"


def render_markdown(report: Report, charts: Mapping[str, str] | None = None) -> str:
    """The report as markdown, with ``charts`` (kind -> a markdown block showing it).

    Each block follows the section that discusses its chart (:data:`CHART_SECTIONS`);
    one whose section this report lacks goes into a closing "Charts" section, so a
    chart given is never dropped. Without charts the report has no images.
    """
    parts = sections(report)
    titles = {s.title for s in parts}
    after: dict[str, list[str]] = {}
    for kind, block in (charts or {}).items():
        title = CHART_SECTIONS.get(kind, CHARTS)
        after.setdefault(title if title in titles else CHARTS, []).append(block)
    if CHARTS in after:
        parts.append(Section(CHARTS))
    return markdown_sections(parts, after)


def render_terminal(report: Report) -> str:
    """The report as aligned plain text for a terminal."""
    out: list[str] = []
    for s in sections(report):
        out.extend([s.title, "=" * len(s.title), *s.lines])
        if s.headers:
            table = [s.headers, *s.rows]
            widths = [max(len(row[i]) for row in table) for i in range(len(s.headers))]
            for row in table:
                out.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))
                           .rstrip())
        out.append("")
    return "\n".join(out)


def render_json(report: Report) -> dict[str, Any]:
    """The report as JSON-ready data (the ``.json`` file)."""
    f = report.figures
    data = {
        "window": {"start": f.window.start.isoformat(), "end": f.window.end.isoformat(),
                   "label": f.window.label},
        "empty": f.empty,
        "figures": to_plain(f),
        "verdicts": to_plain(report.verdicts),
        "recommendations": to_plain(report.recommendations),
        "trends": [{**to_plain(t), "delta": t.delta, "arrow": t.arrow, "improved": t.improved}
                   for t in report.trends],
        "daily_seconds_per_take": to_plain(report.daily),
        "skipped_parts": list(report.skipped),
    }
    for load in data["figures"]["loads"]:
        load["idle_share"] = None if load["busy_share"] is None else 1 - load["busy_share"]
    return data
