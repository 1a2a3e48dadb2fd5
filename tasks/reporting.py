"""End-of-run tasks: the contact sheets, the summary artifact and the run-log row.

What a supervisor opens in the Prefect UI from any machine must show there: each
contact sheet is embedded in its artifact as a JPEG (``tower.embed``) under
:data:`SHEET_MAX_BYTES`, and files are named relative to the data root (as links under
the studio's URL for it when the RenderStore block has one), never by a local path. A
run drawn over several sheets publishes each as its own artifact, listed by the summary.
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from PIL import Image
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.settings import PREFECT_UI_URL

from tower.embed import TooLarge, markdown_image
from tower.runtime.contact_sheet import (
    COLUMNS,
    TAKES_PER_SHEET,
    THUMB,
    draw_contact_sheet,
    save_sheet,
    sheet_path,
    sheet_size,
    split_sheets,
)
from tower.runtime.summary import (
    RunInfo,
    RunTally,
    SheetRef,
    run_record,
    run_summary,
    sheet_key,
    sheet_markdown,
    sheet_ref,
    summary_markdown,
    with_picture,
    without_local_paths,
)
from tower.spec.outputs import SheetItem
from tower.store.files import DataRoot, UnsafePathError, inside
from tower.store.metrics import RunLog
from tower.store.parquet_io import StoreError

# One sheet's picture in an artifact, encoded: a full sheet of TAKES_PER_SHEET takes fits
# at full width for most nights; a busier one is shrunk to fit (tower.embed).
SHEET_MAX_BYTES = 400_000
# Full sheets are shown at their own width, so their labels stay legible.
SHEET_MAX_WIDTH = sheet_size(TAKES_PER_SHEET, COLUMNS, THUMB)[0]
SHEET_WORKERS = 2


def _picture(alt: str, sheet: Image.Image) -> str | None:
    try:
        return markdown_image(alt, sheet, SHEET_MAX_BYTES, SHEET_MAX_WIDTH)
    except TooLarge as err:  # the sheet on disk and its link still tell the story
        get_run_logger().warning("contact sheet left out of the artifact: %s", err)
        return None


def _artifact_url(artifact_id: object) -> str | None:
    """The artifact's page in the Prefect UI, when the UI's address is known."""
    ui = PREFECT_UI_URL.value()
    return f"{str(ui).rstrip('/')}/artifacts/artifact/{artifact_id}" if ui else None


def publish_sheets(parts: Sequence[Sequence[SheetItem]], info: RunInfo, *, root: DataRoot,
                   key: str, title: str, base_url: str | None,
                   ) -> tuple[list[SheetRef], str | None]:
    """Draw and write each sheet; publish each as its own artifact when there are several.

    Returns the sheets as the summary names them and, for a single sheet, its picture
    for the summary artifact itself. Sheets are drawn two at a time (Pillow decodes,
    scales and encodes without holding the GIL), so a night of many sheets ends sooner.
    """
    single = len(parts) == 1

    def heading(number: int) -> str:
        return f"{title} {info.run_id}" + ("" if single else f" ({number}/{len(parts)})")

    def draw(number: int, items: Sequence[SheetItem]) -> tuple[SheetRef, str | None] | None:
        """The sheet written and its picture; None when it could not be written (a full
        or read-only disk, a folder that leads out of the data root): the images and
        their rows are already stored, so the run's summary still goes out."""
        try:
            dest = inside(root.renders, sheet_path(info.episode, info.run_id,
                                                   None if single else number))
            sheet = draw_contact_sheet(items, title=heading(number))
            save_sheet(sheet, dest)
        except (OSError, UnsafePathError) as err:
            get_run_logger().error("contact sheet %s not written: %s", heading(number), err)
            return None
        picture = _picture(f"contact sheet {heading(number)}", sheet)
        return sheet_ref(items, dest.relative_to(root.root).as_posix(),
                         key=None if single else sheet_key(key, number)), picture

    with ThreadPoolExecutor(max_workers=SHEET_WORKERS) as pool:  # run context for the log
        futures = [pool.submit(contextvars.copy_context().run, draw, number, items)
                   for number, items in enumerate(parts, 1)]
        drawn = [(number, done) for number, future in enumerate(futures, 1)
                 if (done := future.result()) is not None]
    if single:
        return ([drawn[0][1][0]], drawn[0][1][1]) if drawn else ([], None)
    refs: list[SheetRef] = []
    for number, (ref, picture) in drawn:
        text = sheet_markdown(title, ref, number=number, of=len(parts), summary_key=key,
                              base_url=base_url)
        artifact_id = create_markdown_artifact(with_picture(text, picture), key=ref.key,
                                               description=heading(number))
        refs.append(replace(ref, url=_artifact_url(artifact_id)))
    return refs, None


@task(name="publish-summary", cache_policy=NO_CACHE)
def publish_summary(tally: RunTally, info: RunInfo, *, root: DataRoot,
                    out_of_rotation: Mapping[str, str], status: str, key: str,
                    title: str, base_url: str | None = None) -> dict[str, Any]:
    """Write the contact sheets, the markdown artifacts and one RunRecord; return the summary.

    Args:
        base_url: the address the studio serves the data root under (RenderStore block);
            files in the artifacts become links under it.
    """
    finished = datetime.now(UTC)
    tally.images = tally.flag_suspects(tally.images)  # the output check's verdicts on the tiles
    parts = split_sheets(tally.images)
    sheets, picture = publish_sheets(parts, info, root=root, key=key, title=title,
                                     base_url=base_url)
    failures = [without_local_paths(f, {root.root.absolute(), root.root.resolve()})
                for f in tally.failures]
    markdown = summary_markdown(title, tally, started=info.started, finished=finished,
                                servers=info.servers, model_swaps=info.model_swaps,
                                out_of_rotation=out_of_rotation, status=status,
                                sheets=sheets, base_url=base_url, failures=failures)
    create_markdown_artifact(with_picture(markdown, picture), key=key,
                             description=f"{title} {info.run_id}")
    try:
        RunLog(root.runs).append([run_record(info, tally, status, finished)])
    except StoreError as err:  # the images and their rows are stored; say what is missing
        get_run_logger().error("run log row not written (the daily report will not count"
                               " this run): %s", err)
    local = str(root.root / sheets[0].path) if sheets else None
    return run_summary(info, tally, status=status, finished=finished,
                       out_of_rotation=out_of_rotation, contact_sheet=local,
                       contact_sheets=[s.path for s in sheets], markdown=markdown,
                       failures=failures)
