"""Runs one queued prompt the way ``execution.PromptExecutor`` does, in simulated time.

It sends the same WebSocket messages in the same order and to the same audience as
ComfyUI 0.3.64 (README facts 7, 9, 11, 12 of the contract recordings), keeps a
ComfyUI-like node cache (only the latest prompt's nodes, keyed on their inputs), and
returns the history entry. Sleeping is ``time_scale`` real seconds per simulated second.

A class with ``IS_CHANGED`` (LoadImage: the file's sha256) adds its value to its cache
key, so the node and everything downstream re-run when the file's content changes.
Inputs a node class does not declare are handled like ComfyUI's: they are part of the
node's cache key (``CacheKeySetInputSignature.get_immediate_node_signature`` takes
every input key) but never reach the node (``execution.get_input_data`` passes declared
inputs and links only). So an undeclared key on a root node makes the whole graph miss
the cache, which is how a forced render (``tower.spec.graph``) executes every node again.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
import traceback
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tower.comfyui import is_link
from tower.simulator import costs
from tower.simulator.catalog import Catalog
from tower.simulator.config import Faults, SimulatorConfig
from tower.simulator.folders import Folders
from tower.simulator.hub import Hub
from tower.simulator.nodes import HANDLERS, IS_CHANGED, SimulatedError, generic


class Interrupted(Exception):
    """The running prompt was interrupted (checked between steps and nodes)."""


class Stopped(Exception):
    """The server is stopping or restarting: abandon the prompt without a trace."""


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Machine:
    """The simulated GPU: the loaded checkpoint, memory in use, and when it was busy."""

    loaded: str | None = None
    activations_mb: float = 0.0
    busy: list[tuple[float, float]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def used_mb(self) -> float:
        return (costs.CHECKPOINT_MB if self.loaded else 0.0) + self.activations_mb

    def record(self, start: float, end: float) -> None:
        with self.lock:
            self.busy.append((start, end))


class Executor:
    """Executes prompts for one server session (lost on restart)."""

    def __init__(self, config: SimulatorConfig, faults: Faults, catalog: Catalog, hub: Hub,
                 machine: Machine, folders: Folders, stop: threading.Event) -> None:
        self.config = config
        self.faults = faults
        self.catalog = catalog
        self.hub = hub
        self.machine = machine
        self.folders = folders
        self.stop = stop
        self.interrupt = threading.Event()
        self.cache: dict[str, tuple[tuple[Any, ...], dict[str, Any] | None]] = {}
        self.rng = random.Random(faults.seed)
        self._rng_seed = faults.seed
        self.running_id: str | None = None
        self._client: str | None = None
        self._states: dict[str, dict[str, Any]] = {}
        self.prompt: dict[str, Any] = {}
        self.extra_pnginfo: dict[str, Any] | None = None

    # -- the Context used by node handlers -------------------------------------------

    def work(self, seconds: float, vram_mb: float = 0.0) -> None:
        self.machine.activations_mb = vram_mb
        try:
            self._sleep(seconds)
        finally:
            self.machine.activations_mb = 0.0

    def ensure_loaded(self, checkpoint: str) -> None:
        if self.machine.loaded != checkpoint:
            self.load_checkpoint(checkpoint)

    def load_checkpoint(self, checkpoint: str) -> None:
        """Read the checkpoint file and load it, even when the same name is loaded:
        an executing CheckpointLoaderSimple reads its file anew in ComfyUI."""
        self.machine.loaded = None
        self._sleep(self.config.model_load_s)
        self.machine.loaded = checkpoint

    def progress_steps(self, node_id: str, steps: int, step_s: float, vram_mb: float) -> None:
        self.machine.activations_mb = vram_mb
        try:
            for step in range(1, steps + 1):
                self._sleep(step_s)
                self.check_interrupt()
                self._progress(node_id, step, steps)
        finally:
            self.machine.activations_mb = 0.0

    def check_vram(self, needed_mb: float) -> None:
        if costs.CHECKPOINT_MB + needed_mb > self.config.vram_mb:
            raise SimulatedError("torch.OutOfMemoryError",
                                 costs.oom_message(needed_mb, self.config.vram_mb))

    def maybe_fail(self, batch: int) -> None:
        limit = self.faults.oom_above_batch
        if limit is not None and batch > limit:
            raise SimulatedError("torch.OutOfMemoryError",
                                 costs.oom_message(batch * 1024.0, self.config.vram_mb))
        if self.faults.seed != self._rng_seed:
            self.rng, self._rng_seed = random.Random(self.faults.seed), self.faults.seed
        rate = self.faults.execution_error_rate
        if rate and self.rng.random() < rate:
            raise SimulatedError("RuntimeError", "simulated sampler failure (injected fault)")

    # -- running a prompt ------------------------------------------------------------

    def _sleep(self, seconds: float) -> None:
        if self.stop.wait(max(0.0, seconds * self.config.time_scale)):
            raise Stopped

    def check_interrupt(self) -> None:
        if self.stop.is_set():
            raise Stopped
        if self.interrupt.is_set():
            raise Interrupted

    def send_to_client(self, event: str, data: dict[str, Any], *, broadcast: bool = False) -> None:
        """ComfyUI's ``add_message``: to the client, or to everyone if ``broadcast``."""
        if self._client is not None or broadcast:
            self.hub.send(event, data, self._client)

    def report_state(self, node_id: str, value: float, maximum: float, state: str) -> None:
        """``progress_state``: like ComfyUI, the whole map of non-pending nodes each time."""
        self._states[node_id] = {
            "value": value, "max": maximum, "state": state, "node_id": node_id,
            "prompt_id": self.running_id, "display_node_id": node_id,
            "parent_node_id": None, "real_node_id": node_id}
        nodes = {k: dict(v) for k, v in self._states.items()}
        self.hub.send("progress_state", {"prompt_id": self.running_id, "nodes": nodes},
                      self._client)

    def _progress(self, node_id: str, value: int, maximum: int) -> None:
        self.report_state(node_id, float(value), float(maximum), "running")
        self.hub.send("progress", {"value": value, "max": maximum,
                                   "prompt_id": self.running_id, "node": node_id},
                      self._client)

    def run(self, item: list[Any]) -> dict[str, Any]:
        """Execute a queue item; returns ``{"status", "outputs", "meta"}`` for history."""
        _, prompt_id, prompt, extra_data, outputs_to_execute = item
        self.interrupt.clear()
        self.running_id, self.prompt = prompt_id, prompt
        self._client = extra_data.get("client_id")
        self.extra_pnginfo = extra_data.get("extra_pnginfo")
        self._states = {}
        messages: list[Any] = []

        def message(event: str, data: dict[str, Any], broadcast: bool = False) -> None:
            messages.append([event, data])
            self.send_to_client(event, data, broadcast=broadcast)

        changed = self._is_changed(prompt)
        memo: dict[str, str] = {}
        signatures = {nid: _signature(prompt, nid, changed=changed, memo=memo) for nid in prompt}
        order = _execution_order(prompt, outputs_to_execute)
        cached = [nid for nid in prompt if signatures[nid] in self.cache]
        message("execution_start", {"prompt_id": prompt_id, "timestamp": now_ms()})
        message("execution_cached", {"nodes": cached, "prompt_id": prompt_id,
                                     "timestamp": now_ms()})
        run = _Run(self, prompt, signatures, order)
        try:
            run.execute()
        except Interrupted:
            message("execution_interrupted", {
                "prompt_id": prompt_id, "node_id": run.current,
                "node_type": prompt[run.current]["class_type"], "executed": run.executed,
                "timestamp": now_ms()}, broadcast=True)
            return self._finish(run, messages, success=False)
        except Stopped:
            raise
        except Exception as err:
            message("execution_error", run.error_data(err))
            return self._finish(run, messages, success=False)
        message("execution_success", {"prompt_id": prompt_id, "timestamp": now_ms()})
        return self._finish(run, messages, success=True)

    def _is_changed(self, prompt: dict[str, Any]) -> dict[str, str]:
        """``IS_CHANGED`` of the prompt's nodes that have one; an unreadable file gets a
        value of its own each time, so its node never hits the cache (ComfyUI's NaN)."""
        changed = {}
        for node_id, node in prompt.items():
            check = IS_CHANGED.get(node["class_type"])
            if check is not None:
                changed[node_id] = check(self.folders, node.get("inputs", {})) or \
                    f"unreadable {uuid.uuid4()}"
        return changed

    def _finish(self, run: _Run, messages: list[Any], success: bool) -> dict[str, Any]:
        keep = set(run.signatures.values())
        self.cache = {sig: value for sig, value in self.cache.items() if sig in keep}
        if run.started is not None:
            self.machine.record(run.started, time.time())
        status = {"status_str": "success" if success else "error", "completed": success,
                  "messages": messages}
        outputs = run.ui if success else {}
        meta = {nid: {"node_id": nid, "display_node": nid, "parent_node": None,
                      "real_node_id": nid} for nid in outputs}
        return {"outputs": outputs, "status": status, "meta": meta}

    def send_done(self, prompt_id: str) -> None:
        """``executing {node: null}`` after the history is written (client prompts only)."""
        if self._client is not None:
            self.hub.send("executing", {"node": None, "prompt_id": prompt_id}, self._client)


