"""The daily report as a Prefect markdown artifact, readable from any machine.

A supervisor reads the artifact in the Prefect UI, in a browser on another machine,
where a local file path opens nothing. So each chart with something to draw is
embedded as a JPEG ``data:`` URI of at most :data:`CHART_MAX_BYTES` (via
:mod:`tower.embed`) after the section that discusses it, and the files written on the
farm are named relative to the data root (``reports/2026-11-26.md``), never by an
absolute path. The pictures are the chart files the report just wrote, read back, so
the artifact shows exactly what is on disk and nothing is drawn twice.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

from PIL import Image

from tower.embed import markdown_image
from tower.report.build import Report, ReportFiles, shown_charts
from tower.report.charts import CHART_SIZE
from tower.report.model import CHART_TITLES
from tower.report.render import render_markdown

# One chart's JPEG in the artifact; three charts stay under half a megabyte. The
# charts are flat colours and text, so at their drawn width they need far less.
CHART_MAX_BYTES = 150_000
CHART_MAX_WIDTH = CHART_SIZE[0]


def relative_name(path: Path, root: Path) -> str:
    """``path`` as a POSIX path relative to the data root ``root``.

    Raises:
        ValueError: ``path`` is not under ``root``.
    """
    return path.relative_to(root).as_posix()


def embedded_charts(pngs: Mapping[str, bytes], files: Mapping[str, str]) -> dict[str, str]:
    """Each chart as a markdown image holding its JPEG, captioned with its file's name.

    Args:
        pngs: chart kind -> the chart's PNG bytes.
        files: chart kind -> where that chart was written, relative to the data root.
    """
    blocks: dict[str, str] = {}
    for kind, png in pngs.items():
        with Image.open(io.BytesIO(png)) as image:
            picture = markdown_image(CHART_TITLES.get(kind, kind), image, CHART_MAX_BYTES,
                                     CHART_MAX_WIDTH)
        blocks[kind] = f"{picture}\n\n*Chart file: `{files[kind]}`*"
    return blocks


def artifact_markdown(report: Report, files: ReportFiles, root: Path,
                      status: str | None = None) -> str:
    """The report's markdown for the Prefect UI: charts embedded, files named by the root.

    Args:
        report: the report written to ``files``.
        files: where :func:`tower.report.build.write_report` wrote it under ``root``.
        root: the data root, which every file name in the artifact is relative to.
        status: the farm's status text, added as its own section when given.
    """
    names = {kind: relative_name(path, root) for kind, path in files.charts.items()}
    pngs = {kind: files.charts[kind].read_bytes() for kind in shown_charts(report)}
    text = render_markdown(report, embedded_charts(pngs, names))
    if status:
        text += f"\n## Farm status\n\n```\n{status}\n```\n"
    charts = ", ".join(f"`{names[kind]}`" for kind in names)
    text += ("\n## Files\n\nWritten under the data root: "
             f"`{relative_name(files.markdown, root)}`, `{relative_name(files.json, root)}`"
             f" and the charts {charts}.\n")
    return text
