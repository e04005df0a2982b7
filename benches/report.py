#!/usr/bin/env python3
"""Turns one benchmark run into the tables of BENCHMARKS.md.

    bash benches/run.sh                     # runs everything, then this script
    python3 benches/report.py target/bench.log [target/criterion] > tables.md

Reads criterion's medians and their 95% confidence intervals
(`<criterion dir>/**/new/estimates.json`, with the throughput from `benchmark.json`; the
criterion dir defaults to `$CARGO_TARGET_DIR/criterion`, else `target/criterion`) and the lines
the benchmarks print: `TRIES` (attempts and conflicts), `LOCKFREE` (latencies), `MEMORY` (bytes
per key), `ALLOCS` (allocations per commit), the bank example's output (quoted whole, and its
`throughput ratio` lines in the goals), and `run.sh`'s `LOADAVG` lines.

Every number is given beside its ratios to the two mutex maps (`mutex`: Axon-shaped, read under
the lock then lock again to validate and write; `mutex-one`: the whole operation in one
critical section) and as a fraction of the floor (the lock-free multi-word CAS over versioned
words), all from the same run. The last table checks the goals, each against its ratio(s).
"""

import json
import os
import re
import sys

MUTEXES = ["mutex", "mutex-one"]
FLOOR = "floor"


# Reading ----------------------------------------------------------------------------------


def load_medians(root):
    """{(group, function, value): (median ns, low ns, high ns, elements per iteration)}"""
    medians = {}
    for dirpath, _dirs, files in os.walk(root):
        if os.path.basename(dirpath) != "new" or "estimates.json" not in files:
            continue
        with open(os.path.join(dirpath, "benchmark.json")) as f:
            bench = json.load(f)
        with open(os.path.join(dirpath, "estimates.json")) as f:
            median = json.load(f)["median"]
        throughput = bench.get("throughput") or {}
        elements = throughput.get("Elements", 1)
        interval = median["confidence_interval"]
        key = (bench["group_id"], bench.get("function_id"), bench.get("value_str"))
        medians[key] = (median["point_estimate"], interval["lower_bound"],
                        interval["upper_bound"], elements)
    return medians


def fields_of(parts):
    return dict(p.split("=", 1) for p in parts if "=" in p)


def load_log(path):
    log = {"tries": {}, "memory": {}, "lockfree": {}, "allocs": {}, "bank": {}, "loads": [],
           "bank_output": []}
    in_bank = False
    with open(path, errors="replace") as f:
        for line in f:
            parts = line.split()
            # The bank example's output: from its first line to its last.
            in_bank = in_bank or line.startswith("A bank of ")
            if in_bank:
                log["bank_output"].append(line.rstrip("\n"))
                in_bank = not line.startswith("total conserved:")
            if line.startswith("TRIES "):
                log["tries"][parts[1]] = fields_of(parts[2:])
            elif line.startswith("MEMORY "):
                log["memory"][parts[1]] = {k: float(v) for k, v in fields_of(parts[2:]).items()}
            elif line.startswith("LOCKFREE "):
                log["lockfree"][parts[1]] = {
                    k: float(v) for k, v in fields_of(parts[2:]).items()}
            elif line.startswith("ALLOCS "):
                log["allocs"][parts[1]] = {k: float(v) for k, v in fields_of(parts[2:]).items()}
            elif line.startswith("LOADAVG"):
                log["loads"].append(line.strip())
            else:
                bank = re.match(r"throughput ratio stm-store / (\S+): ([0-9.]+)x", line)
                if bank:
                    log["bank"][bank.group(1)] = float(bank.group(2))
    return log


class Run:
    """One run's numbers."""

    def __init__(self, medians, log):
        self.medians = medians
        self.log = log

    def entry(self, group, function, value=None):
        return self.medians.get((group, function, value))

    def mops(self, group, function, value):
        """Million operations per second (median)."""
        e = self.entry(group, function, value)
        return None if e is None else e[3] / e[0] * 1e3

    def ns(self, group, function, value=None):
        """Nanoseconds per operation (median)."""
        e = self.entry(group, function, value)
        return None if e is None else e[0] / e[3]

    def spread(self, group, function, value=None):
        """Half the width of the median's 95% confidence interval, relative to the median."""
        e = self.entry(group, function, value)
        return None if e is None or e[0] == 0 else (e[2] - e[1]) / 2 / e[0]


