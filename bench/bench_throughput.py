"""How busy the nightly flow keeps the GPUs, and what it buys over the obvious script.

The question behind it: a render farm is paid for by the GPU hour, so the share of the
night the cards actually execute prompts is the number that matters, more than how fast
any one piece of Python is. This runs the real ``render-episode`` flow (in-process in a
child Python, against a running Prefect server) over ComfyUI simulators and, in the same
run, the naive one-take-at-a-time client of ``bench/naive_loop.py``, and prints both:

    .venv/bin/python bench/bench_throughput.py [--quick] [--servers 1,2,4] [--shots 30]
        [--takes 4] [--repeat 1] [--prefect-url URL] [--json-out FILE]
    .venv/bin/python bench/bench_throughput.py --comfyui URL [URL ...] [--presets FILE]

Matrix (simulators): batch length {~3 s, ~0.3 s} x image size {64 px, real size} x
{1, 2, 4} servers; ``--quick``: 64 px, 1 and 2 servers, 10 shots. The 64 px variant
raises the simulator's per-megapixel costs by the area ratio, so a batch takes as long as
at real size and only the bytes moved shrink: what is left is the pipeline's own cost.

Why a child process per measurement: its CPU seconds and peak RSS are then the flow's
alone (the simulators and the Prefect server run elsewhere), and every run starts from
a cold interpreter like a scheduled night does. Each measurement gets a new episode name
(in the prompts too) and a new data root, so nothing is deduplicated or served from a
server's cache.

``--comfyui URL ...`` measures real servers instead (both sizes, up to as many servers as
URLs given): busy time then comes from ComfyUI's own history, ``execution_start`` to
``execution_success`` (or ``_error``/``_interrupted``) of the prompts queued during the
run. ``--presets FILE`` passes a presets file through (checkpoint names the servers
hold); the 64 px variant adds its size on top.

Metrics: busy share = GPU busy seconds / (flow wall x servers); "active" share is the same
between the first busy start and the last busy end; fixed cost = (first busy start - flow
start) + (flow end - last busy end); CPU and peak RSS are the measured process's.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prefect_local import prefect_server

from tower.shotlist.presets import load_presets
from tower.simulator import SimulatorConfig, costs, start_simulator

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
PREFECT_START_TIMEOUT_S = 180.0
CHILD_TIMEOUT_S = 3600.0
SMALL_PX = 64
BATCHES = {"3s": 3.0, "0.3s": 0.3}
BASE = SimulatorConfig()


@dataclass(frozen=True)
class Case:
    """One cell of the matrix. ``target_s`` None: real servers, the batch is what it is."""

    batch: str
    target_s: float | None
    size: str          # "64px" or "real"
    servers: int


# ---------------------------------------------------------------- measured child process


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child_flow(spec_file: str) -> None:
    """Runs in the child: import the flow, run it once, write wall/CPU/RSS as JSON."""
    spec = json.loads(Path(spec_file).read_text())
    started = time.perf_counter()
    from flows.render_episode import render_episode  # after PREFECT_API_URL is set

    import_s, import_cpu = time.perf_counter() - started, _cpu_s()
    cpu0, t0 = _cpu_s(), time.time()
    state = render_episode(shot_list=spec["shot_list"], servers=spec["servers"],
                           data_root=spec["data_root"], presets_file=spec["presets_file"],
                           return_state=True)
    t1, cpu1 = time.time(), _cpu_s()
    summary = state.result(raise_on_failure=False)
    summary = summary if isinstance(summary, dict) else {"error": repr(summary)}
    result = {"t0": t0, "t1": t1, "wall_s": t1 - t0, "cpu_s": cpu1 - cpu0,
              "import_s": import_s, "import_cpu_s": import_cpu, "cpu_total_s": _cpu_s(),
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "state": state.type.value, "images": summary.get("takes_rendered", 0),
              "takes_failed": summary.get("takes_failed"), "error": summary.get("error")}
    Path(spec["out"]).write_text(json.dumps(result))


# ---------------------------------------------------------------- servers


def http_json(url: str, timeout: float = 30.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def _stop_group(process: subprocess.Popen[Any]) -> None:
    """The whole process group: ``prefect server start`` runs its services as children,
    and a child that exited may have left something of its own running."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGTERM)
    if process.poll() is not None:
        return
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def prefect_env(home: Path, api_url: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def _answers(url: str) -> bool:
    try:
        http_json(url, timeout=2)
    except OSError:
        return False
    return True


def _tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def sim_template(case: Case, user_presets: str | None, takes: int) -> SimulatorConfig:
    """Simulator settings that make a draft batch of ``takes`` last ``target_s``; at 64 px
    the per-megapixel costs grow by the area ratio, so only the bytes shrink."""
    draft = load_presets(user_presets)["draft"]
    ratio = draft.width * draft.height / (SMALL_PX * SMALL_PX) if case.size == "64px" else 1.0
    assert case.target_s is not None
    return replace(BASE, step_s_per_mpx=BASE.step_s_per_mpx * ratio,
                   vae_s_per_mpx=BASE.vae_s_per_mpx * ratio,
                   time_scale=case.target_s / simulated_batch_s(user_presets, takes))


def simulated_batch_s(presets_file: str | None, takes: int) -> float:
    """Simulated seconds of one draft batch of ``takes`` at real size (costs.py's model):
    sampling, full decode, the two text encodes and the saves."""
    draft = load_presets(presets_file)["draft"]
    n = min(takes, draft.max_batch)
    return (draft.steps * costs.step_s(draft.width, draft.height, n, BASE.step_s_per_mpx)
            + costs.decode_s(draft.width, draft.height, n, BASE.vae_s_per_mpx,
                             draft.vae_tiled)
            + 2 * costs.CLIP_ENCODE_S + n * costs.SAVE_S_PER_IMAGE)


@contextlib.contextmanager
def simulators(count: int, template: SimulatorConfig, tmp: Path) -> Iterator[list[Any]]:
    """Fresh simulators (each its own simulated GPU), all stopped on the way out."""
    started: list[Any] = []
    try:
        for n in range(count):
            name = f"gpu{n}"
            started.append(start_simulator(replace(template, name=name,
                                                   output_dir=tmp / f"sim-{name}")))
        yield started
    finally:
        for server in started:
            server.stop()


# ---------------------------------------------------------------- history (real ComfyUI)


def history_ids(url: str) -> set[str]:
    return set(http_json(f"{url}/history"))


def history_intervals(url: str, before: set[str], t0: float,
                      max_items: int) -> list[tuple[float, float]]:
    """Busy intervals from ComfyUI's own timestamps (epoch ms), for prompts that were not
    in the history before the run and started after it began."""
    ends = ("execution_success", "execution_error", "execution_interrupted")
    found = []
    for prompt_id, entry in http_json(f"{url}/history?max_items={max_items}").items():
        if prompt_id in before:
            continue
        stamps = {event: data.get("timestamp")
                  for event, data in entry.get("status", {}).get("messages", [])}
        start = stamps.get("execution_start")
        end = next((stamps[e] for e in ends if stamps.get(e) is not None), None)
        if start is not None and end is not None and start / 1000 >= t0 - 1.0:
            found.append((start / 1000, end / 1000))
    return sorted(found)


# ---------------------------------------------------------------- one measurement


def write_shot_list(folder: Path, episode: str, shots: int, takes: int) -> Path:
    """Draft shots; the episode name is in every prompt, so no two runs share a graph."""
    data = {"episode": episode,
            "defaults": {"preset": "draft", "takes": takes, "negative": "lowres, bad anatomy"},
            "shots": [{"id": f"sh{10 * (i + 1):04d}",
                       "prompt": f"{episode} shot {i}: paper lanterns over the harbour"}
                      for i in range(shots)]}
    path = folder / f"{episode}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def presets_for(size: str, user_presets: str | None, tmp: Path) -> str | None:
    """The user's presets file (or none), with draft shrunk to 64 px for the small variant."""
    if size == "real":
        return user_presets
    data: dict[str, Any] = {}
    if user_presets:
        loaded = yaml.safe_load(Path(user_presets).read_text(encoding="utf-8")) or {}
        data = dict(loaded.get("presets", loaded))
    data["draft"] = {**(data.get("draft") or {}), "width": SMALL_PX, "height": SMALL_PX}
    path = tmp / "presets-64px.yaml"
    path.write_text(yaml.safe_dump({"presets": data}, sort_keys=False), encoding="utf-8")
    return str(path)


def run_child(command: list[str], env: dict[str, str], out: Path, log: Path) -> dict[str, Any]:
    """Run a measured child in its own process group (so nothing it starts outlives it)
    and its temp folder as working directory (so nothing it writes lands elsewhere)."""
    with log.open("wb") as sink:
        process = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                   start_new_session=True, cwd=out.parent)
        try:
            process.wait(timeout=CHILD_TIMEOUT_S)
        finally:
            _stop_group(process)
    if process.returncode != 0 or not out.exists():
        raise RuntimeError(f"{command[1]} exited {process.returncode}:\n{_tail(log)}")
    return json.loads(out.read_text())


