"""One simulated ComfyUI process: queue, history, node cache, worker thread.

A :class:`Session` is everything a real ComfyUI restart loses. The :class:`Engine` keeps
what outlives a restart (settings, faults, folders, sockets hub, busy log) and swaps in
a fresh session on :meth:`Engine.restart`.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from tower.simulator.catalog import Catalog
from tower.simulator.config import Faults, SimulatorConfig
from tower.simulator.executor import Executor, Machine, Stopped
from tower.simulator.folders import Folders
from tower.simulator.hub import Hub
from tower.simulator.jobs import PromptQueue

POLL_S = 0.05
LOG = logging.getLogger(__name__)


class Session:
    """Queue, history, cache and the worker that executes prompts in queue order."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.queue = PromptQueue()
        self.number = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.executor = Executor(engine.config, engine.faults, engine.catalog, engine.hub,
                                 engine.machine, engine.folders, self.stop)
        self._free: dict[str, bool] = {}
        self._thread = threading.Thread(target=self._work, daemon=True,
                                        name=f"{engine.config.name}-worker")

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self.stop.set()
        self._thread.join(timeout=10)

    def next_number(self, front: bool) -> int:
        with self.lock:
            number = -self.number if front else self.number
            self.number += 1
            return number

    def status(self) -> dict[str, Any]:
        return {"status": {"exec_info": {"queue_remaining": self.queue.remaining()}}}

    def broadcast_status(self) -> None:
        self.engine.hub.send("status", self.status())

    def request_free(self, unload_models: bool, free_memory: bool) -> None:
        """Applied by the worker between prompts, as ComfyUI's ``prompt_worker`` does."""
        with self.lock:
            self._free["unload"] = self._free.get("unload", False) or unload_models
            self._free["free"] = self._free.get("free", False) or free_memory

    def interrupt(self, prompt_id: str | None) -> None:
        if prompt_id is None or prompt_id == self.executor.running_id:
            self.executor.interrupt.set()

    def _apply_free(self) -> None:
        with self.lock:
            free, self._free = self._free, {}
        if free.get("unload") or free.get("free"):
            self.engine.machine.loaded = None
        if free.get("free"):
            self.executor.cache.clear()

    def _work(self) -> None:
        while not self.stop.is_set():
            self._apply_free()
            got = self.queue.get(POLL_S)
            if got is None:
                continue
            self._apply_free()  # a /free sent while the worker waited comes first
            task, item = got
            self.broadcast_status()
            try:
                entry = self.executor.run(item)
            except Stopped:
                self.queue.forget_running(task)
                return
            except Exception:  # a simulator bug must not silently stop the queue
                LOG.exception("simulator %s failed on prompt %s", self.engine.config.name,
                              item[1])
                entry = {"outputs": {}, "meta": {}, "status": {
                    "status_str": "error", "completed": False, "messages": []}}
            finally:
                self.executor.running_id = None
            delay = self.engine.faults.history_delay_s
            if delay and self.stop.wait(delay):
                return
            self.queue.task_done(task, entry)
            self.broadcast_status()
            self.executor.send_done(item[1])


class Engine:
    """Settings, faults and state of one simulator instance."""

    def __init__(self, config: SimulatorConfig, faults: Faults, folders: Folders) -> None:
        self.config = config
        self.faults = faults
        self.folders = folders
        self.catalog = Catalog(config)
        self.hub = Hub(lambda: self.faults.drop_ws_after)
        self.machine = Machine()
        self.started_at = time.time()
        self.session = Session(self)
        self.session.start()

    def restart(self) -> None:
        """Lose queue, history, cache, loaded model and sockets; numbering restarts at 0."""
        old = self.session
        old.close()
        self.hub.close_all()
        self.machine.loaded = None
        self.machine.activations_mb = 0.0
        self.session = Session(self)
        self.session.start()

    def close(self) -> None:
        self.session.close()
        self.hub.close_all()

    def busy(self, since: float | None = None) -> dict[str, Any]:
        """Busy intervals and utilisation from ``since`` (default: start-up) until now;
        intervals are clipped to that window."""
        now = time.time()
        start = self.started_at if since is None else since
        with self.machine.lock:
            intervals = [(max(s, start), e) for s, e in self.machine.busy if e > start]
        busy_s = sum(end - begin for begin, end in intervals)
        elapsed = max(now - start, 1e-9)
        return {"intervals": [[s, e] for s, e in intervals], "busy_s": busy_s,
                "since": start, "now": now, "utilisation": min(1.0, busy_s / elapsed)}