# Formatting -------------------------------------------------------------------------------


def fmt(x, digits=2):
    return "-" if x is None else f"{x:.{digits}f}"


def times(x):
    return "-" if x is None else f"{x:.2f}x"


def pct(x):
    return "-" if x is None else f"±{100 * x:.0f}%"


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def table(out, header, rows):
    out.append("| " + " | ".join(header) + " |")
    out.append("|" + "---|" * len(header))
    for row in rows:
        out.append("| " + " | ".join(row) + " |")


# Tables -----------------------------------------------------------------------------------


def throughput_table(run, out, group, title, note, threads, impls, also=()):
    """Long form: one row per (threads, implementation), its throughput, spread, its ratio to
    both mutex maps (and to `also`), its fraction of the floor, and its conflicts."""
    out.append(f"\n### {group}: {title}\n")
    out.append(note + " Million operations per second (median of the samples, ± half its 95% "
               "confidence interval); `× mutex` is the throughput over the mutex map's, `of "
               "floor` over the floor's, all from the same run.\n")
    header = ["threads", "impl", "M ops/s", "spread"] + [f"× {m}" for m in MUTEXES + list(also)]
    header += ["of floor", "conflicts", "BusyRetry"]
    rows = []
    for t in threads:
        value = str(t)
        base = {b: run.mops(group, b, value) for b in MUTEXES + list(also) + [FLOOR]}
        for impl in impls:
            m = run.mops(group, impl, value)
            if m is None:
                continue
            tries = run.log["tries"].get(f"{group}/{impl}/{t}", {})
            busy = tries.get("busy", "-")
            rows.append([value, impl, fmt(m), pct(run.spread(group, impl, value))] +
                        [times(ratio(m, base[b])) for b in MUTEXES + list(also)] +
                        [fmt(ratio(m, base[FLOOR])), tries.get("conflict_share", "-"),
                         "-" if impl not in ("ours", "ours-nobackoff", "using-commit")
                         else busy])
    table(out, header, rows)


def contention_tables(run, out):
    impls = ["ours", "mutex", "mutex-one", "rwlock", "stm-crate", "floor"]
    throughput_table(run, out, "read_mostly", "95% reads, 5% increments, 1,024 keys",
                     "Each thread reads a random key (95%) or increments one (5%).",
                     [1, 2, 4, 8], impls)
    throughput_table(run, out, "transfer", "2-key transfers over 64 accounts",
                     "Each thread moves 1 between two distinct random accounts of 64, retried "
                     "until it lands.", [1, 2, 4, 8], impls, also=["stm-crate"])
    throughput_table(run, out, "hot_key", "every thread increments one key",
                     "`ours-nobackoff` retries at once instead of backing off.", [1, 2, 4, 8],
                     ["ours", "ours-nobackoff"] + impls[1:])
    throughput_table(run, out, "snapshot", "8-key snapshots by N-1 readers, one writer",
                     "One thread transfers among 8 keys; the others read all 8 at one instant "
                     "(throughput counts the readers' snapshots).", [2, 4, 8], impls)


def transactions_tables(run, out):
    impls = ["atomically", "using-commit", "stm-crate", "mutex", "mutex-one", "floor"]
    throughput_table(run, out, "tx_transfer", "2-key transfers over 64 accounts, by API",
                     "`atomically`: `Store::atomically`; `using-commit`: `using` + `set` + "
                     "`commit` in a hand-written retry loop; `stm-crate`: the `stm` crate's "
                     "`atomically`; the mutex maps and the floor as in `transfer`.",
                     [1, 2, 4, 8], impls, also=["stm-crate"])

    impls = ["atomically-retry", "mutex-condvar"]
    out.append("\n### tx_queue: bounded queue (16 items), N/2 producers and N/2 consumers\n")
    out.append("Million items per second (median). `atomically-retry`: the queue in the store, "
               "`retry` when empty or full; `mutex-condvar`: `Mutex<VecDeque>` with two "
               "`Condvar`s. Waits: operations that found the queue empty or full, per item.\n")
    rows = []
    for threads in ["2", "4", "8"]:
        row = {i: run.mops("tx_queue", i, threads) for i in impls}
        waits = []
        for i in impls:
            t = run.log["tries"].get(f"tx_queue/{i}/{threads}")
            items = int(t["ops"]) / 2 if t else 0  # pushes and pops both count as operations
            total = int(t.get("producer_waits", 0)) + int(t.get("consumer_waits", 0)) if t else 0
            waits.append(f"{total / items:.3f}" if items else "-")
        rows.append([threads] + [fmt(row[i]) for i in impls] +
                    [times(ratio(row["atomically-retry"], row["mutex-condvar"]))] + waits)
    table(out, ["threads"] + impls + ["atomically-retry / mutex-condvar",
                                      "atomically-retry waits", "mutex-condvar waits"], rows)


