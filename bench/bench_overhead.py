"""The flow process's own cost: CPU per take and per batch, a re-run, peak memory.

Renders generated episodes (shots of ``--takes-per-shot`` takes, the draft preset
shrunk to 64x64 so images are tiny) against two instant simulators (``time_scale=0``),
each run in a fresh child process calling ``flows.render_episode.render_episode`` in
process, against a Prefect server this script starts (or ``--prefect-url``). The
simulators run in this process, so their CPU is not the flow's; a small ASGI wrapper
counts the HTTP requests they receive (the simulator itself is unchanged).

    .venv/bin/python bench/bench_overhead.py [--takes 1000,5000,20000] [--quick]
        [--prefect-url URL] [--json-out FILE] [--takes-per-shot 4] [--no-rerun]
        [--breakdown] [--profile PREFIX [--profile-gil]]
    .venv/bin/python bench/bench_overhead.py --fixed-cost [--prefect-url URL]

Measurements:

- overhead: CPU (process_time around the flow call, and getrusage of the child) and wall
  per take and per batch at each size; flat means no growth with the night's size.
  Goal: under 5 ms CPU per take and under 50 ms per batch.
- re-run: the same 1,000-take episode again on the same data root (everything
  deduplicated): wall time and the requests the simulators got after the preflight.
  Goal: under 3 s, no render request (POST /prompt).
- memory: peak RSS (VmHWM) of the flow process on the largest night. Goal: under 1 GB.

Prints the machine and command line, one JSON line per run, then a markdown table.
``--breakdown`` also times the flow's steps (the render task body and its parts, with
the CPU of their own thread); ``--fixed-cost`` measures only a 120-take night (30 shots
x 4): flow start to the first prompt and last image stored to flow end, step by step.
Both wrap the names the flow modules call, in the child only; the project is unchanged.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prefect_local import prefect_server  # noqa: E402  (bench/ is on the path)

PRESETS_YAML = "presets:\n  draft:\n    width: 64\n    height: 64\n"
# What a run asks of a server before it renders (model inventory, preflight, uploads).
PREFLIGHT_PATHS = ("/object_info", "/models", "/system_stats", "/embeddings", "/features",
                   "/upload", "/view_metadata")
RENDER_REQUEST = ("POST", "/prompt")


# --- the child: one flow run, measured ------------------------------------------------

def _vm_hwm_mb() -> float | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


class Steps:
    """Wall and CPU of the flow's steps, by wrapping the names the flow modules call.

    Bench-only instrumentation: each wrapper replaces a module attribute for the child's
    lifetime; nothing in the project changes.
    """

    def __init__(self) -> None:
        self.spans: dict[str, list[float]] = {}  # name -> [wall, cpu, calls]
        self.marks: dict[str, float] = {}  # name -> last time.time()
        self.first: dict[str, float] = {}

    def wrap(self, module: object, name: str, label: str | None = None) -> None:
        original = getattr(module, name, None)
        if original is None:  # another version of the module: nothing to time there
            return
        label = label or name

        @functools.wraps(original)
        def timed(*args, **kwargs):
            wall0, cpu0 = time.perf_counter(), time.thread_time()
            self.first.setdefault(f"{label}:start", time.time())
            try:
                return original(*args, **kwargs)
            finally:
                span = self.spans.setdefault(label, [0.0, 0.0, 0])
                span[0] += time.perf_counter() - wall0
                span[1] += time.thread_time() - cpu0
                span[2] += 1
                self.marks[f"{label}:end"] = time.time()

        setattr(module, name, timed)

    def install(self) -> None:
        import flows.common as common
        import flows.render_episode as episode
        import tasks.dispatch as dispatch
        import tasks.reporting as reporting
        from tower.store import index, metrics

        self.wrap(episode, "resolve_farm", "resolve farm (servers, store, presets)")
        self.wrap(common, "inventory_task", "inventory")
        self.wrap(episode, "plan_run_task", "planning/dedup (task)")
        self.wrap(common, "render_plan", "render_plan (all batches)")
        self.wrap(dispatch, "preflight_task", "preflight")
        self.wrap(dispatch, "ensure_concurrency_limits", "limits")
        self.wrap(dispatch, "run_batches", "batches")
        self.wrap(common, "sheet_items", "sheet items")
        self.wrap(common, "publish_summary", "publish summary (task)")
        self.wrap(reporting, "publish_sheets", "contact sheets")
        self.wrap(reporting, "create_markdown_artifact", "summary artifact")
        self.wrap(reporting, "summary_markdown", "summary markdown")
        self.wrap(metrics.RunLog, "append", "run log")
        self.wrap(index.OutputIndex, "append", "index append")
        self.wrap(metrics.MetricsStore, "append", "metrics append")
        # Per batch, on the task threads (thread CPU is exact there).
        import tasks.render as render
        import tower.runtime.execute as execute
        import tower.runtime.gpu as gpu
        from tower.comfyui import _client

        render.render_batch.fn = self._timed_fn(render.render_batch.fn, "render_batch body")
        self.wrap(execute, "render_prompt", "  render_prompt")
        self.wrap(execute, "store_rendered", "  store_rendered")
        self.wrap(execute, "execute_batch", "  execute_batch")
        self.wrap(execute, "_download_all", "    downloads")
        self.wrap(execute, "build_graph", "    build_graph")
        self.wrap(_client.ComfyUIClient, "render", "    ComfyUIClient.render")
        self.wrap(_client.ComfyUIClient, "__init__", "  ComfyUIClient()")
        self.wrap(gpu, "_has_gpu", "    GPU probe (sampler_for)")
        self.wrap(gpu.GpuSampler, "_sample", "    GPU samples")

    def _timed_fn(self, fn, label: str):
        holder = type("M", (), {})()
        holder.fn = fn
        self.wrap(holder, "fn", label)
        return holder.fn


def child(args: argparse.Namespace) -> None:
    """Runs in a fresh process: one flow call, its CPU, wall and peak memory."""
    import logging

    from flows.render_episode import render_episode

    logging.getLogger("prefect").setLevel(logging.WARNING)
    steps = Steps() if args.steps else None
    if steps:
        steps.install()
    called = time.time()
    before = resource.getrusage(resource.RUSAGE_SELF)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    state = render_episode(shot_list=args.shot_list, servers=args.servers,
                           data_root=args.data_root, presets_file=args.presets_file,
                           retries=0, return_state=True)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    returned = time.time()
    after = resource.getrusage(resource.RUSAGE_SELF)
    summary = state.result(raise_on_failure=False)
    if isinstance(summary, BaseException):
        summary = {"status": f"error: {summary}"}
    print("RESULT " + json.dumps({
        "state": state.type.value, "status": summary.get("status"),
        "takes_requested": summary.get("takes_requested"),
        "takes_rendered": summary.get("takes_rendered"),
        "takes_deduped": summary.get("takes_deduped"),
        "takes_failed": summary.get("takes_failed"), "batches": summary.get("batches"),
        "wall_s": wall, "cpu_s": cpu,
        "user_s": after.ru_utime - before.ru_utime, "sys_s": after.ru_stime - before.ru_stime,
        "peak_rss_mb": _vm_hwm_mb() or after.ru_maxrss / 1024,
        "ru_maxrss_mb": after.ru_maxrss / 1024,
        "called_at": called, "returned_at": returned,
        **({"steps": {k: {"wall_s": v[0], "cpu_s": v[1], "calls": v[2]}
                      for k, v in steps.spans.items()},
            "marks": steps.marks | steps.first} if steps else {}),
    }), flush=True)


# --- the parent: servers, episodes, runs ------------------------------------------------

class RequestCounter:
    """An ASGI wrapper counting (method, path) of every HTTP request and WebSocket."""

    def __init__(self, app):
        self.app = app
        self.counts: Counter[tuple[str, str]] = Counter()
        self.first_at: dict[tuple[str, str], float] = {}
        self.last_at: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            method = scope.get("method", "WS")
            path = re.sub(r"^/history/.+", "/history/{id}", scope["path"])
            now = time.time()
            with self._lock:
                self.counts[(method, path)] += 1
                self.first_at.setdefault((method, path), now)
                self.last_at[(method, path)] = now
        await self.app(scope, receive, send)

    def take(self) -> Counter[tuple[str, str]]:
        with self._lock:
            counts, self.counts = self.counts, Counter()
            self.first_at, self.last_at = {}, {}
        return counts

    def first(self, what: tuple[str, str]) -> float | None:
        return self.first_at.get(what)

    def last(self, what: tuple[str, str]) -> float | None:
        return self.last_at.get(what)


@contextlib.contextmanager
def simulators(count: int, tmp: Path) -> Iterator[tuple[list[str], list[RequestCounter]]]:
    """``count`` instant simulators in this process, their entries and request counters."""
    import tower.simulator.server as sim_server
    from tower.simulator import SimulatorConfig, start_simulator

    counters: list[RequestCounter] = []
    original = sim_server.create_app

    def counted(engine):
        counters.append(RequestCounter(original(engine)))
        return counters[-1]

    sim_server.create_app = counted
    started = []
    try:
        for n in range(count):
            name = f"sim{n}"
            started.append(start_simulator(SimulatorConfig(
                name=name, time_scale=0, output_dir=tmp / f"{name}-out")))
        yield [f"{s.config.name}={s.url}" for s in started], counters
    finally:
        sim_server.create_app = original
        for sim in started:
            sim.stop()


def write_episode(path: Path, takes: int, per_shot: int) -> None:
    """An episode of ``takes`` draft takes, ``per_shot`` to a shot, prompts all different.

    Prompts name the night's size, so each size renders anew (the simulators keep the
    prompts of earlier sizes in their history, under the same prompt ids otherwise).
    """
    lines = ["episode: bench", "defaults:", "  preset: draft", f"  takes: {per_shot}",
             "shots:"]
    for shot in range(-(-takes // per_shot)):
        count = min(per_shot, takes - shot * per_shot)
        lines += [f"  - id: sh{shot:05d}",
                  f"    prompt: \"anime key visual, cel shading, bench {takes} shot {shot}\"",
                  f"    seed: {1000 + shot}"]
        if count != per_shot:
            lines.append(f"    takes: {count}")
    path.write_text("\n".join(lines) + "\n")


def run_child(api: str, shot_list: Path, servers: list[str], data_root: Path,
              presets: Path, profile: str | None, gil: bool = False,
              steps: bool = False) -> dict:
    env = dict(os.environ, PREFECT_API_URL=api, PYTHONPATH=str(ROOT))
    env.pop("PREFECT_HOME", None)
    cmd = [sys.executable, __file__, "--child", "--shot-list", str(shot_list),
           "--data-root", str(data_root), "--presets-file", str(presets),
           *[arg for s in servers for arg in ("--server", s)], *(["--steps"] if steps else [])]
    if profile:
        cmd = [str(Path(sys.executable).with_name("py-spy")), "record", "-r", "100", "-f",
               "raw", "-o", profile, *(["--gil"] if gil else []), "--", *cmd]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    if done.returncode or not lines:
        raise RuntimeError(f"child failed ({done.returncode}):\n{done.stdout[-3000:]}\n"
                           f"{done.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def _requests(counters: list[RequestCounter]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for counter in counters:
        for (method, path), n in counter.take().items():
            total[f"{method} {path}"] += n
    return dict(sorted(total.items()))


def _beyond_preflight(requests: dict[str, int]) -> int:
    return sum(n for what, n in requests.items()
               if not what.split(" ", 1)[1].startswith(PREFLIGHT_PATHS))


def measure(kind: str, takes: int, api: str, servers: list[str],
            counters: list[RequestCounter], tmp: Path, args: argparse.Namespace,
            data_root: Path | None = None) -> dict:
    shot_list = tmp / f"bench-{takes}.yaml"
    write_episode(shot_list, takes, args.takes_per_shot)
    data_root = data_root or tmp / f"data-{takes}"
    _requests(counters)  # reset
    profile = (f"{args.profile}-{kind}-{takes}.txt" if args.profile else None)
    result = run_child(api, shot_list, servers, data_root, tmp / "presets.yaml", profile,
                       args.profile_gil, steps=args.breakdown)
    requests = _requests(counters)
    batches = result["batches"] or 0
    out = {"measure": kind, "takes": takes, **result, "requests": requests,
           "prompts_submitted": requests.get(" ".join(RENDER_REQUEST), 0),
           "requests_beyond_preflight": _beyond_preflight(requests),
           "cpu_ms_per_take": 1000 * result["cpu_s"] / takes,
           "wall_ms_per_take": 1000 * result["wall_s"] / takes,
           "cpu_ms_per_batch": 1000 * result["cpu_s"] / batches if batches else None,
           "wall_ms_per_batch": 1000 * result["wall_s"] / batches if batches else None}
    print(json.dumps(out), flush=True)
    return out


def fixed_cost(api: str, servers: list[str], counters: list[RequestCounter], tmp: Path,
               args: argparse.Namespace, takes: int = 120) -> dict:
    """Flow start -> first prompt and last image stored -> flow end, by step."""
    shot_list = tmp / f"bench-fixed-{takes}.yaml"
    write_episode(shot_list, takes, 4)
    _requests(counters)
    result = run_child(api, shot_list, servers, tmp / "data-fixed", tmp / "presets.yaml",
                       None, steps=True)
    first_prompt = min(t for c in counters if (t := c.first(RENDER_REQUEST)) is not None)
    requests = _requests(counters)
    marks = result["marks"]
    last_stored = marks["index append:end"]
    out = {"measure": "fixed-cost", "takes": takes, "batches": result["batches"],
           "cpu_s": result["cpu_s"], "wall_s": result["wall_s"],
           "start_to_first_prompt_s": first_prompt - result["called_at"],
           "last_stored_to_end_s": result["returned_at"] - last_stored,
           "steps": result["steps"], "prompts_submitted": requests.get("POST /prompt", 0),
           "timeline_s": dict(sorted(
               ({k: v - result["called_at"] for k, v in result["marks"].items()}
                | {"first POST /prompt": first_prompt - result["called_at"],
                   "flow returned": result["returned_at"] - result["called_at"]}).items(),
               key=lambda kv: kv[1]))}
    print(json.dumps(out), flush=True)
    return out


def fixed_table(r: dict) -> str:
    rows = [f"fixed cost of a {r['takes']}-take night ({r['batches']} batches): "
            f"flow start -> first prompt {r['start_to_first_prompt_s']:.2f} s, last image "
            f"stored -> flow end {r['last_stored_to_end_s']:.2f} s, total "
            f"{r['start_to_first_prompt_s'] + r['last_stored_to_end_s']:.2f} s "
            f"(goal < 1.5 s); whole run {r['wall_s']:.2f} s wall, {r['cpu_s']:.2f} s CPU",
            "", "| step | calls | wall s | CPU s (its thread) |", "|---|---|---|---|"]
    for name, step in r["steps"].items():
        rows.append(f"| {name} | {step['calls']} | {step['wall_s']:.3f} | {step['cpu_s']:.3f} |")
    rows += ["", "| timeline (s after the flow call) | at |", "|---|---|"]
    rows += [f"| {name} | {at:.3f} |" for name, at in r["timeline_s"].items()]
    return "\n".join(rows)


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(results: list[dict]) -> str:
    head = ("| run | takes | batches | rendered | deduped | CPU s | wall s | CPU ms/take "
            "| CPU ms/batch | wall ms/take | peak RSS MB | POST /prompt | req. beyond preflight |")
    rows = [head, "|" + "---|" * 13]
    for r in results:
        rows.append(
            f"| {r['measure']} | {r['takes']} | {r['batches']} | {r['takes_rendered']} "
            f"| {r['takes_deduped']} | {r['cpu_s']:.2f} | {r['wall_s']:.2f} "
            f"| {_fmt(r['cpu_ms_per_take'], 2)} | {_fmt(r['cpu_ms_per_batch'])} "
            f"| {_fmt(r['wall_ms_per_take'], 2)} | {r['peak_rss_mb']:.0f} "
            f"| {r['prompts_submitted']} | {r['requests_beyond_preflight']} |")
    return "\n".join(rows)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--takes", default="1000,5000,20000",
                        help="comma-separated night sizes (takes)")
    parser.add_argument("--quick", action="store_true", help="1000 and 5000 takes only")
    parser.add_argument("--takes-per-shot", type=int, default=4)
    parser.add_argument("--servers", type=int, default=2)
    parser.add_argument("--prefect-url", help="an existing Prefect API (else one is started)")
    parser.add_argument("--json-out", help="also write every result as JSON lines here")
    parser.add_argument("--no-rerun", action="store_true", help="skip the re-run measurement")
    parser.add_argument("--profile", help="py-spy raw profiles of each child to PREFIX-*.txt")
    parser.add_argument("--profile-gil", action="store_true",
                        help="profile only the thread holding the GIL (py-spy --gil)")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time the flow's steps (per batch: the task body and its parts)")
    parser.add_argument("--fixed-cost", action="store_true",
                        help="only the fixed per-run cost: 120 takes (30 shots x 4), by step")
    parser.add_argument("--steps", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--shot-list", help=argparse.SUPPRESS)
    parser.add_argument("--data-root", help=argparse.SUPPRESS)
    parser.add_argument("--presets-file", help=argparse.SUPPRESS)
    parser.add_argument("--server", dest="servers_list", action="append",
                        help=argparse.SUPPRESS)
    return parser.parse_args()


def report(results: list[dict]) -> None:
    """The markdown tables and the goals, after the JSON lines."""
    print()
    print(table(results))
    for r in results:
        if r.get("steps") and r["batches"]:
            print(f"\n{r['measure']} {r['takes']} takes: steps per batch (ms; CPU of the "
                  "step's own thread)\n\n| step | calls | wall ms/batch | CPU ms/batch |\n"
                  "|---|---|---|---|")
            for name, st in r["steps"].items():
                print(f"| {name} | {st['calls']} | {1000 * st['wall_s'] / r['batches']:.2f} "
                      f"| {1000 * st['cpu_s'] / r['batches']:.2f} |")
    over = [r for r in results if r["measure"] == "overhead"]
    if len(over) > 1:
        first, last = over[0], over[-1]
        print(f"\ngrowth {first['takes']} -> {last['takes']} takes: CPU ms/take x"
              f"{last['cpu_ms_per_take'] / first['cpu_ms_per_take']:.2f}")
    rerun = [r for r in results if r["measure"] == "rerun"]
    biggest = max(over, key=lambda r: r["takes"]) if over else None
    print("goals: <5 ms CPU/take, <50 ms CPU/batch, flat; re-run <3 s with 0 POST /prompt; "
          "peak RSS <1 GB on the largest night")
    if rerun:
        print(f"re-run: {rerun[0]['wall_s']:.2f} s, {rerun[0]['prompts_submitted']} prompts, "
              f"{rerun[0]['requests_beyond_preflight']} requests beyond the preflight")
    if biggest:
        print(f"peak RSS at {biggest['takes']} takes: {biggest['peak_rss_mb']:.0f} MB")



def main() -> None:
    args = parse_args()
    if args.child:
        args.servers = args.servers_list
        child(args)
        return
    if args.profile and not Path(sys.executable).with_name("py-spy").exists():
        sys.exit("--profile samples the flow process with py-spy: "
                 ".venv/bin/python -m pip install py-spy")
    sizes = [1000, 5000] if args.quick else [int(t) for t in args.takes.split(",")]
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"machine: {platform.node()} {platform.machine()} {os.cpu_count()} CPUs, "
          f"{platform.python_implementation()} {platform.python_version()}, "
          f"{platform.platform()}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="tower-bench-overhead-"))
    results: list[dict] = []
    try:
        (tmp / "presets.yaml").write_text(PRESETS_YAML)
        with prefect_server(tmp, args.prefect_url) as api, \
                simulators(args.servers, tmp) as (servers, counters):
            if args.fixed_cost:
                result = fixed_cost(api, servers, counters, tmp, args)
                if args.json_out:
                    Path(args.json_out).write_text(json.dumps(result) + "\n")
                print()
                print(fixed_table(result))
                return
            for takes in sizes:
                results.append(measure("overhead", takes, api, servers, counters, tmp, args))
                if not args.no_rerun and takes == min(sizes):
                    results.append(measure("rerun", takes, api, servers, counters, tmp, args,
                                           data_root=tmp / f"data-{takes}"))
                shutil.rmtree(tmp / f"data-{takes}", ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json_out:
        Path(args.json_out).write_text("".join(json.dumps(r) + "\n" for r in results))
    report(results)

if __name__ == "__main__":
    main()
