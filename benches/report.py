#!/usr/bin/env python3
"""Turns one benchmark run into the tables of BENCHMARKS.md.

    cargo bench -p stm-store-benches 2>&1 | tee target/bench.log   # or: bash benches/run.sh
    python3 benches/report.py target/bench.log [target/criterion] > tables.md

Reads criterion's medians (`<criterion dir>/**/new/estimates.json`, with the throughput from
`benchmark.json`; the criterion dir defaults to `$CARGO_TARGET_DIR/criterion`, else
`target/criterion`) and the `TRIES` / `MEMORY` / `LOCKFREE` lines the benchmarks print to
stderr. Every ratio is between numbers of the same run.

The last tables check the issue's targets, each as one ratio, and earlier checks kept for
reference.
"""

import json
import os
import re
import sys
from collections import defaultdict


def load_medians(root):
    """{(group, function, value): (median ns per iteration, elements per iteration)}"""
    medians = {}
    for dirpath, _dirs, files in os.walk(root):
        if os.path.basename(dirpath) != "new" or "estimates.json" not in files:
            continue
        with open(os.path.join(dirpath, "benchmark.json")) as f:
            bench = json.load(f)
        with open(os.path.join(dirpath, "estimates.json")) as f:
            estimates = json.load(f)
        throughput = bench.get("throughput") or {}
        elements = throughput.get("Elements", 1)
        key = (bench["group_id"], bench.get("function_id"), bench.get("value_str"))
        medians[key] = (estimates["median"]["point_estimate"], elements)
    return medians


def load_log(path):
    tries, memory, lockfree, loads = {}, {}, {}, []
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("TRIES "):
                parts = line.split()
                fields = dict(p.split("=", 1) for p in parts[2:])
                tries[parts[1]] = fields
            elif line.startswith("MEMORY "):
                parts = line.split()
                fields = dict(p.split("=", 1) for p in parts[2:])
                memory[parts[1]] = {k: float(v) for k, v in fields.items()}
            elif line.startswith("LOCKFREE "):
                parts = line.split()
                fields = dict(p.split("=", 1) for p in parts[2:])
                lockfree[parts[1]] = {k: float(v) for k, v in fields.items()}
            elif line.startswith("LOADAVG"):
                loads.append(line.strip())
    return tries, memory, lockfree, loads


def mops(medians, group, function, value):
    entry = medians.get((group, function, value))
    if entry is None:
        return None
    ns, elements = entry
    return elements / ns * 1e3  # million operations per second


def ns_per_op(medians, group, function, value=None):
    entry = medians.get((group, function, value))
    if entry is None:
        return None
    ns, elements = entry
    return ns / elements


def fmt(x, digits=2):
    return "-" if x is None else f"{x:.{digits}f}"


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def target(verdicts, name, r, op, bound):
    """One target: the ratio `r` must be `op` ("<=" or ">=") `bound`."""
    if r is None:
        verdicts.append((name, "-", "not measured"))
        return
    ok = r >= bound if op == ">=" else r <= bound
    verdicts.append((name, f"{r:.2f}x", "met" if ok else "MISSED"))


IMPLS = ["ours", "mutex", "rwlock", "stm-crate", "floor"]