def ns_row(run, group, impl, value, bases):
    """ns, spread, time over each mutex map's, and the floor's time over this one's."""
    n = run.ns(group, impl, value)
    base = {b: run.ns(group, b, value) for b in bases}
    return [fmt(n, 1), pct(run.spread(group, impl, value))] + \
        [times(ratio(n, base[b])) for b in MUTEXES] + [fmt(ratio(base.get(FLOOR), n))]


def commit_table(run, out):
    impls = ["ours-commit", "ours-rmw", "mutex", "mutex-one", "rwlock", "stm-crate", "floor",
             "arcswap"]
    out.append("\n### commit_k: one thread, k keys\n")
    out.append("Nanoseconds per commit (median, ± half its 95% confidence interval). "
               "`ours-commit`: the commit alone (a collection kept, every key set, `commit`); "
               "the others: read k keys, add 1 to each, commit. `arcswap`: k bare `ArcSwap` "
               "compare-and-swaps, not atomic together. `time × mutex`: this time over the "
               "mutex map's; `of floor`: the floor's time over this one's.\n")
    rows = []
    for k in ["1", "2", "4", "8"]:
        for impl in impls:
            if run.ns("commit_k", impl, k) is None:
                continue
            rows.append([k, impl] + ns_row(run, "commit_k", impl, k, MUTEXES + [FLOOR]))
    table(out, ["k", "impl", "ns", "spread", "time × mutex", "time × mutex-one", "of floor"],
          rows)


def size_table(run, out):
    out.append("\n### store_size: one thread, a key drawn uniformly from the store\n")
    out.append("Nanoseconds per operation (median): a read of one key, and an increment "
               "(read, add 1, commit). `ours (1k working set)` draws from 1,024 keys of the "
               "same store: what is left of the store-size effect once cache misses are taken "
               "out. Ratios as in `commit_k`, against the same operation on a store of the same "
               "size.\n")
    impls = [("ours", "ours"), ("ours (1k working set)", "ours"), ("mutex", "mutex"),
             ("mutex-one", "mutex-one"), ("floor", "floor")]
    rows = []
    for size in ["1k", "64k", "1M"]:
        group = f"store_size/{size}"
        for label, impl in impls:
            cells = [size, label]
            suffix = "-ws1k" if "working set" in label else ""
            for op in ["read", "rmw"]:
                name = f"{impl}-{op}{suffix}"
                n = run.ns(group, name)
                if suffix:
                    cells += [fmt(n, 1), "-", "-", "-"]
                    continue
                base = {b: run.ns(group, f"{b}-{op}") for b in MUTEXES + [FLOOR]}
                cells += [fmt(n, 1)] + [times(ratio(n, base[b])) for b in MUTEXES] + \
                    [fmt(ratio(base[FLOOR], n))]
            if cells[2] != "-" or cells[6] != "-":
                rows.append(cells)
    for label, impl in impls:
        suffix = "-ws1k" if "working set" in label else ""
        grow = [ratio(run.ns("store_size/1M", f"{impl}-{op}{suffix}"),
                      run.ns("store_size/1k", f"{impl}-{op}{suffix}")) for op in ["read", "rmw"]]
        if any(g is not None for g in grow):
            rows.append(["1M / 1k", label, times(grow[0]), "", "", "", times(grow[1]), "", "",
                         ""])
    table(out, ["keys", "impl", "read ns", "time × mutex", "time × mutex-one", "of floor",
                "rmw ns", "time × mutex", "time × mutex-one", "of floor"], rows)


