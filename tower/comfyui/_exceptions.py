"""The one exception tree of the ComfyUI client.

    ComfyUIError                      anything the client raises on purpose
    ├── ComfyUIUnavailable            network failure, timeout on a request, 5xx, restart:
    │                                 the server may answer later (transient)
    ├── ComfyUITimeout                no progress within stall_timeout, or past the overall
    │                                 timeout of a wait (transient)
    ├── ComfyUIValidationError        HTTP 400 on POST /prompt: the graph is wrong
    ├── ComfyUIExecutionError         a node raised while running the prompt
    │   └── ComfyUIOutOfMemory        ... and it was a CUDA/torch out-of-memory error
    ├── ComfyUIInterrupted            the prompt was interrupted (POST /interrupt)
    ├── ComfyUIPreflightError         the server lacks checkpoints, samplers or node classes
    └── ComfyUIProtocolError          an answer the client cannot use or must not trust

Network failures (Unavailable, Timeout) are kept apart from what the server answered
(Validation, Execution, Interrupted, Protocol), and both apart from a caller asking for
something the server cannot do (Preflight). Library exceptions (httpx, websockets) are
wrapped with ``raise ... from err``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tower.comfyui._models import RenderResult


class ComfyUIError(Exception):
    """Base class of every error raised by :mod:`tower.comfyui`."""


class ComfyUIUnavailable(ComfyUIError):
    """The server could not be reached or answered 5xx; trying later may work."""

    def __init__(self, message: str, *, status_code: int | None = None):
        super().__init__(message)
        self.status_code = status_code


class ComfyUITimeout(ComfyUIError):
    """A wait saw no progress for ``stall_timeout`` seconds or ran past its ``timeout``."""

    def __init__(self, message: str, *, prompt_id: str | None = None):
        super().__init__(message)
        self.prompt_id = prompt_id


class ComfyUIValidationError(ComfyUIError):
    """POST /prompt answered 400; ``node_errors`` is ComfyUI's per-node error map."""

    def __init__(self, message: str, *, error: Mapping[str, Any] | None = None,
                 node_errors: Mapping[str, Any] | None = None):
        super().__init__(message)
        self.error = dict(error or {})
        self.node_errors = dict(node_errors or {})


class ComfyUIExecutionError(ComfyUIError):
    """A node raised while the prompt ran; the server reported it via WS and history."""

    def __init__(self, message: str, *, prompt_id: str, node_id: str | None = None,
                 node_type: str | None = None, exception_type: str | None = None,
                 exception_message: str | None = None,
                 result: RenderResult | None = None):
        super().__init__(message)
        self.prompt_id = prompt_id
        self.node_id = node_id
        self.node_type = node_type
        self.exception_type = exception_type
        self.exception_message = exception_message
        self.result = result


class ComfyUIOutOfMemory(ComfyUIExecutionError):
    """The node ran out of GPU memory: render the batch in smaller pieces."""


class ComfyUIInterrupted(ComfyUIError):
    """The prompt was interrupted before it finished."""

    def __init__(self, message: str, *, prompt_id: str, node_id: str | None = None,
                 node_type: str | None = None, result: RenderResult | None = None):
        super().__init__(message)
        self.prompt_id = prompt_id
        self.node_id = node_id
        self.node_type = node_type
        self.result = result


class ComfyUIPreflightError(ComfyUIError):
    """Graphs need checkpoints, samplers, schedulers or node classes the server lacks."""

    def __init__(self, message: str, *, missing: Mapping[str, list[str]] | None = None):
        super().__init__(message)
        self.missing = dict(missing or {})


class ComfyUIProtocolError(ComfyUIError):
    """The server answered something unexpected or unsafe (e.g. a path escaping a folder)."""
