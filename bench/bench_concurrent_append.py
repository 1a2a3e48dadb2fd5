"""Append 1,000 render batches to the output index from 4 writer processes at once.

Each writer appends its batches one part at a time, as render tasks do when a batch
finishes. Afterwards every row must be there exactly once; then one compaction merges
the parts and must keep them all:

    .venv/bin/python bench/bench_concurrent_append.py [--writers 4] [--batches 1000] [--takes 4]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tower.shotlist.presets import BUILTIN_PRESETS
from tower.spec.takes import ResolvedTake
from tower.store.index import IndexRow, OutputIndex


def batch_rows(writer: int, batch: int, takes: int) -> list[IndexRow]:
    p = BUILTIN_PRESETS["standard"]
    rows = []
    for k in range(takes):
        take = ResolvedTake(
            episode="ep01", shot_id=f"w{writer}b{batch:05d}", take=k, prompt=f"shot {batch}",
            negative="lowres", seed=writer * 100_000 + batch, preset=p.name,
            checkpoint=p.checkpoint, sampler=p.sampler, scheduler=p.scheduler, steps=p.steps,
            cfg=p.cfg, width=p.width, height=p.height)
        rows.append(IndexRow.from_take(
            take, output_path=f"ep01/{take.shot_id}/t{k}.png", sha256="0" * 64,
            size_bytes=1_500_000, rendered_at=datetime.now(UTC), server=f"gpu-{writer}",
            prompt_id=f"tower-{writer}-{batch}", run_id=f"writer-{writer}"))
    return rows


def writer(root: str, number: int, batches: int, takes: int, ready: Any) -> None:
    index = OutputIndex(root)
    payload = [batch_rows(number, b, takes) for b in range(batches)]
    ready.wait()                       # all writers start together, rows already built
    for rows in payload:
        index.append(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--batches", type=int, default=1000, help="total, over all writers")
    parser.add_argument("--takes", type=int, default=4, help="rows per batch")
    args = parser.parse_args()
    per_writer = args.batches // args.writers
    with tempfile.TemporaryDirectory() as tmp:
        root = str(Path(tmp) / "index")
        ctx = mp.get_context("spawn")
        ready = ctx.Barrier(args.writers + 1)
        procs = [ctx.Process(target=writer, args=(root, w, per_writer, args.takes, ready))
                 for w in range(args.writers)]
        for proc in procs:
            proc.start()
        ready.wait()
        start_at = time.time()
        for proc in procs:
            proc.join()
            assert proc.exitcode == 0, f"writer exited with {proc.exitcode}"
        elapsed = time.time() - start_at
        index = OutputIndex(root)
        frame = index.scan().select("shot_id", "take").collect()
        expected = args.writers * per_writer * args.takes
        unique = frame.n_unique()
        print(f"{args.writers} writers x {per_writer} batches x {args.takes} rows:"
              f" {frame.height} rows read back ({unique} unique, {expected} expected),"
              f" {len(index.files())} parts")
        print(f"append: {elapsed:.2f} s wall, {frame.height / elapsed:.0f} rows/s,"
              f" {args.writers * per_writer / elapsed:.0f} parts/s")
        assert frame.height == unique == expected, "rows lost or duplicated"
        start = time.perf_counter()
        result = index.compact()
        took = time.perf_counter() - start
        after = index.scan().select(pl.len()).collect().item()
        print(f"compact: {result.parts_before} parts -> {result.parts_after} in {took:.2f} s,"
              f" {after} rows after")
        assert after == expected


if __name__ == "__main__":
    main()