def contention_tables(medians, tries, out, verdicts, others):
    specs = [
        ("read_mostly", "95% reads, 5% increments, 1k keys", [1, 2, 4, 8],
         ["ours", "mutex", "rwlock", "stm-crate", "floor"]),
        ("transfer", "2-key transfers over 64 accounts", [1, 2, 4, 8],
         ["ours", "mutex", "rwlock", "stm-crate"]),
        ("hot_key", "every thread increments one key", [1, 2, 4, 8],
         ["ours", "ours-nobackoff", "mutex", "rwlock", "stm-crate", "floor"]),
        ("snapshot", "8-key snapshots by N-1 readers, one writer", [2, 4, 8],
         ["ours", "mutex", "rwlock", "stm-crate"]),
    ]
    for group, what, threads_list, impls in specs:
        out.append(f"\n### {group}: {what} (million operations per second, median)\n")
        header = "| threads | " + " | ".join(impls) + \
            " | ours / mutex | ours / rwlock | ours / stm-crate | ours conflicts | ours BusyRetry |"
        out.append(header)
        out.append("|" + "---|" * (len(impls) + 6))
        for threads in threads_list:
            value = str(threads)
            row = {i: mops(medians, group, i, value) for i in impls}
            t = tries.get(f"{group}/ours/{threads}", {})
            cells = [fmt(row[i]) for i in impls]
            cells += [fmt(ratio(row["ours"], row.get("mutex"))) + "x",
                      fmt(ratio(row["ours"], row.get("rwlock"))) + "x",
                      fmt(ratio(row["ours"], row.get("stm-crate"))) + "x",
                      t.get("conflict_share", "-"),
                      f"{t.get('busy', '-')} ({t.get('busy_share', '-')})"]
            out.append(f"| {threads} | " + " | ".join(cells) + " |")
        for threads in threads_list:
            t = tries.get(f"{group}/ours/{threads}")
            if t and int(t["busy"]) * 1000 > int(t["attempts"]):
                others.append((f"{group}/{threads}: BusyRetry <= 0.1% of attempts",
                                 f"{t['busy_share']}", "MISSED"))

    def checks(group, name, baseline, op, bound):
        for threads in ["2", "4", "8"]:
            target(verdicts, f"{name} at {threads} threads: ours / {baseline} {op} {bound}x",
                   ratio(mops(medians, group, "ours", threads),
                         mops(medians, group, baseline, threads)), op, bound)

    checks("read_mostly", "read-mostly (95/5, 1k keys)", "mutex", ">=", 2.5)
    checks("transfer", "transfer (64 accounts)", "mutex", ">=", 1.0)
    checks("transfer", "transfer (64 accounts)", "stm-crate", ">=", 1.0)
    checks("hot_key", "hot key", "mutex", ">=", 0.7)
    checks("snapshot", "8-key snapshot with a writer", "mutex", ">=", 1.0)
    for threads in ["2", "4", "8"]:
        r = ratio(mops(medians, "hot_key", "ours", threads),
                  mops(medians, "hot_key", "stm-crate", threads))
        others.append((f"hot key >= 1x stm crate at {threads} threads",
                       fmt(r) + "x" if r else "-",
                       "-" if r is None else ("met" if r >= 1 else "MISSED")))


def commit_table(medians, out, verdicts, others):
    impls = ["ours-commit", "ours-rmw", "floor", "mutex", "rwlock", "stm-crate"]
    out.append("\n### commit_k: one thread, k keys (ns per commit, median)\n")
    out.append("| k | " + " | ".join(impls) + " | ours-commit / floor | ours-rmw / floor |")
    out.append("|" + "---|" * (len(impls) + 3))
    for k in ["1", "2", "4", "8"]:
        row = {i: ns_per_op(medians, "commit_k", i, k) for i in impls}
        r1 = ratio(row["ours-commit"], row["floor"])
        r2 = ratio(row["ours-rmw"], row["floor"])
        out.append(f"| {k} | " + " | ".join(fmt(row[i], 1) for i in impls) +
                   f" | {fmt(r1)}x | {fmt(r2)}x |")
        if r1 is not None:
            others.append((f"{k}-key commit <= 2x the floor's {k} CASes (commit alone)",
                           f"{r1:.2f}x", "met" if r1 <= 2 else "MISSED"))
        if r2 is not None:
            others.append((f"{k}-key read-modify-write <= 2x the floor's {k} (load+CAS)",
                           f"{r2:.2f}x", "met" if r2 <= 2 else "MISSED"))
    # A single-thread 2-key transfer is a 2-key read-modify-write: read both, write both.
    target(verdicts, "single thread 2-key transfer (commit_k/2 read-modify-write): "
           "ours-rmw / mutex ns <= 1.3x",
           ratio(ns_per_op(medians, "commit_k", "ours-rmw", "2"),
                 ns_per_op(medians, "commit_k", "mutex", "2")), "<=", 1.3)