def thread_table(run, out):
    functions = ["ours-commit", "arcswap-commit", "epoch-commit",
                 "ours-read", "arcswap-read", "epoch-read"]
    labels = ["1", "16", "64", "64-alive"]
    out.append("\n### thread_count: one thread, after N threads used the store\n")
    out.append("Nanoseconds per operation (median). `ours-commit` is `usevar` + `set` + `commit` "
               "of one key, `ours-read` a `usevar`; `arcswap-*` a bare `ArcSwap` cell, "
               "`epoch-*` a bare crossbeam-epoch cell. `64-alive`: the 64 threads are still "
               "alive (parked).\n")
    rows_ns = {label: {f: run.ns(f"thread_count/{label}", f) for f in functions}
               for label in labels}
    rows = []
    for label in labels:
        row = rows_ns[label]
        rows.append([label] + [fmt(row[f], 1) for f in functions] +
                    [times(ratio(row[f], rows_ns["1"][f]))
                     for f in ["ours-commit", "arcswap-commit", "epoch-commit"]])
    table(out, ["threads that used it"] + functions +
          ["ours-commit / after 1", "arcswap-commit / after 1", "epoch-commit / after 1"], rows)


def lockfree_tables(run, out):
    lf = run.log["lockfree"]
    impls = ["ours", "mutex", "mutex-one", "floor"]
    us = lambda m, field: f"{m[field] / 1e3:.1f}"
    if any(k.startswith("stall/") for k in lf):
        out.append("\n### stall: one of two threads stops for 1 ms in every 100th commit\n")
        out.append("Two threads transfer between random accounts of 64. In the `stalled` run, "
                   "thread 0 stops for 1 ms in the middle of every 100th transfer (the store: "
                   "after claiming its first key; the mutex maps: holding the lock; the floor: "
                   "after claiming its first key, which nobody helps to finish); in the "
                   "`unstalled` run it does not. The numbers are the other thread's (the "
                   "worker's): commits per second, and the latency of each transfer, retries "
                   "included, in µs. `time stalled`: the share of the run thread 0 spent in its "
                   "stalled commits.\n")
        rows = []
        for impl in impls:
            base = lf.get(f"unstalled/{impl}")
            for mode in ["unstalled", "stall"]:
                m = lf.get(f"{mode}/{impl}")
                if not m:
                    continue
                rows.append([impl, "stalled" if mode == "stall" else mode,
                             f"{m['throughput']:.0f}",
                             times(ratio(m["throughput"], base and base["throughput"])),
                             us(m, "p50_ns"), us(m, "p99_ns"), us(m, "p999_ns"),
                             us(m, "p9999_ns"), us(m, "max_ns"), f"{int(m['stalls'])}",
                             f"{100 * m.get('stalled_ns', 0) / 1e9 / m['seconds']:.0f}%"])
        table(out, ["impl", "run", "worker commits/s", "× its unstalled run", "p50", "p99",
                    "p99.9", "p99.99", "max", "stalls", "time stalled"], rows)
        out.append("")
        rows = []
        for impl in impls:
            m = lf.get(f"stall/{impl}")
            if not m:
                continue
            cells = [impl]
            for field in ["p999_ns", "p9999_ns", "max_ns"]:
                cells += [times(ratio(m[field], (lf.get(f"stall/{b}") or {}).get(field)))
                          for b in MUTEXES]
            rows.append(cells)
        table(out, ["stalled worker", "p99.9 × mutex's", "p99.9 × mutex-one's",
                    "p99.99 × mutex's", "p99.99 × mutex-one's", "max × mutex's",
                    "max × mutex-one's"], rows)
    if any(k.startswith("oversubscribed/") for k in lf):
        out.append("\n### oversubscribed: 32 threads on the machine's cores\n")
        out.append("32 threads transfer between random accounts of 64, all measured: commits "
                   "per second, its ratios, and the latency of each transfer, retries included, "
                   "in µs.\n")
        base = {b: lf.get(f"oversubscribed/{b}") for b in MUTEXES + [FLOOR]}
        tp = lambda b: base[b] and base[b]["throughput"]
        rows = []
        for impl in impls:
            m = lf.get(f"oversubscribed/{impl}")
            if not m:
                continue
            share = 100 * m["conflicts"] / m["attempts"] if m["attempts"] else 0
            rows.append([impl, f"{m['throughput']:.0f}"] +
                        [times(ratio(m["throughput"], tp(b))) for b in MUTEXES] +
                        [fmt(ratio(m["throughput"], tp(FLOOR)))] +
                        [us(m, f) for f in ["p50_ns", "p99_ns", "p999_ns", "p9999_ns",
                                            "max_ns"]] + [f"{share:.3f}%"])
        table(out, ["impl", "commits/s", "× mutex", "× mutex-one", "of floor", "p50", "p99",
                    "p99.9", "p99.99", "max", "conflicts"], rows)


