#!/usr/bin/env python3
"""Turns one benchmark run into the tables of BENCHMARKS.md.

    cargo bench --benches 2>&1 | tee target/bench.log
    python3 benches/report.py target/bench.log [target/criterion] > tables.md

Reads criterion's medians (`<criterion dir>/**/new/estimates.json`, with the throughput from
`benchmark.json`) and the `TRIES` / `MEMORY` lines the benchmarks print to stderr. Every ratio
is between medians of the same run.
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
    tries, memory, loads = {}, {}, []
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
            elif line.startswith("LOADAVG"):
                loads.append(line.strip())
    return tries, memory, loads


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


IMPLS = ["ours", "mutex", "rwlock", "stm-crate", "floor"]


def contention_tables(medians, tries, out, verdicts):
    specs = [
        ("read_mostly", [1, 2, 4, 8], ["ours", "mutex", "rwlock", "stm-crate", "floor"]),
        ("transfer", [1, 2, 4, 8], ["ours", "mutex", "rwlock", "stm-crate"]),
        ("hot_key", [1, 2, 4, 8],
         ["ours", "ours-nobackoff", "mutex", "rwlock", "stm-crate", "floor"]),
        ("snapshot", [2, 4, 8], ["ours", "mutex", "rwlock", "stm-crate"]),
    ]
    for group, threads_list, impls in specs:
        out.append(f"\n### {group} (million operations per second, median)\n")
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
                verdicts.append((f"{group}/{threads}: BusyRetry <= 0.1% of attempts",
                                 f"{t['busy_share']}", "MISSED"))

    def check(name, a, b, target):
        r = ratio(a, b)
        verdicts.append((name, fmt(r) + "x" if r else "-",
                         "-" if r is None else ("met" if r >= target else "MISSED")))

    check("read-mostly >= 3x mutex at 2 threads",
          mops(medians, "read_mostly", "ours", "2"), mops(medians, "read_mostly", "mutex", "2"), 3)
    check("transfer >= 1.2x stm crate at 8 threads",
          mops(medians, "transfer", "ours", "8"), mops(medians, "transfer", "stm-crate", "8"), 1.2)
    check("transfer >= 2x mutex at 8 threads",
          mops(medians, "transfer", "ours", "8"), mops(medians, "transfer", "mutex", "8"), 2)
    for threads in ["2", "4", "8"]:
        check(f"snapshot >= 1x mutex at {threads} threads",
              mops(medians, "snapshot", "ours", threads), mops(medians, "snapshot", "mutex", threads), 1)
    for threads in ["2", "4", "8"]:
        check(f"hot key >= 1x stm crate at {threads} threads",
              mops(medians, "hot_key", "ours", threads), mops(medians, "hot_key", "stm-crate", threads), 1)
        r = ratio(mops(medians, "hot_key", "ours", threads), mops(medians, "hot_key", "mutex", threads))
        verdicts.append((f"hot key vs mutex at {threads} threads (as close as backoff gets)",
                         fmt(r) + "x" if r else "-", "info"))


def commit_table(medians, out, verdicts):
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
            verdicts.append((f"{k}-key commit <= 2x the floor's {k} CASes (commit alone)",
                             f"{r1:.2f}x", "met" if r1 <= 2 else "MISSED"))
        if r2 is not None:
            verdicts.append((f"{k}-key read-modify-write <= 2x the floor's {k} (load+CAS)",
                             f"{r2:.2f}x", "met" if r2 <= 2 else "MISSED"))


def size_table(medians, out, verdicts):
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
            verdicts.append((f"1M keys within 1.5x of 1k ({f})", f"{r:.2f}x",
                             "met" if r <= 1.5 else "MISSED"))
        else:
            verdicts.append((f"reference: {f} 1M / 1k", f"{r:.2f}x", "info"))


def thread_table(medians, out, verdicts):
    functions = ["ours-commit", "arcswap-commit", "epoch-commit", "epochweak-commit", "ours-read",
                 "arcswap-read", "epoch-read", "epochweak-read"]
    out.append("\n### thread_count: one thread, after N threads used the store (ns per operation, median)\n")
    out.append("| threads that used it | " + " | ".join(functions) +
               " | arcswap / epoch commit | arcswap / epochweak commit |")
    out.append("|" + "---|" * (len(functions) + 3))
    for label in ["1", "16", "64", "64-alive"]:
        row = {f: ns_per_op(medians, f"thread_count/{label}", f) for f in functions}
        out.append(f"| {label} | " + " | ".join(fmt(row[f], 1) for f in functions) +
                   f" | {fmt(ratio(row['arcswap-commit'], row['epoch-commit']))}x"
                   f" | {fmt(ratio(row['arcswap-commit'], row['epochweak-commit']))}x |")


def memory_table(memory, out, verdicts):
    if not memory:
        return
    out.append("\n### memory: 1M u64 -> u64 keys, each written once (bytes per key)\n")
    out.append("| impl | requested | allocator (usable) | RSS | RSS / mutex |")
    out.append("|---|---|---|---|---|")
    base = memory.get("mutex")
    for name in ["mutex", "ours", "rwlock", "stm-crate", "floor"]:
        m = memory.get(name)
        if not m:
            continue
        out.append(f"| {name} | {m['requested_per_key']:.1f} | {m['allocator_per_key']:.1f} | "
                   f"{m['rss_per_key']:.1f} | "
                   f"{fmt(ratio(m['rss_per_key'], base and base['rss_per_key']))}x |")
    if base and "ours" in memory:
        for col, label in [("requested_per_key", "requested"), ("allocator_per_key", "allocator"),
                           ("rss_per_key", "RSS")]:
            r = memory["ours"][col] / base[col]
            verdicts.append((f"memory per key <= 2x mutex map ({label})", f"{r:.2f}x",
                             "met" if r <= 2 else "MISSED"))


def main():
    log = sys.argv[1]
    root = sys.argv[2] if len(sys.argv) > 2 else os.path.join(
        os.environ.get("CARGO_TARGET_DIR", "target"), "criterion")
    medians = load_medians(root)
    tries, memory, loads = load_log(log)
    out, verdicts = [], []
    contention_tables(medians, tries, out, verdicts)
    commit_table(medians, out, verdicts)
    size_table(medians, out, verdicts)
    thread_table(medians, out, verdicts)
    memory_table(memory, out, verdicts)
    out.append("\n### targets\n")
    out.append("| target | measured | verdict |")
    out.append("|---|---|---|")
    for name, value, verdict in verdicts:
        out.append(f"| {name} | {value} | {verdict} |")
    for line in loads:
        out.append(f"\n{line}")
    print("\n".join(out))


if __name__ == "__main__":
    main()