def size_table(medians, out, verdicts, others):
    functions = ["ours-read", "ours-rmw", "ours-read-ws1k", "ours-rmw-ws1k", "mutex-read", "mutex-rmw"]
    out.append("\n### store_size: one thread, key uniform over the store (ns per operation, median)\n")
    out.append("| keys | " + " | ".join(functions) + " |")
    out.append("|" + "---|" * (len(functions) + 1))
    rows = {}
    for size in ["1k", "64k", "1M"]:
        rows[size] = {f: ns_per_op(medians, f"store_size/{size}", f) for f in functions}
        out.append(f"| {size} | " + " | ".join(fmt(rows[size][f], 1) for f in functions) + " |")
    out.append("| 1M / 1k | " + " | ".join(
        fmt(ratio(rows["1M"][f], rows["1k"][f])) + "x" for f in functions) + " |")
    for f in functions:
        r = ratio(rows["1M"][f], rows["1k"][f])
        if r is None:
            continue
        if f.startswith("ours"):
            others.append((f"1M keys within 1.5x of 1k ({f})", f"{r:.2f}x",
                           "met" if r <= 1.5 else "MISSED"))
        else:
            others.append((f"reference: {f} 1M / 1k", f"{r:.2f}x", "info"))
    target(verdicts, "single thread 1-key read (store_size/1k): ours / mutex ns <= 0.7x",
           ratio(rows["1k"]["ours-read"], rows["1k"]["mutex-read"]), "<=", 0.7)


def thread_table(medians, out, verdicts, others):
    functions = ["ours-commit", "arcswap-commit", "epoch-commit",
                 "ours-read", "arcswap-read", "epoch-read"]
    labels = ["1", "16", "64", "64-alive"]
    out.append("\n### thread_count: one thread, after N threads used the store (ns per operation, median)\n")
    out.append("`ours-commit` is `usevar` + `set` + `commit` of one key; `arcswap-*` a bare `ArcSwap` "
               "cell, `epoch-*` a bare crossbeam-epoch cell.\n")
    out.append("| threads that used it | " + " | ".join(functions) +
               " | ours-commit / after 1 | arcswap-commit / after 1 | epoch-commit / after 1 |")
    out.append("|" + "---|" * (len(functions) + 4))
    rows = {label: {f: ns_per_op(medians, f"thread_count/{label}", f) for f in functions}
            for label in labels}
    for label in labels:
        row = rows[label]
        grow = [fmt(ratio(row[f], rows["1"][f])) + "x"
                for f in ["ours-commit", "arcswap-commit", "epoch-commit"]]
        out.append(f"| {label} | " + " | ".join(fmt(row[f], 1) for f in functions) +
                   " | " + " | ".join(grow) + " |")
    target(verdicts, "1-key commit after 64 threads / after 1 thread <= 1.2x",
           ratio(rows["64"]["ours-commit"], rows["1"]["ours-commit"]), "<=", 1.2)
    r = ratio(rows["64-alive"]["ours-commit"], rows["1"]["ours-commit"])
    others.append(("1-key commit with 64 threads alive / after 1 thread",
                   fmt(r) + "x" if r else "-", "info"))


def lockfree_table(lockfree, out, verdicts):
    out.append("\n### lockfree: 2-key transfers over 64 accounts (latency per transfer, retries "
               "included, in µs)\n")
    out.append("`stall`: 4 threads, one of which sleeps 1 ms in the middle of every 1,000th commit "
               "attempt; the numbers are the other three threads'. `oversubscribed`: 32 threads, "
               "all measured.\n")
    out.append("| workload | impl | threads measured | commits/s | p50 | p99 | p99.9 | p99.99 | max "
               "| conflicts | stalls |")
    out.append("|" + "---|" * 11)
    for workload in ["stall", "oversubscribed"]:
        for impl in ["mutex", "ours"]:
            m = lockfree.get(f"{workload}/{impl}")
            if not m:
                continue
            us = lambda field: f"{m[field] / 1e3:.1f}"
            share = 100 * m["conflicts"] / m["attempts"] if m["attempts"] else 0
            out.append(f"| {workload} | {impl} | {int(m['measured'])} of {int(m['threads'])} | "
                       f"{m['throughput']:.0f} | {us('p50_ns')} | {us('p99_ns')} | "
                       f"{us('p999_ns')} | {us('p9999_ns')} | {us('max_ns')} | {share:.3f}% | "
                       f"{int(m['stalls'])} |")
    out.append("")
    out.append("| workload | throughput ours / mutex | p50 ours / mutex | p99 ours / mutex "
               "| p99.9 ours / mutex | p99.99 ours / mutex |")
    out.append("|---|---|---|---|---|---|")
    ratios = {}
    for workload in ["stall", "oversubscribed"]:
        ours, mutex = lockfree.get(f"{workload}/ours"), lockfree.get(f"{workload}/mutex")
        if not ours or not mutex:
            continue
        r = {field: ratio(ours[field], mutex[field])
             for field in ["throughput", "p50_ns", "p99_ns", "p999_ns", "p9999_ns"]}
        ratios[workload] = r
        out.append(f"| {workload} | " + " | ".join(
            fmt(r[f]) + "x"
            for f in ["throughput", "p50_ns", "p99_ns", "p999_ns", "p9999_ns"]) + " |")
    stall = ratios.get("stall", {})
    target(verdicts, "stall: other threads' throughput ours / mutex >= 10x",
           stall.get("throughput"), ">=", 10)
    target(verdicts, "stall: other threads' p99.9 latency ours / mutex <= 0.1x",
           stall.get("p999_ns"), "<=", 0.1)
    target(verdicts, "oversubscribed (32 threads): p99.9 latency ours / mutex <= 1x",
           ratios.get("oversubscribed", {}).get("p999_ns"), "<=", 1)


