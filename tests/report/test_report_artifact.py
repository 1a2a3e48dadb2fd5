"""The report's markdown with charts embedded as JPEGs, and without any charts.

The artifact is read in a browser on another machine: every chart with something to
draw sits after the section that discusses it as a ``data:`` URI under the limit,
and no absolute path of this machine appears in it.
"""

from __future__ import annotations

import base64
import io
import re
from datetime import timedelta
from pathlib import Path

import pytest
from PIL import Image
from report_rows import NOW, T0, run_row, sequential, write_metrics, write_runs

from tower.report.artifact import CHART_MAX_BYTES, artifact_markdown, relative_name
from tower.report.build import Report, build_report, chart_names, shown_charts, write_report
from tower.report.model import CHART_TITLES, report_window
from tower.report.render import CHART_SECTIONS, NO_RUNS, render_markdown
from tower.store.files import DataRoot

DATA_URI = re.compile(r"!\[([^\]]*)\]\(data:image/jpeg;base64,([A-Za-z0-9+/=]+)\)")


def embedded(markdown: str) -> dict[str, Image.Image]:
    """The pictures embedded in ``markdown``, by alt text, each checked to fit the limit."""
    pictures = {}
    for alt, payload in DATA_URI.findall(markdown):
        jpeg = base64.b64decode(payload, validate=True)
        assert len(jpeg) <= CHART_MAX_BYTES
        image = Image.open(io.BytesIO(jpeg))
        image.load()
        pictures[alt] = image
    return pictures


def section_of(markdown: str, needle: str) -> str:
    """The title of the ``##`` section ``needle`` first appears in."""
    before = markdown[:markdown.index(needle)]
    return re.findall(r"^## (.+)$", before, flags=re.MULTILINE)[-1]


def busy_day(root: Path) -> Report:
    """Two presets on two servers in the window, plus a batch three days before."""
    write_metrics(root, sequential(6, gap_s=4.0)
                  + sequential(3, preset="high", server="gpu-b", batch_id="h")
                  + sequential(2, start=T0 - timedelta(days=3), batch_id="old"))
    write_runs(root, [run_row()])
    return build_report(DataRoot(root), report_window(NOW))


def test_each_chart_is_embedded_after_the_section_that_discusses_it(tmp_path: Path) -> None:
    data = DataRoot(tmp_path)
    report = busy_day(tmp_path)
    files = write_report(report, data)
    text = artifact_markdown(report, files, tmp_path, status="gpu-a: up")

    pictures = embedded(text)
    assert set(pictures) == set(CHART_TITLES.values())
    for kind, title in CHART_TITLES.items():
        image = pictures[title]
        assert image.format == "JPEG"
        assert image.width >= 400 and image.height >= 200
        assert len(image.convert("L").getcolors(maxcolors=65536) or ()) > 10  # not blank
        assert section_of(text, f"![{title}](") == CHART_SECTIONS[kind]
        assert f"*Chart file: `reports/{chart_names(report.figures.window)[kind]}`*" in text
    assert "## Farm status\n\n```\ngpu-a: up\n```" in text
    assert ("Written under the data root: `reports/2026-11-26.md`, "
            "`reports/2026-11-26.json` and the charts") in text
    assert str(tmp_path) not in text
    words = DATA_URI.sub("", text)  # base64 may spell anything
    assert not re.search(r"(?<![\w.-])/(?:tmp|home|root|work|var|srv|Users)/", words)


def test_the_markdown_file_links_the_charts_beside_it_and_names_no_folder(
        tmp_path: Path) -> None:
    report = busy_day(tmp_path)
    files = write_report(report, DataRoot(tmp_path))
    text = files.markdown.read_text()
    for kind, path in files.charts.items():
        assert f"![{CHART_TITLES[kind]}]({path.name})" in text
        assert section_of(text, path.name) == CHART_SECTIONS[kind]
    assert "data:" not in text and str(tmp_path) not in text


def test_without_charts_the_markdown_has_no_images(tmp_path: Path) -> None:
    text = render_markdown(busy_day(tmp_path))
    assert "![" not in text and "## Charts" not in text
    assert "## GPU per server" in text


def test_a_day_without_metrics_is_a_valid_report_without_images(tmp_path: Path) -> None:
    data = DataRoot(tmp_path)
    report = build_report(data, report_window(NOW))
    assert shown_charts(report) == ()
    files = write_report(report, data)
    assert all(path.is_file() for path in files.charts.values())  # written all the same
    text = artifact_markdown(report, files, tmp_path)
    assert text.startswith("# Tower performance report 2026-11-26\n")
    assert NO_RUNS in text
    assert "![" not in text and "data:" not in text and "## Charts" not in text
    assert "`reports/2026-11-26.md`" in text and str(tmp_path) not in text
    assert "![" not in files.markdown.read_text()


def test_an_empty_day_after_busy_ones_shows_only_the_days_chart(tmp_path: Path) -> None:
    write_metrics(tmp_path, sequential(3, start=T0 - timedelta(days=2)))
    data = DataRoot(tmp_path)
    report = build_report(data, report_window(NOW))
    assert report.figures.empty
    text = artifact_markdown(report, write_report(report, data), tmp_path)
    assert set(embedded(text)) == {CHART_TITLES["seconds-per-take"]}
    assert section_of(text, "![") == CHART_SECTIONS["seconds-per-take"]


@pytest.mark.parametrize(("busy", "kind", "section"), [
    (True, "seconds-per-take", "Trend against the previous 7 days"),
    (True, "gpu-busy", "GPU per server"),
    (True, "time-breakdown", "Time per preset (seconds, successful batches)"),
    (True, "something-new", "Charts"),
    (False, "seconds-per-take", "Trend against the previous 7 days"),
    (False, "gpu-busy", "Charts"),  # an empty report has no GPU table
    (False, "time-breakdown", "Charts"),
])
def test_a_chart_given_is_never_dropped(tmp_path: Path, busy: bool, kind: str,
                                        section: str) -> None:
    report = busy_day(tmp_path) if busy else build_report(DataRoot(tmp_path),
                                                          report_window(NOW))
    text = render_markdown(report, {kind: "CHART-BLOCK"})
    assert text.count("CHART-BLOCK") == 1
    assert section_of(text, "CHART-BLOCK") == section
    assert text.count("## Charts") == (section == "Charts")


@pytest.mark.parametrize(("path", "root", "name"), [
    (Path("/srv/farm/reports/2026-11-26.md"), Path("/srv/farm"), "reports/2026-11-26.md"),
    (Path("data/reports/x-gpu-busy.png"), Path("data"), "reports/x-gpu-busy.png"),
])
def test_relative_name(path: Path, root: Path, name: str) -> None:
    assert relative_name(path, root) == name


def test_relative_name_refuses_a_path_outside_the_root() -> None:
    with pytest.raises(ValueError):
        relative_name(Path("/elsewhere/report.md"), Path("/srv/farm"))