def measure(mode: str, case: Case, ctx: Context, tag: str) -> dict[str, Any]:
    """One run of the flow (mode "tower") or of the naive loop (mode "naive")."""
    work = Path(tempfile.mkdtemp(prefix=f"{tag}-", dir=ctx.tmp))
    try:
        return _measure(mode, case, ctx, tag, work)
    finally:
        if ctx.keep_logs:
            for log in work.glob("*.log"):
                shutil.copy(log, ctx.keep_logs / f"{tag}-{case.batch}-{case.size}-"
                                                 f"{case.servers}-{log.name}")
        shutil.rmtree(work, ignore_errors=True)  # real-size runs leave ~100 MB of PNGs


def _measure(mode: str, case: Case, ctx: Context, tag: str, work: Path) -> dict[str, Any]:
    episode = f"{ctx.run_tag}{tag.replace('-', '')}"[:60]
    shot_list = write_shot_list(work, episode, ctx.shots, ctx.takes)
    presets = presets_for(case.size, ctx.user_presets, work)
    with contextlib.ExitStack() as stack:
        if ctx.comfyui:
            urls = ctx.comfyui[:case.servers]
        else:
            template = sim_template(case, ctx.user_presets, ctx.takes)
            sims = stack.enter_context(simulators(case.servers, template, work))
            urls = [sim.url for sim in sims]
        before = {url: history_ids(url) for url in urls} if ctx.comfyui else {}
        result = _run_mode(mode, urls, shot_list, presets, work, ctx)
        if ctx.comfyui:
            per_server = [history_intervals(url, before[url], result["t0"],
                                            4 * ctx.shots * ctx.takes + 100) for url in urls]
        else:
            per_server = [sim.busy_intervals() for sim in sims]
    row = {"mode": mode, **asdict(case), "shots": ctx.shots, "takes_per_shot": ctx.takes,
           **{k: v for k, v in result.items() if k != "prompt_ids"},
           **busy_metrics(per_server, result["t0"], result["t1"])}
    if not ctx.comfyui:
        row["time_scale"] = template.time_scale
    return derived(row)


