"""One data root shared by several machines: part names, concurrent writers, the store lock.

A render farm mounts one data root on every worker (see ``docs/storage.md``). The
machines are played here by child processes that each get a hostname of their own in a
private UTS namespace (``unshare --uts``): they append to the same output index and
metrics through the real storing path (:func:`tower.runtime.execute.store_rendered`:
stripe lock, images written through a temporary and a rename, index rows, metrics row)
while a third one compacts both stores. Every row must be read back exactly once, every
part must name the machine that wrote it, and ``tower index check`` must find nothing.

The store lock is ``flock`` on a file under ``<data root>/.locks/``: a lock on a file,
not on a host, so a process with another hostname on the same data root waits for it.
On a local filesystem the kernel guarantees that; across real machines it needs a
filesystem whose locks reach every client (NFS v4, or NFS v3 with lockd/NLM; not
``nolock`` or ``local_lock=flock`` mounts), which no test on one machine can show.

This file is also the child processes' program (``python test_shared_root.py ROLE ...``).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from io import BytesIO
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.fs as pafs
import pytest
from PIL import Image

from tower.comfyui import ImageRef, RenderResult
from tower.planning.planner import RenderBatch, batch_id_for
from tower.runtime.execute import RenderContext, Rendered, store_rendered
from tower.shotlist.shots import Shot, ShotList
from tower.spec.outputs import take_output_path
from tower.spec.takes import resolve_takes
from tower.store import compaction
from tower.store import parquet_io as pio
from tower.store.files import DataRoot, atomic_write_bytes, stripe_lock
from tower.store.index import IndexRow, OutputIndex
from tower.store.integrity import check
from tower.store.metrics import BatchMetrics, MetricsStore
from tower.store.schemas import INDEX_SCHEMA

HOSTS = ("gpu-box-a", "gpu-box-b")
COMPACTOR_HOST = "gpu-box-c"
NEW_NAME = re.compile(r"part-(?P<stamp>\d{8}T\d{12}Z)-(?P<host>[A-Za-z0-9.-]+)-(?P<pid>\d+)"
                      r"-(?P<uuid>[0-9a-f]{32})\.parquet")
BATCHES = 16          # per writer, each its own prompt
TAKES_PER_BATCH = 3
SHARED_TAKES = 4      # one prompt both writers store, as two runs of one episode would
STEP_TIMEOUT_S = 60.0
LOCK_NAME = "tower-shared-prompt"
HOLD_S = 0.5


# --- part names ----------------------------------------------------------------------


def test_a_part_name_carries_stamp_host_pid_and_uuid() -> None:
    now = datetime(2026, 11, 27, 1, 2, 3, 456789, tzinfo=UTC)
    found = NEW_NAME.fullmatch(pio.part_name(now=now))
    assert found is not None
    assert found["stamp"] == "20261127T010203456789Z"
    assert found["host"] == pio.host_tag() == pio.safe_host(socket.gethostname())
    assert int(found["pid"]) == os.getpid()
    assert pio.part_name(now=now) != pio.part_name(now=now)


@pytest.mark.parametrize(("raw", "safe"), [
    ("gpu-box-a", "gpu-box-a"),
    ("render01.studio.lan", "render01.studio.lan"),
    ("GPU_Box 7/b", "GPU-Box-7-b"),
    ("rendu-épisode~1", "rendu--pisode-1"),
    ("", "host"),
    ("x" * 100, "x" * pio.HOST_MAX_CHARS),
])
def test_a_host_name_is_made_safe_for_a_file_name(raw: str, safe: str) -> None:
    assert pio.safe_host(raw) == safe


@pytest.mark.parametrize(("err", "vanished"), [
    (OSError(errno.ESTALE, "Stale file handle"), True),
    (pl.exceptions.ComputeError("opening part-x.parquet: Stale file handle (os error 116)"),
     True),
    (FileNotFoundError(errno.ENOENT, "No such file or directory"), True),
    (OSError(errno.EIO, "Input/output error"), False),
    (pa.ArrowInvalid("Parquet magic bytes not found in footer"), False),
])
def test_a_stale_nfs_handle_counts_as_a_vanished_part(err: BaseException, vanished: bool) -> None:
    """What a reader on one machine meets when a compaction on another deletes a part
    it has open: the query lists again instead of failing or calling the part damaged."""
    assert pio.is_not_found(err) is vanished


def _image_row(root: DataRoot, shot: str, when: datetime) -> IndexRow:
    """An index row whose image is on disk with the recorded size and digest."""
    take = resolve_takes(ShotList(episode="ep01", shots=(
        Shot(id=shot, prompt=f"the {shot} bridge", takes=1, preset="draft", seed=3),)))[0]
    data = f"png bytes of {shot}".encode()
    relative = take_output_path(take)
    atomic_write_bytes(root.renders / relative, data)
    return IndexRow.from_take(take, output_path=relative, sha256=hashlib.sha256(data).hexdigest(),
                              size_bytes=len(data), rendered_at=when, server="gpu-a",
                              prompt_id=f"tower-{shot}", run_id="run-1")


def _metrics_row(n: int, when: datetime) -> BatchMetrics:
    return BatchMetrics(
        run_id="run-1", batch_id=f"batch{n:04d}", server="gpu-a", episode="ep01",
        preset="draft", checkpoint="anime-draft-sd15.safetensors", width=512, height=512,
        takes=1, batch_size=1, vae_tiled=False, status="ok", attempt=1, finished_at=when)


def _old_style_part(folder: str, table: pa.Table, stamp: str) -> str:
    """A part named as before hosts were added: ``part-<stamp>-<pid>-<uuid>.parquet``."""
    dest = f"{folder}/part-{stamp}-4242-{uuid.uuid4().hex}.parquet"
    pio.write_table_atomic(pafs.LocalFileSystem(), dest, table)
    return dest


def test_old_and_new_part_names_are_read_compacted_and_checked_alike(tmp_path: Path) -> None:
    """Data roots written before part names carried the host keep working beside new parts."""
    root = DataRoot(tmp_path / "data")
    index, metrics = OutputIndex(root.index), MetricsStore(root.metrics)
    day = datetime(2026, 11, 26, 12, tzinfo=UTC)
    old_rows = [_image_row(root, f"old{n}", day) for n in range(3)]
    new_rows = [_image_row(root, f"new{n}", day) for n in range(3)]
    stamps = ("20261126T000000000000Z", "20991231T235959999999Z")  # before and after now
    for n, (row, stamp) in enumerate(zip(old_rows, stamps + stamps[:1], strict=True)):
        _old_style_part(index.root, pio.rows_to_table([row], INDEX_SCHEMA, "old"), stamp)
        _old_style_part(metrics.partition_dir("2026-11-26"), pio.rows_to_table(
            [_metrics_row(n, day)], metrics.schema, "old"), stamp)
    for n, row in enumerate(new_rows):
        index.append([row])
        metrics.append([_metrics_row(100 + n, day)])
    names = [Path(path).name for path in index.files()]
    assert sum(NEW_NAME.fullmatch(name) is not None for name in names) == 3
    assert names == sorted(names) and names[-1].startswith(f"part-{stamps[1]}-4242-")

    def keys() -> list[str]:
        return sorted(index.scan().collect()["render_key"].to_list())

    expected = sorted(row.render_key for row in old_rows + new_rows)
    assert keys() == expected
    assert metrics.scan().collect().height == 6
    later = datetime.now(UTC) + timedelta(hours=2)     # every file old enough to judge
    assert check(root, now=later).ok
    assert (index.compact().rows, metrics.compact().rows) == (6, 6)
    assert len(index.files()) == len(metrics.files()) == 1
    assert Path(index.files()[0]).name.startswith(f"part-{stamps[0]}-4242-")
    assert keys() == expected and metrics.scan().collect().height == 6
    assert check(root, now=later).ok


# --- several machines on one data root --------------------------------------------------


def _uts_problem() -> str | None:
    """Why child processes cannot get hostnames of their own here (None when they can)."""
    for tool, package in (("unshare", "util-linux"), ("hostname", "hostname")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (package {package})"
    try:
        done = subprocess.run(["unshare", "--uts", "sh", "-c", "hostname tower-probe && hostname"],
                              capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"unshare --uts could not run: {err}"
    if done.returncode != 0 or done.stdout.strip() != "tower-probe":
        why = (done.stderr.strip().splitlines() or ["no reason given"])[0]
        return f"unshare --uts is not permitted here (needs root or user namespaces): {why}"
    return None


@pytest.fixture(scope="module")
def machines() -> None:
    problem = _uts_problem()
    if problem is not None:
        pytest.skip(problem)


def start_machine(host: str, role: str, *args: str) -> subprocess.Popen[str]:
    """This file run as ``role`` in a process whose hostname is ``host``."""
    script = 'hostname "$1" && shift && exec "$@"'
    return subprocess.Popen(
        ["unshare", "--uts", "sh", "-c", script, "sh", host, sys.executable, __file__, role,
         *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish_all(children: Sequence[subprocess.Popen[str]]) -> None:
    for child in children:
        try:
            out, _ = child.communicate(timeout=STEP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            child.kill()
            out, _ = child.communicate()
        assert child.returncode == 0, f"{child.args[6:]} failed:\n{out}"


def wait_for(path: Path, timeout: float = STEP_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.01)


def touch(path: Path, content: str = "") -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(content)
    tmp.replace(path)


def written_names(report: dict[str, Any], store: str) -> list[str]:
    return [Path(path).name for path in report[store]]


def accounted_for(listings: Sequence[compaction.Listing]) -> set[str]:
    """Names of every part readers read or that a live merged file replaces."""
    names: set[str] = set()
    for found in listings:
        for info in found.live:
            names.add(info.base_name)
            names |= found.checks[info.path].replaces
    return names


@pytest.mark.usefixtures("machines")
def test_two_machines_append_while_a_third_compacts_and_every_row_is_read_once(
        tmp_path: Path) -> None:
    root = DataRoot(tmp_path / "data")
    sync = tmp_path / "sync"
    sync.mkdir()
    writers = [start_machine(host, "writer", str(root.root), str(sync), str(n))
               for n, host in enumerate(HOSTS)]
    compactor = start_machine(COMPACTOR_HOST, "compactor", str(root.root), str(sync))
    try:
        for name in (*HOSTS, COMPACTOR_HOST):
            wait_for(sync / f"ready-{name}")
        touch(sync / "go")
        for name in HOSTS:
            wait_for(sync / f"done-{name}")
        touch(sync / "stop")
    finally:
        finish_all([*writers, compactor])
    reports = {host: json.loads((sync / f"report-{host}.json").read_text()) for host in HOSTS}
    compacted = json.loads((sync / f"report-{COMPACTOR_HOST}.json").read_text())

    index, metrics = OutputIndex(root.index), MetricsStore(root.metrics)
    rows = index.scan().collect()
    expected_keys = {key for report in reports.values() for key in report["keys"]}
    assert len(expected_keys) == len(HOSTS) * BATCHES * TAKES_PER_BATCH + SHARED_TAKES
    assert rows.height == len(expected_keys)
    assert set(rows["render_key"]) == expected_keys                # each exactly once
    shared = rows.filter(pl.col("render_key").is_in(reports[HOSTS[0]]["shared_keys"]))
    assert shared.height == SHARED_TAKES and shared["run_id"].n_unique() == 1
    batches = metrics.scan().collect()
    assert batches.height == len(HOSTS) * (BATCHES + 1)
    assert batches.select("run_id", "batch_id").n_unique() == batches.height

    for host, report in reports.items():
        assert report["hostname"] == host
        for store in ("index_parts", "metrics_parts"):
            for name in written_names(report, store):
                found = NEW_NAME.fullmatch(name)
                assert found is not None and found["host"] == host, name
    assert written_names(reports[HOSTS[0]], "index_parts")
    index_names = accounted_for([index.listing()])
    metrics_names = accounted_for(metrics.listings())
    for report in reports.values():
        assert set(written_names(report, "index_parts")) <= index_names
        assert set(written_names(report, "metrics_parts")) <= metrics_names
    assert compacted["hostname"] == COMPACTOR_HOST and compacted["merged"] > 0

    report = check(root, now=datetime.now(UTC) + timedelta(hours=2))
    assert report.ok, [problem.line() for problem in report.problems]
    assert report.images == report.rows == len(expected_keys)


@pytest.mark.usefixtures("machines")
def test_a_prompts_store_lock_excludes_a_process_with_another_hostname(tmp_path: Path) -> None:
    """``flock`` is per file, not per host: the second machine waits for the first."""
    root = tmp_path / "data"
    sync = tmp_path / "sync"
    sync.mkdir()
    holder = start_machine(HOSTS[0], "holder", str(root), str(sync))
    waiter = start_machine(HOSTS[1], "waiter", str(root), str(sync))
    finish_all([holder, waiter])
    held = json.loads((sync / "report-holder.json").read_text())
    waited = json.loads((sync / "report-waiter.json").read_text())
    assert (held["hostname"], waited["hostname"]) == HOSTS
    assert waited["busy_stripes"] == [held["stripe"]]       # held, seen from the other host
    assert waited["entered"] >= held["released"]
    assert waited["entered"] - waited["asked"] >= HOLD_S * 0.8


# --- the child processes ---------------------------------------------------------------


def _png(seed: int) -> bytes:
    noise = random.Random(seed).randbytes(32 * 32 * 3)
    out = BytesIO()
    Image.frombytes("RGB", (32, 32), noise).save(out, format="PNG")
    return out.getvalue()


class RecordingIndex(OutputIndex):
    """The real output index, remembering the parts it wrote."""

    def __init__(self, path: Path):
        super().__init__(path)
        self.written: list[str] = []

    def append(self, rows: Any) -> str | None:
        part = super().append(rows)
        if part is not None:
            self.written.append(part)
        return part


class RecordingMetrics(MetricsStore):
    """The real metrics store, remembering the parts it wrote."""

    def __init__(self, path: Path):
        super().__init__(path)
        self.written: list[str] = []

    def append(self, rows: Any) -> list[str]:
        parts = super().append(rows)
        self.written.extend(parts)
        return parts


class ServerStub:
    """A ComfyUI server whose images are ready: what :func:`store_rendered` fetches from."""

    def __init__(self, name: str):
        self.name = name

    def fetch(self, ref: Any) -> bytes:
        return _png(zlib.crc32(ref.filename.encode()))


def _batches(writer: int) -> tuple[RenderBatch, list[RenderBatch]]:
    """The shared batch (same takes and prompt for every writer) and this writer's own."""
    def batch(shot: str, takes: int) -> RenderBatch:
        resolved = resolve_takes(ShotList(episode="ep01", shots=(
            Shot(id=shot, prompt=f"the {shot} rope bridge", takes=takes, preset="draft",
                 seed=11),)))
        return RenderBatch(batch_id=batch_id_for(resolved), server=HOSTS[writer],
                           takes=tuple(resolved), vram_estimate_mb=2048.0, est_seconds=4.0)

    own = [batch(f"w{writer}s{n:03d}", TAKES_PER_BATCH) for n in range(BATCHES)]
    return batch("shared", SHARED_TAKES), own


