"""Files and folders the pipeline writes are readable by the studio, as the umask says.

A render store is shared: compositors, the review tool and other workers open what a
night rendered. Each file must get the mode an ordinary ``open()`` gives under the
process umask, and each folder what ``mkdir`` gives, never a private 0600.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from flow_helpers import write_shot_list
from prefect.settings import PREFECT_API_URL

pytestmark = pytest.mark.usefixtures("prefect_backend")
TOWER = Path(sys.executable).with_name("tower")


def _run_with_umask(umask: int, *args: str) -> subprocess.CompletedProcess[str]:
    set_umask: Callable[[], object] = lambda: os.umask(umask)  # noqa: E731
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    return subprocess.run([str(TOWER), *args], capture_output=True, text=True, env=env,
                          timeout=180, check=False, preexec_fn=set_umask)


def _modes(root: Path) -> dict[Path, int]:
    return {path: stat.S_IMODE(path.stat().st_mode) for path in root.rglob("*")}


@pytest.mark.parametrize("umask", [0o022, 0o027], ids=["umask-022", "umask-027"])
def test_renders_index_metrics_and_reports_follow_the_umask(umask, tmp_path, sims):
    sim = sims("perm")
    data = tmp_path / "data"
    shot_list = write_shot_list(tmp_path, shots=2, takes=2)
    render = _run_with_umask(umask, "render", str(shot_list), "--server", f"perm={sim.url}",
                             "--data-root", str(data))
    assert render.returncode == 0, render.stderr
    report = _run_with_umask(umask, "report", "--since", "2000-01-01", "--write",
                             "--data-root", str(data))
    assert report.returncode == 0, report.stderr

    modes = _modes(data)
    files = {p: m for p, m in modes.items() if p.is_file()}
    folders = {p: m for p, m in modes.items() if p.is_dir()}
    kinds = {p.relative_to(data).parts[0] for p in files}
    assert {"renders", "index", "metrics", "runs", "reports"} <= kinds
    assert any(p.suffix == ".png" and "contact-sheets" in p.parts for p in files)
    assert {p: m for p, m in files.items() if m != 0o666 & ~umask} == {}
    assert {p: m for p, m in folders.items() if m != 0o777 & ~umask} == {}
