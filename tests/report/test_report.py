"""Report figures against independent computations, empty windows, trends and files."""

from __future__ import annotations

import io
import json
import random
import statistics
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from PIL import Image
from report_rows import NOW, T0, metric_row, run_row, sequential, write_metrics, write_runs
from typer.testing import CliRunner

from tower.cli import app
from tower.report.build import build_report, write_report
from tower.report.charts import CHART_SIZE, PALETTE, bar_chart, line_chart, stacked_bar_chart
from tower.report.model import COMPONENTS, Window, report_window
from tower.report.render import NO_RUNS, render_markdown, render_terminal
from tower.store.files import DataRoot


def _p(values: list[float], q: int) -> float:
    """Percentile by linear interpolation between closest ranks, as numpy's default."""
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def test_percentiles_match_an_independent_computation(tmp_path: Path) -> None:
    rng = random.Random(7)
    rows, at = [], T0
    for i in range(200):
        preset = ("draft", "standard", "high")[i % 3]
        server = ("gpu-a", "gpu-b")[i % 2]
        takes = rng.randint(1, 4)
        row = metric_row(i, at=at, preset=preset, server=server, takes=takes,
                         queue_wait_s=rng.uniform(0, 3), execution_s=rng.uniform(5, 60),
                         download_s=rng.uniform(0, 2))
        rows.append(row)
        at += timedelta(seconds=70)
    write_metrics(tmp_path, rows)
    figures = build_report(DataRoot(tmp_path), report_window(NOW)).figures
    for group, timings in (("preset", figures.presets), ("server", figures.servers)):
        assert [t.name for t in timings] == sorted({r[group] for r in rows})
        for t in timings:
            mine = [r for r in rows if r[group] == t.name]
            batch = [r["queue_wait_s"] + r["execution_s"] + r["download_s"] for r in mine]
            take = [b / r["takes"] for b, r in zip(batch, mine, strict=True)]
            assert t.batches == len(mine)
            assert t.takes == sum(r["takes"] for r in mine)
            for stats, values in ((t.per_take, take), (t.per_batch, batch)):
                assert stats.mean == pytest.approx(statistics.fmean(values))
                assert stats.p50 == pytest.approx(statistics.median(values))
                assert stats.p95 == pytest.approx(_p(values, 95))
                assert stats.max == pytest.approx(max(values))
            assert t.breakdown["queue_wait"] == pytest.approx(
                statistics.fmean(r["queue_wait_s"] for r in mine))
            assert t.images_per_minute == pytest.approx(
                sum(r["images"] for r in mine) * 60 / sum(r["execution_s"] for r in mine))


def test_busy_share_is_the_union_of_batch_intervals_over_each_runs_span(tmp_path: Path) -> None:
    def at(s: float) -> datetime:
        return T0 + timedelta(seconds=s)
    rows = [  # run-1: [0,10] and [5,15] overlap, then [20,30]: busy 25 of 30 s
        metric_row(0, started_at=at(0), finished_at=at(10)),
        metric_row(1, started_at=at(5), finished_at=at(15)),
        metric_row(2, started_at=at(20), finished_at=at(30)),
        # run-2, ten hours later: [36000, 36010] busy 10 of 10; the night between is not idle
        metric_row(3, run_id="run-2", started_at=at(36000), finished_at=at(36010)),
        # a batch that never started does not count as busy
        metric_row(4, status="failed", started_at=None, finished_at=at(36020)),
    ]
    write_metrics(tmp_path, rows)
    [load] = build_report(DataRoot(tmp_path), report_window(NOW)).figures.loads
    assert load.busy_s == pytest.approx(35.0)
    assert load.active_s == pytest.approx(40.0)
    assert load.busy_share == pytest.approx(35 / 40)
    assert load.images_per_minute == pytest.approx(4 * 5 * 60 / 40)


