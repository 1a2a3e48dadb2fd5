"""A run's names: its run id and the keys of the artifacts it publishes.

Index rows, metrics rows and the run log of one flow run share its run id; the
supervisor finds its plan, progress (bar and ETA table) and summary in the Prefect UI
under artifact keys built here (``tower status`` reads the ETA table back); and a
cancellation hook running in another process finds the run's prompt ids by reading back
the plan artifacts whose keys start with :data:`PLAN_KEY_PREFIXES`. Writer and
reader therefore take both from this one module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

RunKind = Literal["render", "preview"]
LOCAL_RUN = "local"
# Kind -> prefix of its plan artifact's key.
_PLAN_PREFIX: dict[str, str] = {"render": "plan", "preview": "preview-plan"}


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key: lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-")


PLAN_KEY_PREFIXES: tuple[str, ...] = tuple(f"{artifact_key(p)}-" for p in _PLAN_PREFIX.values())


@dataclass(frozen=True)
class RunArtifacts:
    """The artifact keys of one render or preview run of ``episode``."""

    kind: RunKind
    episode: str

    @property
    def plan(self) -> str:
        """The batch table with prompt ids (read back by cancellation)."""
        return artifact_key(_PLAN_PREFIX[self.kind], self.episode)

    @property
    def progress(self) -> str:
        """The progress bar (a percentage; Prefect's progress artifacts hold nothing else)."""
        return artifact_key(self.kind, "progress", self.episode)

    @property
    def progress_table(self) -> str:
        """Takes done, images per minute and ETA per server (read back by ``tower status``)."""
        return artifact_key(self.kind, self.episode, "progress")

    @property
    def summary(self) -> str:
        return artifact_key(self.kind, self.episode)


def run_id(label: str, started: datetime, flow_run_id: str | None) -> str:
    """``<label>-<start, UTC, to the second>-<first 8 of the flow run id>``.

    Readable in a folder listing and unique across runs of the same label, even two
    started in the same second (their flow runs differ).
    """
    return f"{label}-{started:%Y%m%dT%H%M%S}-{(flow_run_id or LOCAL_RUN)[:8]}"
