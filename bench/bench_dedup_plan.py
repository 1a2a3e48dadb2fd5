"""Dedup and plan 10,000 takes against a 1,000,000-row output index.

Builds the index in a temporary data root (``--parts`` part files, as appends leave it
before compaction; half of the takes already rendered, with their files on disk), then
measures in a fresh process, so the peak memory is the measurement's own:

    .venv/bin/python bench/bench_dedup_plan.py [--rows 1000000] [--takes 10000] [--parts 20]

Goal: dedup + plan under 1 s and under 500 MB peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tower.planning.planner import ServerSpec, apply_decode_policy, plan_batches
from tower.shotlist.presets import BUILTIN_PRESETS
from tower.spec.takes import ResolvedTake
from tower.store.files import DataRoot
from tower.store.index import OutputIndex
from tower.store.schemas import INDEX_SCHEMA

SERVERS = [ServerSpec("gpu-a", 10000, "anime-final-sd15.safetensors"),
           ServerSpec("gpu-b", 10000), ServerSpec("gpu-c", 6500)]
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def make_takes(count: int) -> list[ResolvedTake]:
    """``count`` takes: shots of 4 takes, the three presets in turn."""
    takes = []
    for n in range(count):
        shot, k = divmod(n, 4)
        p = BUILTIN_PRESETS[("draft", "standard", "high")[shot % 3]]
        takes.append(ResolvedTake(
            episode=f"ep{shot % 12 + 1:02d}", shot_id=f"sh{shot:05d}", take=k,
            prompt=f"anime key visual, cel shading, shot {shot} of the season, wide view",
            negative="lowres, bad anatomy", seed=1000 + shot, preset=p.name,
            checkpoint=p.checkpoint, sampler=p.sampler, scheduler=p.scheduler, steps=p.steps,
            cfg=p.cfg, width=p.width, height=p.height))
    return takes


def filler(rows: int, start: int) -> pa.Table:
    """Index rows of other takes: random keys, realistic columns."""
    keys = os.urandom(32 * rows).hex()
    n = pl.int_range(start, start + rows, eager=True)
    frame = pl.DataFrame({
        "render_key": [keys[i * 64:(i + 1) * 64] for i in range(rows)],
        "episode": (n % 12).map_elements(lambda e: f"ep{e + 1:02d}", return_dtype=pl.String),
    }).with_columns(
        shot_id=pl.format("sh{}", n // 4), take=(n % 4).cast(pl.Int16), preset=pl.lit("standard"),
        checkpoint=pl.lit("anime-final-sd15.safetensors"), seed=n.cast(pl.UInt64),
        width=pl.lit(768, pl.Int32), height=pl.lit(768, pl.Int32),
        prompt=pl.format("anime key visual, cel shading, archive shot {}", n // 4),
        output_path=pl.format("archive/{}.png", n), sha256=pl.lit("0" * 64),
        size_bytes=pl.lit(1_500_000, pl.Int64),
        rendered_at=pl.lit(T0, pl.Datetime("us", "UTC")), server=pl.lit("gpu-a"),
        prompt_id=pl.lit("tower-0000000000000000"), run_id=pl.lit("archive"),
        look_key=pl.lit(None, pl.String))
    return frame.to_arrow().cast(INDEX_SCHEMA)


def build(root: DataRoot, rows: int, takes: int, parts: int) -> None:
    index = OutputIndex(root.index)
    done = [t for n, t in enumerate(make_takes(takes)) if n // 4 % 2 == 0]  # every other shot
    records = []
    for n, take in enumerate(done):
        rel = f"{take.episode}/{take.shot_id}/t{take.take}.png"
        path = root.renders / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"p" * 16)
        records.append({"render_key": take.key, "episode": take.episode, "shot_id": take.shot_id,
                        "take": take.take, "preset": take.preset, "checkpoint": take.checkpoint,
                        "seed": take.seed, "width": take.width, "height": take.height,
                        "prompt": take.prompt, "output_path": rel, "sha256": "0" * 64,
                        "size_bytes": 16, "rendered_at": T0 + timedelta(seconds=n),
                        "server": "gpu-a", "prompt_id": "tower-x", "run_id": "bench"})
    index.append(pa.Table.from_pylist(records, schema=INDEX_SCHEMA))
    rest = rows - len(records)
    per_part = -(-rest // max(parts - 1, 1))
    for start in range(0, rest, per_part):
        index.append(filler(min(per_part, rest - start), start))


def measure(data_root: str, takes: int) -> dict[str, float]:
    """Runs in a fresh process: the timed part and the peak RSS."""
    root = DataRoot(Path(data_root))
    fresh = make_takes(takes)
    baseline_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    decided = apply_decode_policy(fresh, SERVERS, BUILTIN_PRESETS)
    result = OutputIndex(root.index).dedup(decided, render_root=root.renders)
    after_dedup = time.perf_counter()
    plan = plan_batches(result.to_render, SERVERS, BUILTIN_PRESETS)
    end = time.perf_counter()
    return {"takes": takes, "rendered": len(result.rendered), "to_render": len(result.to_render),
            "batches": len(plan.batches), "dedup_s": after_dedup - start,
            "plan_s": end - after_dedup, "total_s": end - start,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_before_mb": baseline_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--takes", type=int, default=10_000)
    parser.add_argument("--parts", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.takes)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = DataRoot(Path(tmp))
        start = time.perf_counter()
        build(root, args.rows, args.takes, args.parts)
        print(f"built {args.rows} rows in {len(OutputIndex(root.index).files())} parts"
              f" in {time.perf_counter() - start:.1f} s")
        for _ in range(args.repeat):
            out = subprocess.run([sys.executable, __file__, "--measure", tmp,
                                  "--takes", str(args.takes)],
                                 check=True, capture_output=True, text=True).stdout
            print(json.loads(out))


if __name__ == "__main__":
    main()