def _run_mode(mode: str, urls: list[str], shot_list: Path, presets: str | None, work: Path,
              ctx: Context) -> dict[str, Any]:
    out = work / "result.json"
    if mode == "naive":
        command = [sys.executable, str(REPO / "bench" / "naive_loop.py"), urls[0],
                   str(shot_list), str(work / "naive-out"), "--poll-s", str(ctx.poll_s),
                   "--json", str(out)] + (["--presets", presets] if presets else [])
        return run_child(command, os.environ.copy(), out, work / "naive.log")
    spec = {"shot_list": str(shot_list), "data_root": str(work / "data"),
            "servers": [f"gpu{n}={url}" for n, url in enumerate(urls)],
            "presets_file": presets, "out": str(out)}
    (work / "spec.json").write_text(json.dumps(spec))
    command = [sys.executable, str(Path(__file__).resolve()), "--child-flow",
               str(work / "spec.json")]
    env = prefect_env(work / "prefect-home", ctx.prefect_url)
    return run_child(command, env, out, work / "flow.log")


def busy_metrics(per_server: list[list[tuple[float, float]]], t0: float,
                 t1: float) -> dict[str, Any]:
    servers = len(per_server)
    flat = sorted(i for intervals in per_server for i in intervals)
    wall = t1 - t0
    lengths = [end - start for start, end in flat]
    busy = sum(lengths)
    if not flat:
        return {"batches": 0, "busy_s": 0.0, "busy_share": 0.0}
    first, last = flat[0][0], max(end for _, end in flat)
    return {"batches": len(flat), "busy_s": busy,
            "batch_mean_s": busy / len(flat), "batch_median_s": statistics.median(lengths),
            "busy_share": busy / (wall * servers),
            "active_share": busy / ((last - first) * servers) if last > first else 0.0,
            "lead_s": first - t0, "tail_s": t1 - last,
            "fixed_s": (first - t0) + (t1 - last),
            "busy_per_server_s": [sum(e - s for s, e in i) for i in per_server]}


