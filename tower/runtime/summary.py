"""What a render run did, tallied as batches finish, and its end-of-run summary.

The flows feed every batch outcome in; the summary gives the counts the run log
records (rendered / skipped as duplicates / failed, retries, OOM splits, model swaps),
the images the output check flagged as suspect, and the figures the closing artifact
shows (wall time, images per minute, GPU busy share). The artifact's table and the
flow's final state message name where the night's images came from in the same words
(:data:`SOURCE_WORDS`, :func:`count_line`). Nothing here names a file by its local
absolute path: sheets are named relative to the data root, as links under the studio's
URL for it when one is given. Pure: times are passed in.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from tower.runtime.execute import BatchOutcome
from tower.runtime.runs import artifact_key
from tower.spec.outputs import SheetItem
from tower.store.metrics import RunRecord

ImageSource = Literal["rendered", "adopted", "cached"]
# Where a stored image came from, in the words of the summary table and the state message.
SOURCE_WORDS: dict[ImageSource, str] = {
    "rendered": "rendered",
    "adopted": "adopted from a server",
    "cached": "from ComfyUI's cache",
}
FROM_INDEX = "from the index"


def image_source(outcome: BatchOutcome) -> ImageSource:
    """Where a finished batch's images came from.

    ``execute_batch`` calls a batch ``cached`` when the server did no new work for it:
    either every node came from ComfyUI's cache (the prompt was queued, so it has a queue
    time), or a prompt that had already finished under the batch's id was adopted from
    the server's history without queueing anything (no queue time).
    """
    if outcome.status != "cached":
        return "rendered"
    return "cached" if outcome.metrics.queued_at is not None else "adopted"


@dataclass
class RunTally:
    """Running totals of one flow run.

    ``images`` are the contact sheet's tiles: the takes stored as batches finish, then
    (from the flow) every take of the run, failed ones included.
    """

    takes_requested: int = 0
    takes_deduped: int = 0
    takes_rendered: int = 0
    takes_adopted: int = 0
    takes_cached: int = 0
    takes_failed: int = 0
    batches_done: int = 0
    batches_failed: int = 0
    oom_splits: int = 0
    retries: int = 0
    busy_s: dict[str, float] = field(default_factory=dict)
    images: list[SheetItem] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    # Stored images the output check flagged (tower.runtime.checks): path -> reason. They
    # count among the stored ones too; this says which to look at first.
    suspect: dict[Path, str] = field(default_factory=dict)

    def add(self, outcomes: Sequence[BatchOutcome], server: str) -> None:
        """Count one successful ``render_batch``: one outcome per (possibly split) piece."""
        self.batches_done += 1
        self.oom_splits += max(0, len(outcomes) - 1)
        for outcome in outcomes:
            count = len(outcome.images)
            source = image_source(outcome)
            if source == "adopted":
                self.takes_adopted += count
            elif source == "cached":
                self.takes_cached += count
            else:
                self.takes_rendered += count
            seconds = outcome.metrics.execution_s or 0.0
            self.busy_s[server] = self.busy_s.get(server, 0.0) + seconds
            for row, path in zip(outcome.index_rows, outcome.images, strict=False):
                if row.status == "suspect":
                    self.suspect[path] = row.suspect_reason or "suspect"
            self.images += self.flag_suspects(
                SheetItem(f"{t.shot_id} t{t.take}", path, shot=t.shot_id)
                for t, path in zip(outcome.batch.takes, outcome.images, strict=False))

    def flag_suspects(self, items: Iterable[SheetItem]) -> list[SheetItem]:
        """``items`` with those showing a suspect image of this run marked ``suspect``.

        The flow redraws its tiles from the shot list at the end of a run (failed takes
        included); this keeps the output check's verdicts on them. Both name an image
        ``<render root>/<take_output_path>``, so the paths compare as they are.
        """
        return [replace(item, status="suspect")
                if item.status == "ok" and item.path in self.suspect else item
                for item in items]

    @property
    def takes_suspect(self) -> int:
        """Stored images the output check flagged as suspect."""
        return len(self.suspect)

    def fail(self, label: str, takes: int, error: str) -> None:
        """Count a batch that finally failed."""
        self.batches_failed += 1
        self.takes_failed += takes
        self.failures.append(f"{label}: {error}")

    @property
    def stored(self) -> int:
        """Images this run stored: rendered, adopted from a server or from ComfyUI's cache."""
        return self.takes_rendered + self.takes_adopted + self.takes_cached

    def by_source(self) -> dict[ImageSource, int]:
        return {"rendered": self.takes_rendered, "adopted": self.takes_adopted,
                "cached": self.takes_cached}

    def gpu_busy_share(self, wall_s: float, servers: int) -> float | None:
        """Share of the servers' wall time spent executing prompts (0..1)."""
        if wall_s <= 0 or servers <= 0:
            return None
        return min(1.0, sum(self.busy_s.values()) / (wall_s * servers))

    def images_per_minute(self, wall_s: float) -> float | None:
        return self.stored / (wall_s / 60) if wall_s > 0 else None


