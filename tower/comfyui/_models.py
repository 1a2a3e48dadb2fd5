"""The client's value types: what it returns, and the one type it builds from paths.

Everything here is a frozen dataclass. :class:`ImageRef` is built from server answers and
refuses anything that could point outside ComfyUI's folders, so the rest of the pipeline
can join it to a local path without further checks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from tower.comfyui._exceptions import ComfyUIProtocolError

IMAGE_TYPES = frozenset({"output", "temp", "input"})

RenderStatus = Literal["success", "error", "interrupted"]
PromptState = Literal["done", "queued", "running", "unknown"]


def _check_component(value: str, what: str) -> None:
    if value in ("", ".", ".."):
        raise ComfyUIProtocolError(f"unsafe image {what}: {value!r}")


def _check_text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ComfyUIProtocolError(f"image {what} must be a string (got {value!r})")
    if "\\" in value or any(ord(ch) < 0x20 for ch in value):
        raise ComfyUIProtocolError(f"unsafe image {what}: {value!r}")
    return value


@dataclass(frozen=True)
class ImageRef:
    """An image the server saved: ``GET /view?filename=&subfolder=&type=`` fetches it.

    Raises:
        ComfyUIProtocolError: for ``..``, absolute paths, backslashes, NUL or other
            control characters, or an unknown ``type``.
    """

    filename: str
    subfolder: str
    type: str

    def __post_init__(self) -> None:
        _check_text(self.filename, "filename")
        _check_text(self.subfolder, "subfolder")
        _check_text(self.type, "type")
        if "/" in self.filename:
            raise ComfyUIProtocolError(f"unsafe image filename: {self.filename!r}")
        _check_component(self.filename, "filename")
        if self.subfolder:
            if self.subfolder.startswith("/"):
                raise ComfyUIProtocolError(f"unsafe image subfolder: {self.subfolder!r}")
            for part in self.subfolder.split("/"):
                _check_component(part, "subfolder")
        if self.type not in IMAGE_TYPES:
            raise ComfyUIProtocolError(f"unknown image type {self.type!r}")

    @classmethod
    def from_json(cls, data: object) -> ImageRef:
        """Build from one ``{"filename", "subfolder", "type"}`` item of a server answer."""
        if not isinstance(data, Mapping):
            raise ComfyUIProtocolError(f"image entry must be an object (got {data!r})")
        return cls(filename=data.get("filename"), subfolder=data.get("subfolder", ""),
                   type=data.get("type", "output"))

    @property
    def relative_path(self) -> PurePosixPath:
        """``subfolder/filename``: safe to join under a folder."""
        return PurePosixPath(self.subfolder, self.filename) if self.subfolder \
            else PurePosixPath(self.filename)


@dataclass(frozen=True)
class RenderResult:
    """How one prompt ended, what it produced and where the time went.

    Times are UTC. ``queued_at`` is when this client posted the prompt (None when it
    adopted a prompt already on the server); ``started_at``/``finished_at`` are the
    server's own timestamps, so ``queue_wait_s`` assumes the two clocks agree (it is
    never negative). Phase seconds are None when they could not be measured
    (no WebSocket frames for that node) and 0.0 when the nodes were served from cache.
    """

    prompt_id: str
    status: RenderStatus
    images: tuple[ImageRef, ...] = ()
    cached: bool = False
    cached_nodes: tuple[str, ...] = ()
    queued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    queue_wait_s: float | None = None
    execution_s: float | None = None
    node_seconds: dict[str, float] = field(default_factory=dict)
    model_load_s: float | None = None
    sampling_s: float | None = None
    vae_decode_s: float | None = None
    adopted: bool = False
    error: str | None = None


@dataclass(frozen=True)
class ProgressEvent:
    """One step forward of a prompt, passed to ``on_progress`` callbacks.

    ``event`` is the WebSocket message type (``execution_start``, ``execution_cached``,
    ``executing``, ``progress``, ``executed``); ``value``/``max`` are sampler steps.
    """

    prompt_id: str
    event: str
    node: str | None = None
    value: int | None = None
    max: int | None = None


@dataclass(frozen=True)
class Device:
    """One compute device from ``/system_stats``; memory in bytes."""

    name: str
    type: str
    index: int | None
    vram_total: int
    vram_free: int
    torch_vram_total: int | None = None
    torch_vram_free: int | None = None


@dataclass(frozen=True)
class SystemStats:
    """What ``GET /system_stats`` says about the server."""

    comfyui_version: str | None
    devices: tuple[Device, ...]
    python_version: str | None = None
    pytorch_version: str | None = None
    ram_total: int | None = None
    ram_free: int | None = None


@dataclass(frozen=True)
class QueueState:
    """The server queue; ``pending`` in run order (sorted by ``(number, prompt_id)``).

    ``client_ids`` maps each queued prompt to the client id it was submitted with: the
    socket that hears its events.
    """

    running: tuple[str, ...]
    pending: tuple[str, ...]
    client_ids: Mapping[str, str] = field(default_factory=dict, compare=False)

    def __contains__(self, prompt_id: object) -> bool:
        return prompt_id in self.running or prompt_id in self.pending

    def position(self, prompt_id: str) -> int | None:
        """0 while running, 1.. while pending, None when not queued."""
        if prompt_id in self.running:
            return 0
        if prompt_id in self.pending:
            return self.pending.index(prompt_id) + 1
        return None


@dataclass(frozen=True)
class DownloadedFile:
    """An image written to ``path`` (atomically), with its sha256 hex and size in bytes."""

    path: Path
    sha256: str
    size: int


@dataclass(frozen=True)
class HistoryEntry:
    """One ``/history/<id>`` entry, checked and reduced to what the client uses."""

    prompt_id: str
    number: float | None
    graph: dict[str, Any]
    status_str: str
    completed: bool
    outputs_order: tuple[str, ...]
    images: tuple[ImageRef, ...]
    messages: tuple[tuple[str, dict[str, Any]], ...]

    def message(self, kind: str) -> dict[str, Any] | None:
        """The data of the first status message of type ``kind``, if any."""
        return next((data for name, data in self.messages if name == kind), None)