def _store(batch: RenderBatch, ctx: RenderContext, host: str) -> None:
    """Store a batch the stub server rendered, exactly as a run stores a finished prompt."""
    finished = datetime.now(UTC)
    images = tuple(ImageRef(f"{batch.batch_id}_{n:05d}_.png", "", "output")
                   for n in range(batch.size))
    result = RenderResult(prompt_id=batch.prompt_id, status="success", images=images,
                          started_at=finished, finished_at=finished)
    store_rendered(ServerStub(host), Rendered(batch, result, None, finished), ctx)


def run_writer(data_root: str, sync: str, number: str) -> None:
    """Plan (dedup against the index) and store batches, as a render run does."""
    host = socket.gethostname()
    root = DataRoot(Path(data_root))
    index, metrics = RecordingIndex(root.index), RecordingMetrics(root.metrics)
    ctx = RenderContext(data_root=root, index=index, metrics=metrics, run_id=f"run-{host}")
    shared, own = _batches(int(number))
    _ready_then_go(Path(sync), host)
    _store(shared, ctx, host)
    for batch in own:
        plan = index.dedup(batch.takes, root.renders)
        assert len(plan.to_render) == batch.size, "another machine rendered our takes"
        _store(batch, ctx, host)
    report = {"hostname": host, "index_parts": index.written, "metrics_parts": metrics.written,
              "keys": [t.key for b in (shared, *own) for t in b.takes],
              "shared_keys": [t.key for t in shared.takes]}
    (Path(sync) / f"report-{host}.json").write_text(json.dumps(report))
    touch(Path(sync) / f"done-{host}")


