"""Ad-hoc previews: a few shots, or a free prompt, rendered now at the front of the queue.

The preset is draft unless a time budget is given, in which case the best preset
expected to finish within it is chosen, before planning, with the planner's time model
fitted to the metrics history (:func:`tower.planning.preview.choose_preset`, through
:func:`tower.planning.pipeline.plan_run`). Images the index already holds are reused, and
with ``reuse="similar"`` so are images of the same look under another seed. Batches go
to the FRONT of each server's queue and hold a preview slot of their own, so a preview
never waits behind the nightly run.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Literal

from prefect import flow
from prefect.runtime import flow_run as current_flow_run
from prefect.states import State

from flows.common import Rendering, cancel_hook, final_state, render_and_publish, resolve_farm
from tasks.planning import plan_run_task
from tower.planning.pipeline import PresetBudget
from tower.planning.preview import Preference
from tower.runtime.pool import DEFAULT_MAX_FAILURES
from tower.shotlist.shots import Shot, ShotList

PREVIEW_EPISODE = "preview"


def free_prompt_list(prompt: str, takes: int, negative: str = "") -> ShotList:
    """A one-shot list for a free prompt; the shot id is derived from the prompt."""
    shot_id = "p" + hashlib.sha256(prompt.encode()).hexdigest()[:10]
    return ShotList(episode=PREVIEW_EPISODE, defaults={"negative": negative},
                    shots=(Shot(id=shot_id, prompt=prompt, takes=takes),))


def preview_run_name() -> str:
    params = current_flow_run.parameters
    what = "prompt" if params.get("prompt") else "shots"
    return f"preview-{what}-{datetime.now(UTC):%Y-%m-%d-%H%M%S}"


@flow(name="draft-preview", flow_run_name=preview_run_name, on_cancellation=[cancel_hook])
def draft_preview(shot_list: str | None = None, shots: list[str] | None = None,
                  prompt: str | None = None, takes: int = 2,
                  servers: list[str] | None = None,
                  time_budget_seconds: float | None = None,
                  quality_preference: Preference = "balanced",
                  reuse: Literal["exact", "similar", "none"] = "similar",
                  data_root: str | None = None, render_store: str | None = None,
                  presets_file: str | None = None, presets_block: str | None = None,
                  retries: int = 1, retry_backoff_s: float = 2.0) -> dict | State:
    """Render ``shots`` of ``shot_list`` (or a free ``prompt``) now; return image paths.

    Args:
        takes: takes of a free prompt (shots keep their own).
        time_budget_seconds, quality_preference: pick the best preset expected to
            finish in time (speed keeps half the budget spare, balanced a fifth).
        reuse: ``similar`` shows existing look-alike images instead of rendering;
            ``exact`` only skips identical ones; ``none`` renders everything anew, every
            ComfyUI node executed again (like the nightly render's ``force``).
    """
    started = datetime.now(UTC)
    if not prompt and not shot_list:
        raise ValueError("draft_preview needs a shot_list (with shots) or a prompt")
    farm = resolve_farm(servers, data_root, render_store, presets_file, presets_block)
    flow_run_id = current_flow_run.id
    planned = plan_run_task(
        free_prompt_list(prompt, takes) if prompt else shot_list, farm.presets, farm.specs,
        farm.root, today=started.date(), kind="preview", shots=shots, reuse=reuse,
        run_id=str(flow_run_id) if flow_run_id else None,
        budget=PresetBudget(time_budget_seconds, quality_preference))
    choice = planned.choice
    assert choice is not None  # a budget (even an empty one) always yields a choice

    how = Rendering("preview", "draft_preview", "preview", retries, retry_backoff_s,
                    DEFAULT_MAX_FAILURES, front=True)
    tally, summary, cancelled = render_and_publish(farm, planned, how, started=started,
                                                   flow_run_id=flow_run_id,
                                                   preset=choice.preset)
    summary |= {"preset": choice.preset, "preset_reason": choice.reason,
                "expected_s": choice.expected_s}
    return final_state("preview", tally, summary, cancelled)