def derived(row: dict[str, Any]) -> dict[str, Any]:
    images, batches = row.get("images") or 0, row.get("batches") or 0
    row["images_per_min"] = images / row["wall_s"] * 60 if row["wall_s"] else 0.0
    row["cpu_per_take_ms"] = row["cpu_s"] / images * 1000 if images else None
    row["cpu_per_batch_ms"] = row["cpu_s"] / batches * 1000 if batches else None
    return row


# ---------------------------------------------------------------- the matrix


@dataclass
class Context:
    tmp: Path
    run_tag: str
    shots: int
    takes: int
    user_presets: str | None
    comfyui: list[str]
    prefect_url: str | None
    poll_s: float
    keep_logs: Path | None = None


def cases(args: argparse.Namespace) -> list[Case]:
    counts = [int(n) for n in (args.servers or ("1,2" if args.quick else "1,2,4")).split(",")]
    sizes = ["64px"] if args.quick else ["64px", "real"]
    if args.comfyui:
        counts = [n for n in counts if n <= len(args.comfyui)] or [len(args.comfyui)]
        return [Case("real", None, size, n) for size in sizes for n in counts]
    return [Case(batch, target, size, n) for batch, target in BATCHES.items()
            for size in sizes for n in counts]


def run_matrix(args: argparse.Namespace, ctx: Context,
               failures: list[str]) -> list[dict[str, Any]]:
    """Every measurement; one that fails is reported (with its log's tail) and skipped,
    so a bad cell does not throw away the half hour of cells around it."""
    rows = []
    for rep in range(args.repeat):
        for number, case in enumerate(cases(args)):
            todo = ["tower"] + (["naive"] if case.servers == 1 and not args.no_naive else [])
            for mode in todo:
                tag = f"r{rep}c{number}{mode[0]}"
                print(f"# {mode} batch={case.batch} size={case.size} servers={case.servers}"
                      f" rep={rep}", flush=True)
                try:
                    row = {**measure(mode, case, ctx, tag), "rep": rep}
                except RuntimeError as err:
                    failures.append(f"{mode} {case}: {str(err).splitlines()[0]}")
                    print(f"# FAILED {mode} {case}: {err}", file=sys.stderr, flush=True)
                    continue
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median over repeats per (mode, case), plus Tower's images/min over the naive loop's."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["mode"], row["batch"], row["size"], row["servers"]), []).append(row)
    out = []
    for members in groups.values():
        merged = dict(members[0])
        for field, value in members[0].items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                merged[field] = statistics.median(m[field] for m in members
                                                  if m.get(field) is not None)
        merged["repeats"] = len(members)
        out.append(merged)
    naive = {(r["batch"], r["size"]): r["images_per_min"] for r in out if r["mode"] == "naive"}
    for row in out:
        base = naive.get((row["batch"], row["size"])) if row["mode"] == "tower" else None
        row["vs_naive"] = row["images_per_min"] / base if base else None
    return out