def count_line(tally: RunTally) -> str:
    """Every image of the night in the summary table's words, for the final state message.

    ``43 images stored (41 rendered, 2 from ComfyUI's cache), 2 from the index, 0 failed``:
    the sources that stored none are left out of the brackets.
    """
    sources = [f"{n} {SOURCE_WORDS[source]}" for source, n in tally.by_source().items() if n]
    noun = "image" if tally.stored == 1 else "images"
    stored = f"{tally.stored} {noun} stored" + (f" ({', '.join(sources)})" if sources else "")
    line = f"{stored}, {tally.takes_deduped} {FROM_INDEX}, {tally.takes_failed} failed"
    return line + (f", {tally.takes_suspect} suspect" if tally.takes_suspect else "")


def without_local_paths(text: str, roots: Collection[Path]) -> str:
    """``text`` with each of ``roots`` (absolute or as given) cut off the paths under it.

    Error messages can quote the file a write failed on; a reader on another machine
    gets the path relative to the data root instead.
    """
    for root in sorted({str(r).rstrip("/") for r in roots if r.is_absolute()},
                       key=len, reverse=True):
        text = text.replace(root + "/", "")
    return text


def run_status(tally: RunTally, cancelled: bool = False) -> str:
    """The RUNS_SCHEMA status: cancelled, failed when any batch finally failed, else completed."""
    if cancelled:
        return "cancelled"
    return "failed" if tally.batches_failed else "completed"


@dataclass(frozen=True)
class RunInfo:
    """The fixed facts of a run, repeated by its run-log row and its summary."""

    run_id: str
    flow_run_id: str | None
    flow: str
    episode: str
    preset: str | None
    servers: tuple[str, ...]
    started: datetime
    batches: int
    model_swaps: Mapping[str, int]


def run_record(info: RunInfo, tally: RunTally, status: str, finished: datetime) -> RunRecord:
    """The run log's row: takes found on a server (adopted or cached) count as rendered."""
    return RunRecord(
        run_id=info.run_id, flow_run_id=info.flow_run_id, flow=info.flow,
        episode=info.episode, preset=info.preset, servers=list(info.servers),
        started_at=info.started, finished_at=finished,
        takes_requested=tally.takes_requested, takes_deduped=tally.takes_deduped,
        takes_rendered=tally.stored,
        takes_failed=tally.takes_failed, batches=info.batches, retries=tally.retries,
        oom_splits=tally.oom_splits, model_swaps=sum(info.model_swaps.values()), status=status)


@dataclass(frozen=True)
class SheetRef:
    """One contact sheet as the summary names it.

    ``path`` is relative to the data root (``renders/ep01/contact-sheets/<run>.png``);
    ``key`` and ``url`` name the sheet's own artifact when a run has several sheets
    (``url`` its page in the Prefect UI, when the UI's address is known).
    """

    path: str
    first_shot: str
    last_shot: str
    takes: int
    marked: Mapping[str, int] = field(default_factory=dict)
    key: str | None = None
    url: str | None = None

    @property
    def shots(self) -> str:
        if self.first_shot == self.last_shot:
            return self.first_shot
        return f"{self.first_shot} to {self.last_shot}"

    @property
    def contents(self) -> str:
        """``48 takes`` or ``48 takes, 2 failed, 1 suspect``."""
        noun = "take" if self.takes == 1 else "takes"
        return ", ".join([f"{self.takes} {noun}",
                          *(f"{n} {status}" for status, n in self.marked.items() if n)])


def sheet_ref(items: Sequence[SheetItem], path: str, *, key: str | None = None,
              url: str | None = None) -> SheetRef:
    """The :class:`SheetRef` of the sheet drawn from ``items`` and written to ``path``."""
    marked: dict[str, int] = {}
    for item in items:
        if item.status != "ok":
            marked[item.status] = marked.get(item.status, 0) + 1
    return SheetRef(path, items[0].shot or items[0].label, items[-1].shot or items[-1].label,
                    len(items), marked, key, url)


def data_link(path: str, base_url: str | None) -> str:
    """A file under the data root as markdown: a link under ``base_url`` (the address a
    studio serves its data root under), else the relative path as code."""
    if not base_url:
        return f"`{path}`"
    return f"[{path}]({base_url.rstrip('/')}/{quote(path)})"