def memory_tables(run, out):
    memory = run.log["memory"]
    if memory:
        keys = int(next(iter(memory.values())).get("keys", 0))
        out.append(f"\n### memory: {keys:,} u64 -> u64 keys, each written once\n")
        out.append("Bytes per key: requested from the allocator, as the allocator handed them "
                   "out (its rounding included), and resident.\n")
        base = memory.get("mutex")
        rows = []
        for name in ["mutex", "ours", "rwlock", "stm-crate", "arcswap"]:
            m = memory.get(name)
            if not m:
                continue
            rows.append([name, f"{m['requested_per_key']:.1f}", f"{m['allocator_per_key']:.1f}",
                         f"{m['rss_per_key']:.1f}",
                         times(ratio(m["requested_per_key"], base and base["requested_per_key"])),
                         times(ratio(m["rss_per_key"], base and base["rss_per_key"]))])
        table(out, ["impl", "requested", "allocator", "resident", "requested × mutex",
                    "resident × mutex"], rows)
    allocs = run.log["allocs"]
    if allocs:
        out.append("\n### allocations per commit\n")
        out.append("2-key transfers over 64 accounts, after 10,000 per thread of warm-up: every "
                   "allocation the process makes during the next 100,000 (failed attempts "
                   "included), per transfer.\n")
        rows = []
        for key, m in allocs.items():
            impl, threads = key.split("/")
            rows.append([impl, threads, f"{m['transfers']:.0f}", f"{m['allocations']:.0f}",
                         f"{m['per_commit']:.3f}"])
        table(out, ["impl", "threads", "transfers", "allocations", "per commit"], rows)


# Goals ------------------------------------------------------------------------------------


class Goals:
    def __init__(self):
        self.rows = []

    def add(self, workload, goal, measured, op, bound, floor, stretch=None):
        """`measured op bound` (op ">=", "<=" or "<") meets the goal; `stretch` a further
        bound."""
        if measured is None:
            verdict = "not measured"
        else:
            ok = lambda b: {">=": measured >= b, "<=": measured <= b, "<": measured < b}[op]
            verdict = "missed" if not ok(bound) else (
                "met (stretch too)" if stretch is not None and ok(stretch) else "met")
        self.rows.append([workload, goal, "-" if measured is None else f"{measured:.2f}",
                          verdict, fmt(floor)])


