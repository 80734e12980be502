#!/usr/bin/env python
"""The default model's data steps with one worker process and with several, side by side.

Makes two small synthetic pools (two anatomies, ``--heads`` heads each) and extracts them with
``prepare``, once with ``--workers 1`` and once with ``--workers N``, in alternating order over
``--repeats`` rounds, each round in fresh folders (nothing reused from a cache). Prints the wall
seconds of each step and the ratio one worker / N workers (above 1: the workers pay). The outputs
of the two are checked to be the same (pools' truth tables, extracted crops).

    python benchmarks/bench_workers.py [--heads 6] [--workers 2] [--repeats 2]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "SinusAnomaly")]

from SinusAnomalyLib.dataset import load_dataset, prepare_dataset  # noqa: E402
from SinusAnomalyTraining.defaultmodel import PoolSizes, combine_pools, make_pools  # noqa: E402

ANATOMIES = ("reference", "robex_atlas")


def one_round(folder: Path, heads: int, workers: int) -> tuple[float, float, Path]:
    """Seconds to make the pools and to extract them with ``workers`` processes; the dataset folder."""
    start = time.perf_counter()
    pools = make_pools(folder, PoolSizes(heads, 0), ANATOMIES, progress=False, workers=workers)
    made = time.perf_counter()
    tables = combine_pools(pools, folder / "all")
    prepare_dataset(tables["images"], tables["labels"], folder / "dataset", n_folds=2, test_fraction=0.0, fractions=[1.0],
                    progress=False, workers=workers)
    return made - start, time.perf_counter() - made, folder / "dataset"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heads", type=int, default=6, help="heads per anatomy (default 6)")
    parser.add_argument("--workers", type=int, default=2, help="processes of the parallel run (default 2)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds, each running both in turn (default 2)")
    args = parser.parse_args()
    seconds = {w: {"pools": [], "extraction": []} for w in (1, args.workers)}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.repeats):
            order = (1, args.workers) if round_ % 2 == 0 else (args.workers, 1)
            datasets = {}
            for workers in order:
                pools_s, extraction_s, datasets[workers] = one_round(Path(tmp) / f"r{round_}-w{workers}", args.heads, workers)
                seconds[workers]["pools"].append(pools_s)
                seconds[workers]["extraction"].append(extraction_s)
                print(f"round {round_}, {workers} worker(s): pools {pools_s:.1f} s, extraction {extraction_s:.1f} s", flush=True)
            one, many = (load_dataset(datasets[w]) for w in (1, args.workers))
            if not np.array_equal(one.crops, many.crops):
                raise SystemExit("the crops differ between 1 and several workers")
    heads = len(ANATOMIES) * args.heads
    for step in ("pools", "extraction"):
        single, parallel = (statistics.median(seconds[w][step]) for w in (1, args.workers))
        print(f"{step}: {heads} heads, median {single:.1f} s with 1 worker, {parallel:.1f} s with {args.workers}; "
              f"ratio 1 / {args.workers} workers {single / parallel:.2f}")


if __name__ == "__main__":
    main()
