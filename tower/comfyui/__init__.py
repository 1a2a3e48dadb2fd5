"""ComfyUI client: submit graphs, follow them to the end, fetch the images.

Prefect-free and synchronous (the Prefect tasks run it in threads). See
``_exceptions.py`` for the error tree, ``_client.py`` for the client itself and
``_identity.py`` for the name a server goes by in logs, metrics and limits.
"""

from __future__ import annotations

from tower.comfyui._api_format import combo_options, is_link
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
from tower.comfyui._identity import (
    NO_HEADER,
    ServerModels,
    header_conflicts,
    header_digest,
    limit_name,
    model_fingerprint,
    preview_limit_name,
    read_headers,
    server_identity,
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
from tower.comfyui._retry import retry_delay, should_retry_status

__all__ = [
    "NO_HEADER",
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
    "ServerModels",
    "SystemStats",
    "combo_options",
    "header_conflicts",
    "header_digest",
    "is_link",
    "limit_name",
    "model_fingerprint",
    "preview_limit_name",
    "read_headers",
    "retry_delay",
    "server_identity",
    "should_retry_status",
]