def test_volume_counts(tmp_path: Path) -> None:
    rows = sequential(6)
    rows[0].update(status="cached", execution_s=0.1, images=4)
    rows[1].update(status="oom", images=0)
    rows[2].update(status="failed", images=0, error_type="RuntimeError")
    rows.append(metric_row(10, at=rows[-1]["finished_at"], batch_id="b2", attempt=2))
    rows[3].update(model_cache_hit=False, model_load_s=3.0)
    write_metrics(tmp_path, rows)
    write_runs(tmp_path, [run_row(takes_requested=40, takes_deduped=10),
                          run_row("run-2", start=T0 + timedelta(hours=2), takes_requested=10,
                                  takes_deduped=0)])
    v = build_report(DataRoot(tmp_path), report_window(NOW)).figures.volume
    assert (v.runs, v.batches, v.attempts) == (2, 6, 7)
    assert (v.takes_requested, v.takes_deduped) == (50, 10)
    assert v.dedup_hit_rate == pytest.approx(0.2)
    assert (v.takes_rendered, v.takes_cached) == (16, 4)
    assert v.images == 4 * 5
    assert (v.batches_failed, v.attempts_failed, v.retries, v.oom_splits) == (1, 1, 1, 1)
    assert v.model_swaps == 1


def test_empty_window_gives_a_clear_no_runs_report(tmp_path: Path) -> None:
    data = DataRoot(tmp_path)
    report = build_report(data, report_window(NOW))
    assert report.figures.empty
    assert report.verdicts == () and report.recommendations == ()
    files = write_report(report, data)
    text = files.markdown.read_text()
    assert NO_RUNS in text
    assert json.loads(files.json.read_text())["empty"] is True
    assert NO_RUNS in render_terminal(report)
    assert all(p.is_file() for p in files.charts.values())


def test_trend_against_the_previous_seven_days(tmp_path: Path) -> None:
    before = []
    for day in range(1, 8):  # a week of slower drafts: 20 s execution, two batches a day
        before += sequential(2, start=T0 - timedelta(days=day), execution_s=20.0,
                             batch_id=f"d{day}-")
    write_metrics(tmp_path, before + sequential(7))
    trend = {t.metric: t for t in build_report(DataRoot(tmp_path), report_window(NOW)).trends}
    mean = trend["draft mean s/take"]
    assert mean.previous == pytest.approx((1 + 20 + 0.5) / 4)
    assert mean.current == pytest.approx((1 + 10 + 0.5) / 4)
    assert (mean.arrow, mean.improved) == ("↓", True)
    images = trend["images"]  # 14 batches of 4 images over 7 days -> 8 a day; now 28
    assert images.previous == pytest.approx(8.0)
    assert (images.current, images.arrow, images.improved) == (28, "↑", True)
    assert trend["failed attempts share"].arrow == "→"


@pytest.mark.parametrize(("day", "since", "start", "end"), [
    (None, None, NOW - timedelta(hours=24), NOW),
    (date(2026, 11, 20), None, datetime(2026, 11, 20, tzinfo=UTC),
     datetime(2026, 11, 21, tzinfo=UTC)),
    (None, date(2026, 11, 1), datetime(2026, 11, 1, tzinfo=UTC), NOW),
])
def test_report_window(day: date | None, since: date | None, start: datetime,
                       end: datetime) -> None:
    assert report_window(NOW, day, since) == Window(start, end)


@pytest.mark.parametrize(("window", "label"), [
    (report_window(NOW), "2026-11-26"),
    (report_window(NOW + timedelta(hours=6)), "2026-11-27"),
    (report_window(NOW, date(2026, 11, 20)), "2026-11-20"),
    (report_window(NOW, since=date(2026, 11, 1)), "2026-11-01_2026-11-26"),
])
def test_window_labels_never_collide_with_daily_reports(window: Window, label: str) -> None:
    assert window.label == label


@pytest.mark.parametrize(("day", "since"), [(date(2026, 11, 1), date(2026, 11, 2)),
                                            (None, date(2026, 11, 27))])
def test_report_window_refuses_contradictions(day: date | None, since: date | None) -> None:
    with pytest.raises(ValueError):
        report_window(NOW, day, since)


def test_files_are_written_under_reports_and_linked(tmp_path: Path) -> None:
    write_metrics(tmp_path, sequential(5) + sequential(3, preset="high", server="gpu-b",
                                                        batch_id="h"))
    write_runs(tmp_path, [run_row()])
    data = DataRoot(tmp_path)
    files = write_report(build_report(data, report_window(NOW)), data)
    assert files.markdown == tmp_path / "reports" / "2026-11-26.md"
    assert files.json == tmp_path / "reports" / "2026-11-26.json"
    text = files.markdown.read_text()
    for path in files.charts.values():
        assert f"]({path.name})" in text
        assert Image.open(path).size == CHART_SIZE
    assert "| gpu-a | compute-bound |" in text
    data_json = json.loads(files.json.read_text())
    assert data_json["figures"]["volume"]["batches"] == 8
    assert {p["name"] for p in data_json["figures"]["presets"]} == {"draft", "high"}
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == sorted(
        [files.markdown.name, files.json.name, *(p.name for p in files.charts.values())])