def run_compactor(data_root: str, sync: str) -> None:
    """Compact the index and every metrics day until the writers are done, then once more."""
    host = socket.gethostname()
    root = DataRoot(Path(data_root))
    index, metrics = OutputIndex(root.index), MetricsStore(root.metrics)
    _ready_then_go(Path(sync), host)
    merged = rounds = 0
    while True:
        last = (Path(sync) / "stop").exists()
        merged += len(index.compact().merged) + len(metrics.compact().merged)
        rounds += 1
        if last:
            break
        time.sleep(0.05)
    report = {"hostname": host, "merged": merged, "rounds": rounds}
    (Path(sync) / f"report-{host}.json").write_text(json.dumps(report))


def _ready_then_go(sync: Path, host: str) -> None:
    touch(sync / f"ready-{host}")
    wait_for(sync / "go")


def run_holder(data_root: str, sync: str) -> None:
    """Hold the prompt's stripe lock until the other machine is waiting for it."""
    folder = Path(data_root) / ".locks"
    with stripe_lock(Path(data_root), LOCK_NAME):
        stripes = sorted(path.name for path in folder.iterdir())
        touch(Path(sync) / "held")
        wait_for(Path(sync) / "asking")
        time.sleep(HOLD_S)
        released = time.time()
    report = {"hostname": socket.gethostname(), "stripe": stripes[0], "released": released}
    (Path(sync) / "report-holder.json").write_text(json.dumps(report))


def run_waiter(data_root: str, sync: str) -> None:
    """See the stripe busy without blocking, then wait for it in ``stripe_lock``."""
    wait_for(Path(sync) / "held")
    busy = []
    for path in sorted((Path(data_root) / ".locks").iterdir()):
        fd = os.open(path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            busy.append(path.name)
        finally:
            os.close(fd)
    asked = time.time()
    touch(Path(sync) / "asking")
    with stripe_lock(Path(data_root), LOCK_NAME):
        entered = time.time()
    report = {"hostname": socket.gethostname(), "busy_stripes": busy, "asked": asked,
              "entered": entered}
    (Path(sync) / "report-waiter.json").write_text(json.dumps(report))


ROLES: dict[str, Callable[..., None]] = {
    "writer": run_writer, "compactor": run_compactor, "holder": run_holder,
    "waiter": run_waiter}

if __name__ == "__main__":
    ROLES[sys.argv[1]](*sys.argv[2:])
