"""The one failure table: metrics status, retry on the same server, try on another."""

from __future__ import annotations

import errno

import httpx
import pytest
from websockets.exceptions import ConnectionClosedError

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
from tower.runtime.failures import Failure, RunStopping, classify, max_attempts
from tower.store.files import UnsafePathError
from tower.store.parquet_io import StoreError


def _store_error(cause: Exception) -> StoreError:
    try:
        raise StoreError("could not write index/part-x.parquet") from cause
    except StoreError as err:
        return err


@pytest.mark.parametrize(("exc", "status", "transient", "elsewhere"), [
    # the server could not be asked: later, and elsewhere, may work
    (ComfyUIUnavailable("down"), "failed", True, True),
    (ComfyUIUnavailable("500", status_code=500), "failed", True, True),
    (ComfyUITimeout("stalled"), "failed", True, True),
    (httpx.ConnectError("refused"), "failed", True, True),
    (httpx.ReadTimeout("slow"), "failed", True, True),
    (ConnectionClosedError(None, None), "failed", True, True),
    (ConnectionRefusedError(), "failed", True, True),
    (OSError(errno.ECONNRESET, "reset by peer"), "failed", True, True),
    # it answered, about this machine: not again here, but another server may manage
    (ComfyUIExecutionError("node raised", prompt_id="p"), "failed", False, True),
    (ComfyUIProtocolError("unsafe path"), "failed", False, True),
    (ComfyUIError("other"), "failed", False, True),
    (ValueError("a bug"), "failed", False, True),
    (KeyError("a bug"), "failed", False, True),
    # the same anywhere: the graph, the models, a cancel, or a batch to split
    (ComfyUIValidationError("bad graph"), "failed", False, False),
    (ComfyUIPreflightError("missing checkpoint"), "failed", False, False),
    (RunStopping("cancelled"), "failed", False, False),
    (ComfyUIOutOfMemory("oom", prompt_id="p"), "oom", False, False),
    (ComfyUIInterrupted("stop", prompt_id="p"), "interrupted", False, False),
])
def test_every_failure_has_one_meaning(exc: BaseException, status: str, transient: bool,
                                       elsewhere: bool) -> None:
    assert classify(exc) == Failure(status, transient, elsewhere)


@pytest.mark.parametrize("exc", [
    OSError(errno.ENOSPC, "No space left on device", "renders/ep01/a.png"),
    OSError(errno.EROFS, "Read-only file system"),
    PermissionError(errno.EACCES, "Permission denied"),
    OSError(errno.EDQUOT, "Disk quota exceeded"),
    UnsafePathError("refusing path 'ep01': resolves outside renders"),
    _store_error(OSError(errno.ENOSPC, "No space left on device")),
])
def test_the_data_roots_disk_failing_is_local_and_fails_anywhere(exc: BaseException) -> None:
    """Neither a retry nor another server helps, and the server is not to blame."""
    assert classify(exc) == Failure("failed", transient=False, elsewhere=False, local=True)


def test_a_store_error_of_another_cause_is_not_local() -> None:
    assert not classify(_store_error(ValueError("schema"))).local


@pytest.mark.parametrize(("servers", "retries", "bound"), [(1, 0, 1), (2, 3, 8), (3, 1, 6)])
def test_the_attempt_bound_is_servers_times_one_plus_retries(servers: int, retries: int,
                                                             bound: int) -> None:
    assert max_attempts(servers, retries) == bound


def test_the_attempt_bound_needs_a_server_and_no_negative_retries() -> None:
    with pytest.raises(ValueError, match="at least one server"):
        max_attempts(0, 3)
    with pytest.raises(ValueError, match="negative retries"):
        max_attempts(2, -1)