def test_markdown_escapes_pipes_in_names(tmp_path: Path) -> None:
    write_metrics(tmp_path, sequential(2, server="gpu|a"))
    text = render_markdown(build_report(DataRoot(tmp_path), report_window(NOW)))
    assert "gpu\\|a" in text and "| gpu|a |" not in text


def test_an_unreadable_part_is_skipped_and_named_in_every_format(tmp_path: Path) -> None:
    write_metrics(tmp_path, sequential(2))
    folder = tmp_path / "metrics" / f"date={T0.date()}"
    (folder / "part-broken.parquet").write_bytes(b"not parquet")
    (folder / "part-empty.parquet").write_bytes(b"")
    data = DataRoot(tmp_path)
    report = build_report(data, report_window(NOW))
    assert report.figures.volume.batches == 2
    assert sorted(part.split(":")[0] for part in report.skipped) == [
        f"metrics/date={T0.date()}/part-broken.parquet",
        f"metrics/date={T0.date()}/part-empty.parquet"]
    files = write_report(report, data)
    text = files.markdown.read_text()
    assert "2 data file(s) could not be read" in text
    assert f"`metrics/date={T0.date()}/part-broken.parquet: " in text
    assert str(tmp_path) not in text
    assert json.loads(files.json.read_text())["skipped_parts"] == list(report.skipped)
    assert "part-empty.parquet" in render_terminal(report)


def _pixels(png: bytes, colour: str) -> int:
    image = Image.open(io.BytesIO(png)).convert("RGB")
    rgb = tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))
    return sum(1 for p in image.get_flattened_data() if p == rgb)


def test_charts_decode_at_their_size_and_draw_to_scale() -> None:
    bars = bar_chart("busy", {"a": 1.0, "b": 0.5}, top=1.0)
    assert Image.open(io.BytesIO(bars)).size == CHART_SIZE
    assert _pixels(bars, PALETTE[0]) / _pixels(bars, PALETTE[1]) == pytest.approx(2.0, rel=0.05)
    stacked = stacked_bar_chart("time", {"draft": {"sampling": 8.0, "download": 2.0}},
                                COMPONENTS)
    sampling, download = (_pixels(stacked, PALETTE[COMPONENTS.index(c)])
                          for c in ("sampling", "download"))
    assert sampling / download == pytest.approx(4.0, rel=0.1)
    lines = line_chart("s", ["2026-11-01", "2026-11-02"], {"draft": {"2026-11-01": 1.0}})
    assert Image.open(io.BytesIO(lines)).format == "PNG"
    assert _pixels(lines, PALETTE[0]) > 0


def test_report_command_prints_and_writes(tmp_path: Path) -> None:
    write_metrics(tmp_path, sequential(5, gap_s=5.0))
    write_runs(tmp_path, [run_row()])
    result = CliRunner().invoke(app, ["report", "--date", "2026-11-26", "--data-root",
                                      str(tmp_path), "--write"])
    assert result.exit_code == 0, result.output
    assert "Tower performance report 2026-11-26" in result.output
    assert "raise queue depth on gpu-a (ComfyUIServer max_queue_depth)" in result.output
    assert (tmp_path / "reports" / "2026-11-26.md").is_file()


@pytest.mark.parametrize(("args", "message"), [
    (["--date", "2026-11-26", "--since", "2026-11-20"], "either a date or a start date"),
    (["--since", "2999-01-01"], "is not before now"),
    (["--date", "yesterday"], "is not a date"),
])
def test_report_command_refuses_bad_dates(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["report", *args, "--data-root", str(tmp_path)])
    assert result.exit_code != 0
    assert message in result.output


def test_suspect_images_are_counted_and_shown(tmp_path: Path) -> None:
    rows = sequential(3)
    rows[0].update(suspect_images=2)
    rows[1].update(suspect_images=0)  # rows[2]: written before the check, null
    write_metrics(tmp_path, rows)
    write_runs(tmp_path, [run_row()])
    report = build_report(DataRoot(tmp_path), report_window(NOW))
    assert report.figures.volume.suspect_images == 2
    assert "| suspect images (output check) | 2 |" in render_markdown(report)