def run_summary(info: RunInfo, tally: RunTally, *, status: str, finished: datetime,
                out_of_rotation: Mapping[str, str], contact_sheet: str | None,
                markdown: str, contact_sheets: Sequence[str] = (),
                failures: Sequence[str] | None = None) -> dict[str, object]:
    """What a flow returns: counts, rates, failures, the images and the summary text.

    ``contact_sheet`` is the (first) sheet's local path, for callers on this machine;
    ``contact_sheets`` every sheet relative to the data root. ``failures`` replaces the
    tally's (to pass them without local paths).
    """
    wall_s = (finished - info.started).total_seconds()
    return {
        "run_id": info.run_id, "episode": info.episode, "status": status,
        "takes_requested": tally.takes_requested, "takes_deduped": tally.takes_deduped,
        "takes_rendered": tally.takes_rendered, "takes_adopted": tally.takes_adopted,
        "takes_cached": tally.takes_cached, "takes_stored": tally.stored,
        "takes_failed": tally.takes_failed, "takes_suspect": tally.takes_suspect,
        "batches": info.batches,
        "batches_failed": tally.batches_failed, "retries": tally.retries,
        "oom_splits": tally.oom_splits, "model_swaps": sum(info.model_swaps.values()),
        "wall_s": wall_s, "images_per_minute": tally.images_per_minute(wall_s),
        "gpu_busy_share": tally.gpu_busy_share(wall_s, len(info.servers)),
        "out_of_rotation": dict(out_of_rotation),
        "failures": list(tally.failures if failures is None else failures),
        "images": [str(item.path) for item in tally.images if item.path is not None],
        "contact_sheet": contact_sheet, "contact_sheets": list(contact_sheets),
        "markdown": markdown,
    }


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _sheet_lines(sheets: Sequence[SheetRef], base_url: str | None) -> list[str]:
    if len(sheets) == 1:
        [sheet] = sheets
        return ["", "## Contact sheet", "",
                f"{sheet.contents}: {data_link(sheet.path, base_url)}"]
    lines = ["", "## Contact sheets", "",
             f"{len(sheets)} sheets, each its own artifact of this run (whole shots, at most "
             "one sheet's worth of takes each):", "",
             "| sheet | shots | takes | artifact | file |", "|---|---|---|---|---|"]
    for number, sheet in enumerate(sheets, 1):
        artifact = f"[{sheet.key}]({sheet.url})" if sheet.url else f"`{sheet.key}`"
        lines.append(f"| {number} | {sheet.shots} | {sheet.contents} | {artifact} | "
                     f"{data_link(sheet.path, base_url)} |")
    return lines


def summary_markdown(title: str, tally: RunTally, *, started: datetime, finished: datetime,
                     servers: Sequence[str], model_swaps: Mapping[str, int],
                     out_of_rotation: Mapping[str, str], status: str,
                     sheets: Sequence[SheetRef] = (), base_url: str | None = None,
                     failures: Sequence[str] | None = None) -> str:
    """The closing artifact of a render run, without pictures (see :func:`with_picture`).

    Args:
        sheets: the run's contact sheets, named relative to the data root.
        base_url: where the studio serves the data root; sheets become links under it.
        failures: the failed batches as shown (default: the tally's).
    """
    wall_s = (finished - started).total_seconds()
    failed = f"{tally.takes_failed} ({tally.batches_failed} batches)"
    lines = [
        f"# {title}: {status}", "",
        "| | |", "|---|---|",
        f"| takes requested | {tally.takes_requested} |",
        f"| images stored | {tally.stored} |",
        *(f"| {SOURCE_WORDS[source]} | {n} |" for source, n in tally.by_source().items()),
        f"| {FROM_INDEX} (deduplicated) | {tally.takes_deduped} |",
        f"| failed | {failed} |",
        f"| suspect (output check) | {tally.takes_suspect} |",
        f"| wall time | {wall_s:.1f} s |",
        f"| images per minute | {_num(tally.images_per_minute(wall_s))} |",
        f"| GPU busy share | {_pct(tally.gpu_busy_share(wall_s, len(servers)))} |",
        f"| model swaps (planned) | {sum(model_swaps.values())} |",
        f"| retries | {tally.retries} |",
        f"| OOM splits | {tally.oom_splits} |",
        f"| servers | {', '.join(servers)} |",
    ]
    if out_of_rotation:
        lines += ["", "## Taken out of rotation", ""]
        lines += [f"- **{name}**: {why}" for name, why in out_of_rotation.items()]
    shown = tally.failures if failures is None else failures
    if shown:
        lines += ["", "## Failed batches", ""]
        lines += [f"- {failure}" for failure in shown]
    if tally.suspect:
        lines += ["", "## Suspect images", "",
                  "Stored and indexed with status `suspect`, framed amber on the sheet:", ""]
        lines += [f"- {path.parent.name}/{path.name}: {why}"
                  for path, why in sorted(tally.suspect.items())]
    if sheets:
        lines += _sheet_lines(sheets, base_url)
    return "\n".join(lines) + "\n"


def with_picture(markdown: str, picture: str | None) -> str:
    """``markdown`` with a markdown image (``tower.embed.markdown_image``) at its end."""
    return markdown if not picture else f"{markdown}\n{picture}\n"


def sheet_key(summary_key: str, number: int) -> str:
    """The artifact key of sheet ``number`` of a run whose summary has ``summary_key``."""
    return artifact_key(summary_key, "sheet", str(number))


def sheet_markdown(title: str, sheet: SheetRef, *, number: int, of: int, summary_key: str,
                   base_url: str | None = None) -> str:
    """The text of one sheet's own artifact (a run drawn over several sheets)."""
    return "\n".join([
        f"# {title}: contact sheet {number} of {of}", "",
        f"Shots {sheet.shots}: {sheet.contents}. The run's summary is the artifact "
        f"`{summary_key}`; the full-size sheet is {data_link(sheet.path, base_url)}.",
    ]) + "\n"