def goals_table(run, out):
    g = Goals()
    lf, allocs = run.log["lockfree"], run.log["allocs"]
    for t in ["2", "4", "8"]:
        ours = run.mops("transfer", "ours", t)
        floor = ratio(ours, run.mops("transfer", FLOOR, t))
        w = f"transfer, 64 accounts, {t} threads"
        g.add(w, "≥ 1.0x mutex (stretch 1.5x)", ratio(ours, run.mops("transfer", "mutex", t)),
              ">=", 1.0, floor, stretch=1.5)
        g.add(w, "≥ 0.7x mutex-one (stretch 1.0x)",
              ratio(ours, run.mops("transfer", "mutex-one", t)), ">=", 0.7, floor, stretch=1.0)
        g.add(w, "≥ 1.5x stm crate", ratio(ours, run.mops("transfer", "stm-crate", t)), ">=",
              1.5, floor)
    for t in ["2", "4", "8"]:
        ours = run.mops("tx_transfer", "atomically", t)
        g.add(f"`atomically` transfer, {t} threads", "≥ 1.5x stm crate",
              ratio(ours, run.mops("tx_transfer", "stm-crate", t)), ">=", 1.5,
              ratio(ours, run.mops("tx_transfer", FLOOR, t)))
    for group, workload, goal, bound in [
            ("read_mostly", "read-mostly 95/5, 1k keys", "≥ 2.0x mutex", 2.0),
            ("hot_key", "hot key", "≥ 0.5x mutex", 0.5),
            ("snapshot", "8-key snapshot with a writer", "≥ 1.0x mutex", 1.0)]:
        for t in ["2", "4"]:
            ours = run.mops(group, "ours", t)
            g.add(f"{workload}, {t} threads", goal, ratio(ours, run.mops(group, "mutex", t)),
                  ">=", bound, ratio(ours, run.mops(group, FLOOR, t)))
    # Time ratios: the mutex map's throughput over ours is our time over its.
    ours = run.mops("transfer", "ours", "1")
    g.add("one thread: 2-key transfer", "≤ 1.5x the mutex's time",
          ratio(run.mops("transfer", "mutex", "1"), ours), "<=", 1.5,
          ratio(ours, run.mops("transfer", FLOOR, "1")))
    ours = run.ns("store_size/1k", "ours-read")
    g.add("one thread: 1-key read (1k keys)", "≤ 1.0x the mutex's time",
          ratio(ours, run.ns("store_size/1k", "mutex-read")), "<=", 1.0,
          ratio(run.ns("store_size/1k", "floor-read"), ours))
    for key in ["ours/1", "ours/2", "atomically/1", "atomically/2"]:
        impl, threads = key.split("/")
        api = "`using` + `commit`" if impl == "ours" else "`atomically`"
        m = allocs.get(key)
        g.add(f"allocations per commit, {api}, {threads} thread{'s' * (threads != '1')}",
              "< 0.01", m and m["per_commit"], "<", 0.01, None)
    stalled, unstalled = lf.get("stall/ours"), lf.get("unstalled/ours")
    floor_free = lf.get("unstalled/floor")
    of_floor = ratio(stalled and stalled["throughput"], floor_free and floor_free["throughput"])
    g.add("stall: worker throughput with / without stalls", "≥ 0.9",
          ratio(stalled and stalled["throughput"], unstalled and unstalled["throughput"]), ">=",
          0.9, of_floor)
    for b in MUTEXES:
        other = lf.get(f"stall/{b}")
        g.add(f"stall: worker p99.99 latency, × {b}'s", "≤ 0.1x",
              ratio(stalled and stalled["p9999_ns"], other and other["p9999_ns"]), "<=", 0.1,
              of_floor)
    bank = run.log["bank"]
    g.add("bank example, stm-store / mutex", "≥ 1.0", bank.get("mutex"), ">=", 1.0, None)
    g.add("bank example, stm-store / mutex-one", "≥ 0.7 (stretch 1.0)", bank.get("mutex-one"),
          ">=", 0.7, None, stretch=1.0)

    out.append("\n### goals\n")
    out.append("Each goal against its ratio from this run (throughput ratios unless the goal "
               "says time). `of the floor`: the store's throughput over the floor's in the "
               "same workload (for the one-thread read, the floor's time over the store's; for "
               "the stall, the stalled worker's throughput over the floor's unstalled "
               "worker's).\n")
    table(out, ["workload", "goal", "measured", "verdict", "of the floor"], g.rows)
    met = sum(1 for row in g.rows if row[3].startswith("met"))
    out.append(f"\n{met} of {len(g.rows)} goals met.")


def bank_output(run, out):
    if not run.log["bank_output"]:
        return
    out.append("\n### bank example\n")
    out.append("`cargo run --release --example bank`, in the same run:\n")
    out.append("```")
    out.extend(run.log["bank_output"])
    out.append("```")


def main():
    log_path = sys.argv[1]
    root = sys.argv[2] if len(sys.argv) > 2 else os.path.join(
        os.environ.get("CARGO_TARGET_DIR", "target"), "criterion")
    run = Run(load_medians(root), load_log(log_path))
    out = []
    goals_table(run, out)
    bank_output(run, out)
    contention_tables(run, out)
    transactions_tables(run, out)
    lockfree_tables(run, out)
    commit_table(run, out)
    size_table(run, out)
    thread_table(run, out)
    memory_tables(run, out)
    for line in run.log["loads"]:
        out.append(f"\n{line}")
    print("\n".join(out))


if __name__ == "__main__":
    main()
