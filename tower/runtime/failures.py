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

How many attempts a batch gets in total, :func:`max_attempts`::

    attempts <= servers x (1 + retries)

An attempt is one run of the render task (one prompt, or the halves of an out-of-memory
split rendered inside it). On one server a batch gets ``1 + retries`` attempts (the
flow's ``retries``, with exponential backoff) while its failure is transient, and one
attempt when it is not. Then, if the failure is one another server may not share, the
pool sends it to a server it has not been on, never back to one it has
(:mod:`tower.runtime.pool`), each again ``1 + retries`` at most. With every server
unreachable a batch gets exactly ``servers x (1 + retries)`` while no server leaves
rotation before the batch reaches it; fewer once servers leave rotation
(``max_server_failures`` failed batches in a row take a server out for the rest of the
run, and a batch with no server left to try fails at once, quoting each server's last
error). Prompts: an attempt that splits on out-of-memory submits at most
``2 x takes - 1`` (the halving tree of a batch of ``takes``), so a batch's prompts are
bounded by ``max_attempts(...) x (2 x takes - 1)``. Inside one attempt the ComfyUI client itself
only retries idempotent GETs and an unanswered POST briefly (after checking whether the
prompt got queued), so the layers do not multiply further.

A new exception class is classified by adding one row to :data:`RULES`.
"""

from __future__ import annotations

import errno
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
from tower.store.files import UnsafePathError
from tower.store.parquet_io import StoreError


class RunStopping(RuntimeError):
    """The run is being cancelled: a batch that got its turn is not submitted."""


@dataclass(frozen=True)
class Failure:
    """How the run reacts to one failed batch attempt."""

    status: str
    transient: bool
    elsewhere: bool
    # The fault is this machine's (its disk), not the server's: it does not count
    # towards taking the server out of rotation.
    local: bool = False


FAILED_HERE = Failure("failed", transient=False, elsewhere=True)
UNREACHABLE = Failure("failed", transient=True, elsewhere=True)
FAILS_ANYWHERE = Failure("failed", transient=False, elsewhere=False)
LOCAL_STORAGE = Failure("failed", transient=False, elsewhere=False, local=True)

# What the data root's disk answers when it cannot take a file: full, over quota,
# read-only, not ours to write, a file too large. Rendering elsewhere cannot help.
LOCAL_STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES,
                                  errno.EPERM, errno.EFBIG})

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
    may be tried on another server. A local storage failure (the data root's disk, or a
    path that would leave it) is :data:`LOCAL_STORAGE` whatever its class."""
    if is_local_storage(exc):
        return LOCAL_STORAGE
    for kinds, failure in RULES:
        if isinstance(exc, kinds):
            return failure
    return FAILED_HERE


def is_local_storage(exc: BaseException) -> bool:
    """Whether ``exc`` is the data root refusing a write (the stores wrap theirs in
    :class:`StoreError`, keeping the disk's error as the cause)."""
    if isinstance(exc, UnsafePathError):
        return True
    if isinstance(exc, StoreError):
        exc = exc.__cause__ or exc
    return isinstance(exc, OSError) and exc.errno in LOCAL_STORAGE_ERRNOS


def max_attempts(servers: int, retries: int) -> int:
    """The most render attempts one batch gets in a run: ``servers x (1 + retries)``.

    ``servers`` is how many servers the run renders on, ``retries`` the flow's retries
    after a transient failure (see the module docstring for why it cannot be more).
    """
    if servers < 1 or retries < 0:
        raise ValueError(f"need at least one server and no negative retries "
                         f"(got {servers} servers, {retries} retries)")
    return servers * (1 + retries)
