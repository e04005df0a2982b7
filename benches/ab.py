#!/usr/bin/env python3
"""A/B timing of two builds of `callgrind_driver` (benches/examples/callgrind_driver.rs).

    benches/ab.py A_BINARY B_BINARY [--rounds 15] [--ops 200000] [--threads 1,2,4]
                  [--workloads commit1,hot_key,transfer,atomically,read_mostly,snapshot]

Each round runs every (workload, threads) once with each build, in alternating order (A first
in even rounds, B first in odd ones), so that a drift in the machine's load touches both. It
prints, per (workload, threads), the median ns per operation of each build and the median of
the per-round ratios B / A with a 95% bootstrap interval of that median. Measure on a quiet
machine (nothing else running): the ratios of a busy one say little.
"""
import argparse
import os
import random
import statistics
import subprocess


def run(binary, workload, threads, ops):
    env = dict(os.environ, OPS=str(ops), THREADS=str(threads))
    out = subprocess.run([binary, workload], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def bootstrap_median(values, draws=2000, seed=1):
    rng = random.Random(seed)
    medians = sorted(
        statistics.median(rng.choice(values) for _ in values) for _ in range(draws)
    )
    return medians[int(0.025 * draws)], medians[int(0.975 * draws) - 1]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--ops", type=int, default=200_000)
    parser.add_argument("--threads", default="1,2,4")
    parser.add_argument(
        "--workloads", default="commit1,hot_key,transfer,atomically,read_mostly,snapshot"
    )
    args = parser.parse_args()
    cases = [
        (w, int(t)) for w in args.workloads.split(",") for t in args.threads.split(",")
    ]
    times = {case: ([], []) for case in cases}
    for round in range(args.rounds):
        for case in cases:
            order = [0, 1] if round % 2 == 0 else [1, 0]
            for side in order:
                binary = (args.a, args.b)[side]
                times[case][side].append(run(binary, case[0], case[1], args.ops))
    print(f"{'workload':<12} {'thr':>3} {'A ns/op':>9} {'B ns/op':>9}  B/A median [95% CI]")
    for case in cases:
        a, b = times[case]
        ratios = [y / x for x, y in zip(a, b)]
        low, high = bootstrap_median(ratios)
        print(
            f"{case[0]:<12} {case[1]:>3} {statistics.median(a):>9.1f} "
            f"{statistics.median(b):>9.1f}  {statistics.median(ratios):.3f} [{low:.3f}, {high:.3f}]"
        )


if __name__ == "__main__":
    main()