def memory_table(memory, out, verdicts, others):
    if not memory:
        target(verdicts, "bytes per key requested from the allocator: ours / mutex <= 1.5x",
               None, "<=", 1.5)
        return
    keys = int(next(iter(memory.values())).get("keys", 0))
    out.append(f"\n### memory: {keys} u64 -> u64 keys, each written once (bytes per key)\n")
    out.append("| impl | requested | allocator (usable) | RSS | requested / mutex | RSS / mutex |")
    out.append("|---|---|---|---|---|---|")
    base = memory.get("mutex")
    for name in ["mutex", "ours", "rwlock", "stm-crate", "floor"]:
        m = memory.get(name)
        if not m:
            continue
        out.append(f"| {name} | {m['requested_per_key']:.1f} | {m['allocator_per_key']:.1f} | "
                   f"{m['rss_per_key']:.1f} | "
                   f"{fmt(ratio(m['requested_per_key'], base and base['requested_per_key']))}x | "
                   f"{fmt(ratio(m['rss_per_key'], base and base['rss_per_key']))}x |")
    ours = memory.get("ours")
    target(verdicts, "bytes per key requested from the allocator: ours / mutex <= 1.5x",
           ratio(ours and ours["requested_per_key"], base and base["requested_per_key"]),
           "<=", 1.5)
    if base and ours:
        for col, label in [("allocator_per_key", "allocator"), ("rss_per_key", "RSS")]:
            others.append((f"memory per key, ours / mutex ({label})",
                           fmt(ratio(ours[col], base[col])) + "x", "info"))


