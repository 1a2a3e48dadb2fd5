"""Plan quality on a generated season: model swaps and GPU-time balance vs lower bounds.

Takes come from ``shot_lists/generated/*.yaml`` (written by
``shot_lists/generate_season.py``; generated into a temporary folder when absent):
12 episodes x 250 shots. Two scenarios on four servers (12, 12, 10 and 8 GB cards):
the season as written (two SD1.5 checkpoints), and the same with every third episode
on an SDXL checkpoint and a 24 GB card added.

Lower bounds: every checkpoint that no server has loaded must be loaded at least once,
and every server that starts empty and renders anything loads at least once (swaps); no
plan finishes before all the work, done at the largest budget, spread
perfectly over the combined speed of all servers (makespan).

    .venv/bin/python bench/bench_plan_quality.py
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tower.planning.planner import Plan, ServerSpec, apply_decode_policy, plan_batches
from tower.planning.vram import GPU_PROFILES
from tower.shotlist.presets import BUILTIN_PRESETS
from tower.shotlist.shots import load_shot_list
from tower.spec.takes import ResolvedTake, resolve_takes

REPO = Path(__file__).resolve().parents[1]
XL = "animagine-xl-3.1.safetensors"


def season_lists(tmp: Path) -> list[Path]:
    generated = sorted((REPO / "shot_lists" / "generated").glob("*.yaml"))
    if generated:
        return generated
    spec = importlib.util.spec_from_file_location(
        "generate_season", REPO / "shot_lists" / "generate_season.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generate(tmp)


def lower_bounds(takes: list[ResolvedTake], servers: list[ServerSpec]) -> tuple[int, float]:
    loaded = {s.loaded_checkpoint for s in servers}
    swaps = len({t.checkpoint for t in takes} - loaded)
    ideal = ServerSpec("ideal", max(s.vram_budget_mb for s in servers),
                       speed=sum(s.speed for s in servers))
    return swaps, plan_batches(takes, [ideal], BUILTIN_PRESETS).est_seconds["ideal"]


def report(name: str, takes: list[ResolvedTake], servers: list[ServerSpec]) -> None:
    start = time.perf_counter()
    decided = apply_decode_policy(takes, servers, BUILTIN_PRESETS)
    plan: Plan = plan_batches(decided, servers, BUILTIN_PRESETS)
    took = time.perf_counter() - start
    swap_bound, time_bound = lower_bounds(decided, servers)
    makespan = max(plan.est_seconds.values())
    busy = list(plan.est_seconds.values())
    print(f"== {name}: {len(takes)} takes, {len({t.checkpoint for t in takes})} checkpoints,"
          f" {len(plan.batches)} batches, planned in {took:.2f} s")
    for server in servers:
        print(f"  {server.name:<8} {server.vram_budget_mb:>6.0f} MB: "
              f"{len(plan.for_server(server.name)):>5} batches,"
              f" {plan.model_swaps[server.name]} swaps, {plan.est_seconds[server.name]:>8.0f} s")
    working = sum(1 for s in servers if s.loaded_checkpoint is None and plan.for_server(s.name))
    print(f"  model swaps {sum(plan.model_swaps.values())} (lower bounds: each checkpoint"
          f" loaded once: {swap_bound}; each server that renders loads once: {working};"
          f" so at least {max(swap_bound, working)})")
    print(f"  makespan {makespan:.0f} s vs lower bound {time_bound:.0f} s"
          f" ({makespan / time_bound:.3f}x); busiest/idlest {max(busy) / min(busy):.3f}")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        lists = season_lists(Path(tmp))
        takes = [t for path in lists for t in resolve_takes(load_shot_list(path))]
    servers = [ServerSpec("gpu-a", GPU_PROFILES["12gb"].budget_mb),
               ServerSpec("gpu-b", GPU_PROFILES["12gb"].budget_mb),
               ServerSpec("gpu-c", GPU_PROFILES["10gb"].budget_mb),
               ServerSpec("gpu-d", GPU_PROFILES["8gb"].budget_mb)]
    report("season as written", takes, servers)
    episodes = sorted({t.episode for t in takes})
    xl_episodes = set(episodes[::3])
    mixed = [replace(t, checkpoint=XL) if t.episode in xl_episodes else t for t in takes]
    bigger = [*servers, ServerSpec("gpu-e", GPU_PROFILES["24gb"].budget_mb, speed=1.5)]
    report("every third episode on SDXL, 24 GB card added", mixed, bigger)


if __name__ == "__main__":
    main()