class _Run:
    """The state of one prompt's execution."""

    def __init__(self, ex: Executor, prompt: dict[str, Any], signatures: dict[str, str],
                 order: list[str]) -> None:
        self.ex = ex
        self.prompt = prompt
        self.signatures = signatures
        self.order = order
        self.values: dict[str, tuple[Any, ...]] = {}
        self.ui: dict[str, Any] = {}
        self.executed: list[str] = []
        self.current = order[0] if order else ""
        self.inputs: dict[str, Any] = {}
        self.started: float | None = None

    def execute(self) -> None:
        ex = self.ex
        for node_id in self.order:
            self.current = node_id
            hit = ex.cache.get(self.signatures[node_id])
            if hit is not None:
                self.values[node_id], ui = hit
                if ui is not None:
                    self._executed(node_id, ui)
                    ex.report_state(node_id, 1, 1, "finished")
                continue
            ex.check_interrupt()
            self._run_node(node_id)

    def _run_node(self, node_id: str) -> None:
        ex = self.ex
        node = self.prompt[node_id]
        class_type = node["class_type"]
        self.inputs = self._resolve(node["inputs"], ex.catalog.declared(class_type))
        if self.started is None:
            self.started = time.time()
        ex.report_state(node_id, 0.0, 1.0, "running")
        ex.send_to_client("executing", {"node": node_id, "display_node": node_id,
                               "prompt_id": ex.running_id})
        handler = HANDLERS.get(class_type)
        if handler is not None:
            outputs, ui = handler(ex, node_id, self.inputs)
        else:
            outputs, ui = generic(ex, node_id, self.inputs, ex.catalog.output_types(class_type))
        self.values[node_id] = outputs
        ex.cache[self.signatures[node_id]] = (outputs, ui)
        self.executed.append(node_id)
        ex.report_state(node_id, 1.0, 1.0, "finished")
        if ui is not None:
            self._executed(node_id, ui)

    def _executed(self, node_id: str, ui: dict[str, Any]) -> None:
        self.ui[node_id] = ui
        self.ex.send_to_client("executed", {"node": node_id, "display_node": node_id, "output": ui,
                                   "prompt_id": self.ex.running_id})

    def _resolve(self, inputs: dict[str, Any], declared: set[str]) -> dict[str, Any]:
        """What the node function gets, as ``execution.get_input_data``: links resolved
        (declared or not), constants only where the class declares them."""
        resolved = {}
        for name, value in inputs.items():
            if is_link(value) and value[0] in self.values:
                resolved[name] = self.values[value[0]][value[1]]
            elif name in declared:
                resolved[name] = value
        return resolved

    def error_data(self, err: Exception) -> dict[str, Any]:
        kind = err.exception_type if isinstance(err, SimulatedError) else type(err).__name__
        return {
            "prompt_id": self.ex.running_id, "node_id": self.current,
            "node_type": self.prompt[self.current]["class_type"], "executed": self.executed,
            "exception_message": f"{err}\n", "exception_type": kind,
            "traceback": traceback.format_tb(err.__traceback__),
            "current_inputs": {k: [_shown(v)] for k, v in self.inputs.items()},
            "current_outputs": list(self.prompt), "timestamp": now_ms()}