def transactions_tables(medians, tries, out, verdicts, others):
    """Issue #10: transfers through `Store::atomically` against the Axon-style loop and the
    `stm` crate; the producer/consumer queue (reported, no target)."""
    impls = ["atomically", "using-commit", "stm-crate"]
    out.append("\n### tx_transfer: 2-key transfers over 64 accounts by API "
               "(million operations per second, median)\n")
    out.append("`atomically`: `Store::atomically`; `using-commit`: `using` + `set` + `commit` in a "
               "hand-written retry loop (the `ours` of `transfer`); `stm-crate`: the `stm` "
               "crate's `atomically`.\n")
    out.append("| threads | " + " | ".join(impls) +
               " | atomically / stm-crate | atomically / using-commit | atomically conflicts "
               "| using-commit conflicts |")
    out.append("|" + "---|" * (len(impls) + 5))
    for threads in ["1", "2", "4", "8"]:
        row = {i: mops(medians, "tx_transfer", i, threads) for i in impls}
        conflicts = [tries.get(f"tx_transfer/{i}/{threads}", {}).get("conflict_share", "-")
                     for i in ["atomically", "using-commit"]]
        out.append(f"| {threads} | " + " | ".join(fmt(row[i]) for i in impls) +
                   f" | {fmt(ratio(row['atomically'], row['stm-crate']))}x"
                   f" | {fmt(ratio(row['atomically'], row['using-commit']))}x | " +
                   " | ".join(conflicts) + " |")
        at = "1 thread" if threads == "1" else f"{threads} threads"
        if threads != "1":
            target(verdicts, f"atomically transfer at {at}: "
                   f"atomically / stm-crate >= 1.2x",
                   ratio(row["atomically"], row["stm-crate"]), ">=", 1.2)
        # "Within 1.3x of the Axon-style path": time per transfer, atomically / using-commit.
        target(verdicts, f"atomically transfer at {at}: time per transfer "
               f"atomically / using-commit <= 1.3x",
               ratio(row["using-commit"], row["atomically"]), "<=", 1.3)

    impls = ["atomically-retry", "mutex-condvar"]
    out.append("\n### tx_queue: bounded queue (16 items), N/2 producers and N/2 consumers "
               "(million items per second, median)\n")
    out.append("`atomically-retry`: the queue in the store, `retry` when empty or full; "
               "`mutex-condvar`: `Mutex<VecDeque>` with two `Condvar`s. Waits: operations "
               "that found the queue empty or full, per item.\n")
    out.append("| threads | " + " | ".join(impls) +
               " | atomically-retry / mutex-condvar | atomically-retry conflicts "
               "| atomically-retry waits | mutex-condvar waits |")
    out.append("|" + "---|" * (len(impls) + 5))
    for threads in ["2", "4", "8"]:
        row = {i: mops(medians, "tx_queue", i, threads) for i in impls}
        waits = []
        for i in impls:
            t = tries.get(f"tx_queue/{i}/{threads}")
            if not t:
                waits.append("-")
                continue
            items = int(t["ops"]) / 2  # pushes and pops both count as operations
            total = int(t.get("producer_waits", 0)) + int(t.get("consumer_waits", 0))
            waits.append(f"{total / items:.3f}" if items else "-")
        conflicts = tries.get(f"tx_queue/atomically-retry/{threads}", {}).get(
            "conflict_share", "-")
        r = ratio(row["atomically-retry"], row["mutex-condvar"])
        out.append(f"| {threads} | " + " | ".join(fmt(row[i]) for i in impls) +
                   f" | {fmt(r)}x | {conflicts} | " + " | ".join(waits) + " |")
        others.append((f"queue with retry / Mutex+Condvar queue at {threads} threads "
                       "(report only)", fmt(r) + "x" if r else "-", "info"))


def main():
    log = sys.argv[1]
    root = sys.argv[2] if len(sys.argv) > 2 else os.path.join(
        os.environ.get("CARGO_TARGET_DIR", "target"), "criterion")
    medians = load_medians(root)
    tries, memory, lockfree, loads = load_log(log)
    out, verdicts, others = [], [], []
    contention_tables(medians, tries, out, verdicts, others)
    lockfree_table(lockfree, out, verdicts)
    commit_table(medians, out, verdicts, others)
    size_table(medians, out, verdicts, others)
    thread_table(medians, out, verdicts, others)
    memory_table(memory, out, verdicts, others)
    transactions_tables(medians, tries, out, verdicts, others)
    # The targets, in its order.
    order = ["read-mostly", "transfer", "hot key", "8-key snapshot", "stall", "oversubscribed",
             "single thread 2-key", "single thread 1-key", "1-key commit", "bytes per key",
             "atomically transfer"]
    verdicts.sort(key=lambda v: next(i for i, p in enumerate(order) if v[0].startswith(p)))
    out.append("\n### targets (each a ratio from this run)\n")
    out.append("| target | measured | verdict |")
    out.append("|---|---|---|")
    for name, value, verdict in verdicts:
        out.append(f"| {name} | {value} | {verdict} |")
    missed = sum(1 for v in verdicts if v[2] != "met")
    out.append(f"\n{len(verdicts) - missed} of {len(verdicts)} targets met.")
    out.append("\n### other checks (earlier targets, for reference)\n")
    out.append("| check | measured | verdict |")
    out.append("|---|---|---|")
    for name, value, verdict in others:
        out.append(f"| {name} | {value} | {verdict} |")
    for line in loads:
        out.append(f"\n{line}")
    print("\n".join(out))


if __name__ == "__main__":
    main()
