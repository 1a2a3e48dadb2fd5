"""What a failed batch means for the run: one table, read by every layer that reacts.

Three questions are asked of every exception a batch ends with, and they are answered
here only:

- **status**: what its metrics row says (``failed``, ``oom``, ``interrupted``);
- **transient**: may the same batch succeed on the same server a little later (an
  unreachable or restarting server, a timeout)? Then the orchestrator retries it there;
- **elsewhere**: may another server succeed where this one failed (it was unreachable,
  a node raised on that machine, it answered nonsense)? Then the pool sends the batch
  to each other server once. A wrong graph, a missing model, a run being cancelled or
  an out-of-memory (which is split into halves instead) would fail the same anywhere.

How many attempts a batch gets in total: on each server, ``1 + retries`` (the flow's
``retries``, with exponential backoff) while the failure is transient; then, if the
failure is one another server may not share, one more round on each server it has not
tried, each round again ``1 + retries``. With every server unreachable that is
``servers x (1 + retries)`` attempts at most, fewer once servers fall out of rotation
(``max_server_failures`` failed batches in a row take a server out for the rest of the
run; see :mod:`tower.runtime.pool`). Inside one attempt the ComfyUI client itself only
retries idempotent GETs briefly, so the layers do not multiply further.

A new exception class is classified by adding one row to :data:`RULES`.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from websockets.exceptions import WebSocketException

from tower.comfyui import (
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


class RunStopping(RuntimeError):
    """The run is being cancelled: a batch that got its turn is not submitted."""


@dataclass(frozen=True)
class Failure:
    """How the run reacts to one failed batch attempt."""

    status: str
    transient: bool
    elsewhere: bool


FAILED_HERE = Failure("failed", transient=False, elsewhere=True)
UNREACHABLE = Failure("failed", transient=True, elsewhere=True)
FAILS_ANYWHERE = Failure("failed", transient=False, elsewhere=False)

# First matching class wins, so subclasses come before their bases.
RULES: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], Failure], ...] = (
    ((ComfyUIUnavailable, ComfyUITimeout), UNREACHABLE),
    (ComfyUIOutOfMemory, Failure("oom", transient=False, elsewhere=False)),
    (ComfyUIInterrupted, Failure("interrupted", transient=False, elsewhere=False)),
    ((ComfyUIValidationError, ComfyUIPreflightError, RunStopping), FAILS_ANYWHERE),
    ((ComfyUIExecutionError, ComfyUIProtocolError, ComfyUIError), FAILED_HERE),
    # Below the client: a transport error it did not wrap, or the local disk.
    ((httpx.TransportError, WebSocketException, OSError), UNREACHABLE),
)


def classify(exc: BaseException) -> Failure:
    """The row of :data:`RULES` for ``exc``; anything unknown (a bug) is not retried but
    may be tried on another server."""
    for kinds, failure in RULES:
        if isinstance(exc, kinds):
            return failure
    return FAILED_HERE
