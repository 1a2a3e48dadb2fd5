"""``tower preview``: runs draft_preview in-process; each option reaches the flow.

One data root through three previews: a shot of a list, the same shot again with
``--reuse none``, then a free prompt whose preset is chosen from the first two runs'
history, the RenderStore block pointing at that same root.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from flow_helpers import tower, write_shot_list
from PIL import Image

from blocks import RenderPresets, RenderStore

pytestmark = pytest.mark.usefixtures("prefect_backend")


def printed_images(stdout: str) -> list[Path]:
    """The image paths ``tower preview`` prints last, one a line."""
    return [Path(line) for line in stdout.splitlines() if line.endswith(".png")
            and not line.startswith("Contact sheet")]


def test_preview_options_reach_the_flow(tmp_path, sims):
    sim = sims("cli-preview")
    data = tmp_path / "data"
    shot_list = write_shot_list(tmp_path, shots=2, takes=2)
    presets = tmp_path / "presets.yaml"
    presets.write_text(yaml.safe_dump({"presets": {"draft": {"width": 640, "height": 384}}}))
    common = ["--data-root", str(data), "--retries", "0", "--retry-backoff-s", "0"]

    first = tower("preview", str(shot_list), "--shot", "sh010", "--server",
                  f"cli-preview={sim.url}", "--presets", str(presets),
                  "--time-budget-seconds", "60", *common)
    assert first.returncode == 0, first.stderr
    assert "preset draft: no render history to estimate from" in first.stdout  # a budget
    images = printed_images(first.stdout)
    assert len(images) == 2 and all("sh010" in p.name for p in images)
    assert {Image.open(p).size for p in images} == {(640, 384)}

    again = tower("preview", str(shot_list), "--shots", "sh010", "--servers",
                  f"cli-preview={sim.url}", "--presets-file", str(presets),
                  "--reuse", "none", *common)
    assert again.returncode == 0, again.stderr
    assert "preset draft: no time budget" in again.stdout
    assert "| from the index (deduplicated) | 0 |" in again.stdout  # the default reuses both

    RenderStore(data_root=str(data)).save("cli-preview-farm", overwrite=True)
    RenderPresets(presets={"poster": {"extends": "high", "steps": 40}}
                  ).save("cli-poster", overwrite=True)
    prompt = tower("preview", "--prompt", "a paper lantern on a windowsill", "--takes", "3",
                   "-s", f"cli-preview={sim.url}", "--render-store", "cli-preview-farm",
                   "--presets-block", "cli-poster", "--time-budget-seconds", "100000",
                   "--quality-preference", "quality", "--retries", "0")
    assert prompt.returncode == 0, prompt.stderr
    # the history of the runs above, found through the block, makes the estimate
    assert "preset poster: best preset expected within 100000s (quality)" in prompt.stdout
    images = printed_images(prompt.stdout)
    assert len(images) == 3 and all(p.is_relative_to(data / "renders") for p in images)
