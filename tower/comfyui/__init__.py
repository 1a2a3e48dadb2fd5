"""ComfyUI client: submit graphs, follow them to the end, fetch the images.

Prefect-free and synchronous (the Prefect tasks run it in threads). See
``_exceptions.py`` for the error tree and ``_client.py`` for the client itself.
"""

from __future__ import annotations

from tower.comfyui._client import ComfyUIClient
from tower.comfyui._exceptions import (
    ComfyUIError,
    ComfyUIExecutionError,
    ComfyUIInterrupted,
    ComfyUIOutOfMemory,
    ComfyUIPreflightError,
    ComfyUIProtocolError,
    ComfyUITimeout,
    ComfyUIUnavailable,
    ComfyUIValidationError,
)
from tower.comfyui._models import (
    Device,
    DownloadedFile,
    ImageRef,
    ProgressEvent,
    PromptState,
    QueueState,
    RenderResult,
    RenderStatus,
    SystemStats,
)
from tower.comfyui._retry import is_transient, retry_delay, should_retry_status

__all__ = [
    "ComfyUIClient",
    "ComfyUIError",
    "ComfyUIExecutionError",
    "ComfyUIInterrupted",
    "ComfyUIOutOfMemory",
    "ComfyUIPreflightError",
    "ComfyUIProtocolError",
    "ComfyUITimeout",
    "ComfyUIUnavailable",
    "ComfyUIValidationError",
    "Device",
    "DownloadedFile",
    "ImageRef",
    "ProgressEvent",
    "PromptState",
    "QueueState",
    "RenderResult",
    "RenderStatus",
    "SystemStats",
    "is_transient",
    "retry_delay",
    "should_retry_status",
]