COLUMNS = [("mode", "mode", "{}"), ("batch", "batch", "{}"), ("size", "size", "{}"),
           ("servers", "servers", "{}"), ("batches", "batches", "{}"),
           ("mean batch s", "batch_mean_s", "{:.2f}"),
           ("median batch s", "batch_median_s", "{:.2f}"), ("wall s", "wall_s", "{:.1f}"),
           ("busy", "busy_share", "{:.0%}"), ("active busy", "active_share", "{:.0%}"),
           ("fixed s", "fixed_s", "{:.1f}"), ("img/min", "images_per_min", "{:.0f}"),
           ("x naive", "vs_naive", "{:.2f}"), ("CPU s", "cpu_s", "{:.1f}"),
           ("CPU/take ms", "cpu_per_take_ms", "{:.0f}"),
           ("CPU/batch ms", "cpu_per_batch_ms", "{:.0f}"), ("peak RSS MB", "peak_rss_mb", "{:.0f}")]


LEGEND = """
busy: GPU busy / (flow wall x servers); active busy: the same from the first busy start
to the last busy end; fixed s: time before the first and after the last busy second;
x naive: images/min over the single-server naive loop's at the same batch length and
size; mean batch includes each server's first model load (the median only where a
server runs one or two batches); CPU and RSS are the measured process's (the flow's, or
the naive loop's); medians over repeats."""


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(title for title, _, _ in COLUMNS) + " |",
             "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = [fmt.format(row[key]) if row.get(key) is not None else "-"
                 for _, key, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return {"nproc": len(os.sched_getaffinity(0)), "cpu": model,
            "python": platform.python_version(), "prefect": importlib.metadata.version("prefect"),
            "loadavg": os.getloadavg(), "command": shlex.join([sys.executable, *sys.argv]),
            **git_state()}


def git_state() -> dict[str, Any]:
    """The commit, and the files changed on top of it: the flow measured is the working
    tree's, which may hold someone's work in progress."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                              check=False).stdout.strip()
    return {"commit": git("rev-parse", "--short", "HEAD"),
            "changed": git("status", "--porcelain", "--untracked-files=no").splitlines()}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="64 px, 1-2 servers, 10 shots")
    parser.add_argument("--servers", default=None, help="server counts, e.g. 1,2,4")
    parser.add_argument("--shots", type=int, default=None, help="default 30 (--quick: 10)")
    parser.add_argument("--takes", type=int, default=4, help="takes per shot")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--prefect-url", default=None, help="use this Prefect API")
    parser.add_argument("--comfyui", nargs="+", default=[], metavar="URL",
                        help="real ComfyUI servers instead of simulators")
    parser.add_argument("--presets", default=None, help="presets file passed through")
    parser.add_argument("--poll-s", type=float, default=1.0, help="naive loop's poll interval")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive loop")
    parser.add_argument("--json-out", type=Path, default=None, help="write all rows here")
    parser.add_argument("--keep-logs", type=Path, default=None, metavar="DIR",
                        help="copy each run's log (the flow's Prefect log) into DIR")
    parser.add_argument("--child-flow", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.child_flow:
        child_flow(args.child_flow)
        return
    for url in args.comfyui:
        if not _answers(f"{url.rstrip('/')}/system_stats"):
            sys.exit(f"--comfyui {url}: no answer from {url.rstrip('/')}/system_stats")
    info = machine_info()
    print(json.dumps({"machine": info}), flush=True)
    shots = args.shots or (10 if args.quick else 30)
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tower-bench-")))
        prefect_url = args.prefect_url or stack.enter_context(prefect_server(tmp))
        ctx = Context(tmp, f"b{int(time.time()) % 100000}", shots, args.takes, args.presets,
                      [u.rstrip("/") for u in args.comfyui], prefect_url, args.poll_s,
                      args.keep_logs)
        failures: list[str] = []
        rows = run_matrix(args, ctx, failures)
    summary = summarise(rows)
    print(f"\n{info['command']}\nnproc={info['nproc']} cpu={info['cpu']} "
          f"python={info['python']} prefect={info['prefect']} commit={info['commit']}"
          f" (+{len(info['changed'])} changed files); {shots} shots x {args.takes} takes,"
          f" draft; total {time.monotonic() - started:.0f} s\n")
    print(table(summary))
    print(LEGEND)
    if args.json_out:
        args.json_out.write_text(json.dumps({"machine": info, "rows": rows,
                                             "summary": summary, "failures": failures},
                                            indent=1))
    if failures:
        print("\nfailed:\n" + "\n".join(failures))
        sys.exit(1)


if __name__ == "__main__":
    main()