def _shown(value: Any) -> Any:
    """An input as ComfyUI's error shows it (``format_value``): JSON scalars as they
    are, anything else as its string."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _signature(prompt: dict[str, Any], node_id: str, seen: frozenset[str] = frozenset(),
               changed: Mapping[str, str] | None = None,
               memo: dict[str, str] | None = None) -> str:
    """A node's cache key: its class, its ``IS_CHANGED`` value if any (``changed``) and
    every input, declared or not (as ComfyUI), with links replaced by upstream keys, so
    a changed ancestor changes the key; the key is a sha256 of all that. ``memo`` keeps
    one prompt's keys as they are made, so a shared ancestor's key is made once, not
    once per path to it."""
    if memo is not None and node_id in memo:
        return memo[node_id]
    changed = changed or {}
    node = prompt[node_id]
    parts: dict[str, Any] = {}
    for name, value in sorted(node.get("inputs", {}).items()):
        if is_link(value) and value[0] in prompt and value[0] not in seen:
            parts[name] = [_signature(prompt, value[0], seen | {node_id}, changed, memo),
                           value[1]]
        else:
            parts[name] = value
    key: list[Any] = [node["class_type"], parts]
    if node_id in changed:
        key.append(changed[node_id])
    # Hashed: upstream keys nest in this one, and nested JSON text grows with each level.
    signature = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    if memo is not None:
        memo[node_id] = signature
    return signature


def _execution_order(prompt: dict[str, Any], outputs: list[str]) -> list[str]:
    """Upstream-first order of the nodes the outputs need."""
    order: list[str] = []
    seen: set[str] = set()

    def visit(node_id: str) -> None:
        if node_id in seen:
            return
        seen.add(node_id)
        for value in prompt[node_id].get("inputs", {}).values():
            if is_link(value) and value[0] in prompt:
                visit(value[0])
        order.append(node_id)

    for output in outputs:
        visit(output)
    return order
