//! A bounded producer/consumer queue kept in the store, with `retry` for waiting.
//!
//! The queue is a ring of `capacity` slots, each a key of the store: `Key::Head` is the
//! position of the next item to take, `Key::Tail` the position of the next free place, and
//! `Key::Slot(i)` holds the item at every position `p` with `p % capacity == i` (no value: the
//! slot is free). Positions only grow, so they number the items in queue order.
//!
//! - A **producer** reads `Tail` and the slot it points at, in one transaction
//!   ([`Store::atomically`]). If that slot still holds an item, the queue is full: the producer
//!   calls [`Tx::retry`], which sleeps until a consumer empties the slot (or `Tail` moves).
//!   Otherwise it writes the item and `Tail + 1`, both at one instant.
//! - A **consumer** reads `Head` and its slot. If the slot is free, the queue is empty: it calls
//!   `retry` and sleeps until a producer fills the slot. Otherwise it clears the slot and writes
//!   `Head + 1`.
//!
//! Producers only touch `Tail` and the slot at the tail; consumers only `Head` and the slot at
//! the head. So producers conflict with each other (over `Tail`), consumers with each other
//! (over `Head`), and a producer with a consumer only when both are at one slot: when the queue
//! is empty or full, which is exactly when one of them must wait anyway.
//!
//! Each producer pushes its share of a fixed number of items, numbered per producer. When
//! every producer is done, the main thread pushes one *poison pill* per consumer; a consumer
//! stops at its pill. The queue is FIFO, so every item comes out before the first pill.
//!
//! The same workload then runs on a `std::sync::Mutex<VecDeque<u64>>` with two `Condvar`s
//! (not empty, not full), the usual blocking queue. Each side runs several times, alternating,
//! and the example prints the items per second of both and the ratio of the medians.
//!
//! After every run, of both sides, it checks the queue's contract: every item produced was
//! consumed exactly once (count, sum, no duplicates, none missing); FIFO per producer (the
//! items of one producer came out in the order it pushed them); every item left the queue at
//! the position it entered it; each consumer got one pill; and the queue is empty at the end.
//!
//! ```text
//! cargo run --release --example queue -- [--producers 2] [--consumers 2] [--items 500000] [--capacity 64] [--runs 3]
//! cargo run --release --example queue -- --help
//! ```
//!
//! The last line is `invariants hold: yes`; otherwise the example prints what failed, ends
//! with `invariants hold: NO` and exits with 1. A bad option exits with 2.

use std::collections::VecDeque;
use std::process::ExitCode;
use std::sync::{Barrier, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use stm_store::{Store, Tx, TxError};

mod common;
use common::{grouped, number, plural, spread};

/// The keys of the queue in the store.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Key {
    /// The position of the next item to take (no value: 0).
    Head,
    /// The position of the next free place (no value: 0).
    Tail,
    /// Slot `i` of the ring: the item at the position `p` with `p % capacity == i`, or no value.
    Slot(usize),
}

/// Positions (`Head`, `Tail`) and items (slots) are all `u64`.
type Ring = Store<Key, u64>;

/// The item that tells a consumer to stop. Real items are `producer << 32 | seq`, never this.
const PILL: u64 = u64::MAX;

const USAGE: &str = "usage: cargo run --release --example queue -- \
[--producers N] [--consumers N] [--items N] [--capacity N] [--runs N]";

const MUTEX_VARIANT: &str =
    "a std::sync::Mutex<VecDeque<u64>> with two Condvars (not empty, not full)";

struct Config {
    producers: usize,
    consumers: usize,
    items: u64,
    capacity: usize,
    runs: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            producers: 2,
            consumers: 2,
            items: 500_000,
            capacity: 64,
            runs: 3,
        }
    }
}

impl Config {
    /// How many items producer `p` pushes: the items shared out as evenly as can be.
    fn share(&self, p: usize) -> u64 {
        let producers = self.producers as u64;
        self.items / producers + u64::from((p as u64) < self.items % producers)
    }
}

/// Item `seq` of producer `p`.
fn item(p: usize, seq: u64) -> u64 {
    (p as u64) << 32 | seq
}

/// `(producer, seq)` of an item.
fn split(item: u64) -> (usize, u64) {
    ((item >> 32) as usize, item & 0xFFFF_FFFF)
}

/// What a queue needs to offer the workload.
trait BoundedQueue: Sync {
    /// Appends `item`, waiting while the queue is full. Returns the position it took: 0, 1,
    /// 2, ... in queue order.
    fn push(&self, item: u64, tally: &mut Tally) -> u64;
    /// Takes the oldest item, waiting while the queue is empty. Returns its position and it.
    fn pop(&self, tally: &mut Tally) -> (u64, u64);
    /// Whether the queue is empty and consistent (`pushed` items went in, all came out).
    fn drained(&self, pushed: u64) -> Result<(), String>;
}

/// The queue in the store: see the module docs.
struct StmQueue {
    ring: Ring,
    capacity: usize,
}

impl StmQueue {
    fn new(capacity: usize) -> Self {
        Self {
            ring: Ring::new(),
            capacity,
        }
    }

    /// The position `Head` or `Tail` holds, and the key of its slot.
    fn at(&self, tx: &mut Tx<'_, Key, u64>, end: Key) -> Result<(u64, Key), TxError> {
        let position = tx.get(&end)?.unwrap_or(0);
        Ok((
            position,
            Key::Slot((position % self.capacity as u64) as usize),
        ))
    }
}

impl BoundedQueue for StmQueue {
    fn push(&self, item: u64, tally: &mut Tally) -> u64 {
        let (mut runs, mut waits) = (0, 0);
        let position = self.ring.atomically(|tx| {
            runs += 1;
            let (tail, slot) = self.at(tx, Key::Tail)?;
            if tx.exists(&slot)? {
                // Full: the item `capacity` places back is still there. Sleep until a key
                // read here changes (the consumer clears the slot), then run again.
                waits += 1;
                return tx.retry();
            }
            tx.set(&slot, item)?;
            tx.set(&Key::Tail, tail + 1)?;
            Ok(tail)
        });
        tally.record(runs, waits);
        position
    }

    fn pop(&self, tally: &mut Tally) -> (u64, u64) {
        let (mut runs, mut waits) = (0, 0);
        let taken = self.ring.atomically(|tx| {
            runs += 1;
            let (head, slot) = self.at(tx, Key::Head)?;
            let Some(item) = tx.get(&slot)? else {
                // Empty: sleep until a producer fills this slot.
                waits += 1;
                return tx.retry();
            };
            tx.clear(&slot)?;
            tx.set(&Key::Head, head + 1)?;
            Ok((head, item))
        });
        tally.record(runs, waits);
        taken
    }

    fn drained(&self, pushed: u64) -> Result<(), String> {
        let (head, tail, full) = self.ring.atomically(|tx| {
            let head = tx.get(&Key::Head)?.unwrap_or(0);
            let tail = tx.get(&Key::Tail)?.unwrap_or(0);
            let mut full = Vec::new();
            for i in 0..self.capacity {
                if tx.exists(&Key::Slot(i))? {
                    full.push(i);
                }
            }
            Ok((head, tail, full))
        });
        if head == pushed && tail == pushed && full.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "at the end Head is {head} and Tail {tail} (expected {pushed} both), slots still full: {full:?}"
            ))
        }
    }
}

/// The usual blocking queue: a mutex over a `VecDeque`, and a condition variable per side.
struct MutexQueue {
    inner: Mutex<Inner>,
    not_empty: Condvar,
    not_full: Condvar,
    capacity: usize,
}

struct Inner {
    items: VecDeque<u64>,
    /// Items pushed and taken so far: the positions.
    pushed: u64,
    taken: u64,
}

impl MutexQueue {
    fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                items: VecDeque::with_capacity(capacity),
                pushed: 0,
                taken: 0,
            }),
            not_empty: Condvar::new(),
            not_full: Condvar::new(),
            capacity,
        }
    }
}

impl BoundedQueue for MutexQueue {
    fn push(&self, item: u64, tally: &mut Tally) -> u64 {
        let mut inner = self.inner.lock().expect("not poisoned");
        let mut waits = 0;
        while inner.items.len() == self.capacity {
            waits += 1;
            inner = self.not_full.wait(inner).expect("not poisoned");
        }
        inner.items.push_back(item);
        let position = inner.pushed;
        inner.pushed += 1;
        drop(inner);
        self.not_empty.notify_one();
        tally.record(1 + waits, waits);
        position
    }

    fn pop(&self, tally: &mut Tally) -> (u64, u64) {
        let mut inner = self.inner.lock().expect("not poisoned");
        let mut waits = 0;
        let item = loop {
            match inner.items.pop_front() {
                Some(item) => break item,
                None => {
                    waits += 1;
                    inner = self.not_empty.wait(inner).expect("not poisoned");
                }
            }
        };
        let position = inner.taken;
        inner.taken += 1;
        drop(inner);
        self.not_full.notify_one();
        tally.record(1 + waits, waits);
        (position, item)
    }

    fn drained(&self, pushed: u64) -> Result<(), String> {
        let inner = self.inner.lock().expect("not poisoned");
        if inner.items.is_empty() && inner.pushed == pushed && inner.taken == pushed {
            Ok(())
        } else {
            Err(format!(
                "at the end {} pushed, {} taken (expected {pushed} both), {} still queued",
                inner.pushed,
                inner.taken,
                inner.items.len()
            ))
        }
    }
}

/// What one thread counted.
#[derive(Default, Clone, Copy)]
struct Tally {
    /// Pushes or pops done.
    ops: u64,
    /// Times it had to wait: `retry` on the store, `Condvar::wait` on the mutex.
    waits: u64,
    /// Attempts run again because a key read had changed (the store only).
    conflicts: u64,
}

impl Tally {
    /// One push or pop that took `runs` runs of its closure, `waits` of which ended in a wait.
    /// Every other run but the last ended in a conflict.
    fn record(&mut self, runs: u64, waits: u64) {
        self.ops += 1;
        self.waits += waits;
        self.conflicts += runs - 1 - waits;
    }

    fn add(&mut self, other: Tally) {
        self.ops += other.ops;
        self.waits += other.waits;
        self.conflicts += other.conflicts;
    }
}

/// One run of one side: what went in and what came out, where.
struct Run {
    elapsed: Duration,
    producers: Tally,
    consumers: Tally,
    /// Per producer: `(position, item)` of each push, in push order.
    pushed: Vec<Vec<(u64, u64)>>,
    /// `(position, PILL)` of each pill pushed, after every producer was done.
    pills: Vec<(u64, u64)>,
    /// Per consumer: `(position, item)` of each pop, in pop order (its pill last).
    popped: Vec<Vec<(u64, u64)>>,
    /// The queue's own end-of-run check.
    drained: Result<(), String>,
}

impl Run {
    fn rate(&self, config: &Config) -> f64 {
        config.items as f64 / self.elapsed.as_secs_f64()
    }
}

/// Runs the workload once on `queue`.
fn run(queue: &impl BoundedQueue, config: &Config) -> Run {
    let start = Barrier::new(config.producers + config.consumers + 1);
    thread::scope(|scope| {
        let consumers: Vec<_> = (0..config.consumers)
            .map(|_| {
                let start = &start;
                scope.spawn(move || {
                    let (mut tally, mut popped) = (Tally::default(), Vec::new());
                    start.wait();
                    loop {
                        let (position, item) = queue.pop(&mut tally);
                        popped.push((position, item));
                        if item == PILL {
                            return (tally, popped);
                        }
                    }
                })
            })
            .collect();
        let producers: Vec<_> = (0..config.producers)
            .map(|p| {
                let start = &start;
                scope.spawn(move || {
                    let mut tally = Tally::default();
                    let mut pushed = Vec::with_capacity(config.share(p) as usize);
                    start.wait();
                    for seq in 0..config.share(p) {
                        let item = item(p, seq);
                        pushed.push((queue.push(item, &mut tally), item));
                    }
                    (tally, pushed)
                })
            })
            .collect();

        start.wait();
        let began = Instant::now();
        let mut out = Run {
            elapsed: Duration::ZERO,
            producers: Tally::default(),
            consumers: Tally::default(),
            pushed: Vec::new(),
            pills: Vec::new(),
            popped: Vec::new(),
            drained: Ok(()),
        };
        for producer in producers {
            let (tally, pushed) = producer.join().expect("a producer panicked");
            out.producers.add(tally);
            out.pushed.push(pushed);
        }
        // Every item is in; the pills go behind them.
        let mut pills = Tally::default();
        for _ in 0..config.consumers {
            out.pills.push((queue.push(PILL, &mut pills), PILL));
        }
        for consumer in consumers {
            let (tally, popped) = consumer.join().expect("a consumer panicked");
            out.consumers.add(tally);
            out.popped.push(popped);
        }
        out.elapsed = began.elapsed();
        out.drained = queue.drained(config.items + config.consumers as u64);
        out
    })
}

/// Checks one run against the queue's contract; returns what failed.
fn check(run: &Run, config: &Config) -> Vec<String> {
    let mut failed = Vec::new();
    let items = config.items as usize;
    let all = items + config.consumers;

    // Where each position's item went in, from the producers (and the pills, after them).
    let mut entered: Vec<Option<u64>> = vec![None; all];
    let mut put = |position: u64, item: u64, failed: &mut Vec<String>| {
        let at = entered.get_mut(position as usize);
        match at {
            Some(at @ None) => *at = Some(item),
            Some(Some(_)) => failed.push(format!("two pushes took position {position}")),
            None => failed.push(format!("a push took position {position}, past {all}")),
        }
    };
    for (p, pushed) in run.pushed.iter().enumerate() {
        if pushed.len() as u64 != config.share(p) {
            failed.push(format!("producer {p} pushed {} items", pushed.len()));
        }
        for &(position, item) in pushed {
            put(position, item, &mut failed);
        }
    }
    for &(position, pill) in &run.pills {
        put(position, pill, &mut failed);
    }

    // Each item once: counted by its number, and summed.
    let mut seen: Vec<Vec<u32>> = (0..config.producers)
        .map(|p| vec![0; config.share(p) as usize])
        .collect();
    let (mut count, mut sum, mut pills) = (0u64, 0u128, 0);
    let mut left: Vec<(u64, u64)> = Vec::with_capacity(all);
    for (c, popped) in run.popped.iter().enumerate() {
        let pill_count = popped.iter().filter(|&&(_, item)| item == PILL).count();
        if pill_count != 1 || popped.last().map(|&(_, item)| item) != Some(PILL) {
            failed.push(format!("consumer {c} got {pill_count} pills"));
        }
        for &(position, item) in popped {
            left.push((position, item));
            if item == PILL {
                pills += 1;
                continue;
            }
            count += 1;
            sum += u128::from(item);
            let (p, seq) = split(item);
            match seen.get_mut(p).and_then(|seen| seen.get_mut(seq as usize)) {
                Some(times) => *times += 1,
                None => failed.push(format!("consumed item {item:#x}, never produced")),
            }
        }
    }
    if pills != config.consumers {
        failed.push(format!("{pills} pills consumed, not {}", config.consumers));
    }
    for (p, seen) in seen.iter().enumerate() {
        let missing = seen.iter().filter(|&&times| times == 0).count();
        let duplicated = seen.iter().filter(|&&times| times > 1).count();
        if missing > 0 || duplicated > 0 {
            failed.push(format!(
                "producer {p}: {missing} items never consumed, {duplicated} consumed more than once"
            ));
        }
    }
    let produced_sum: u128 = (0..config.producers)
        .flat_map(|p| (0..config.share(p)).map(move |seq| u128::from(item(p, seq))))
        .sum();
    if count != config.items || sum != produced_sum {
        failed.push(format!(
            "consumed {count} items summing to {sum}; produced {} summing to {produced_sum}",
            config.items
        ));
    }

    // FIFO per producer: in the order items left the queue, each producer's numbers grow.
    left.sort_unstable();
    let mut last: Vec<Option<u64>> = vec![None; config.producers];
    let mut out_of_order: Vec<(usize, String)> = vec![(0, String::new()); config.producers];
    for &(position, item) in left.iter().filter(|&&(_, item)| item != PILL) {
        let (p, seq) = split(item);
        let (Some(last), Some((count, first))) = (last.get_mut(p), out_of_order.get_mut(p)) else {
            continue; // never produced: counted above
        };
        if let Some(before) = last.filter(|&before| before >= seq) {
            if *count == 0 {
                *first = format!("item {seq} left at position {position}, after item {before}");
            }
            *count += 1;
        }
        *last = Some(seq);
    }
    for (p, (count, first)) in out_of_order.iter().enumerate() {
        if *count > 0 {
            failed.push(format!(
                "not FIFO: {count} items of producer {p} left after a later one (first: {first})"
            ));
        }
    }

    // Every item left at the position it entered (so the queue as a whole is FIFO).
    let moved = left
        .iter()
        .filter(|&&(position, item)| entered.get(position as usize) != Some(&Some(item)))
        .count();
    if moved > 0 {
        failed.push(format!(
            "{moved} items left at a position other than the one they entered"
        ));
    }

    if let Err(end) = &run.drained {
        failed.push(end.clone());
    }
    failed.truncate(20);
    failed
}

fn main() -> ExitCode {
    let config = match common::options_or_exit(parse_args(std::env::args().skip(1)), help, USAGE) {
        Ok(config) => config,
        Err(exit) => return exit,
    };
    let cores = thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "queue: {} and {} on {}; {} through a ring of {}; {} per side, alternating",
        plural(config.producers, "producer"),
        plural(config.consumers, "consumer"),
        plural(cores, "core"),
        plural(grouped(config.items), "item"),
        plural(config.capacity, "slot"),
        plural(config.runs, "run"),
    );
    println!("mutex variant: {MUTEX_VARIANT}");

    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let mut failures = Vec::new();
    for i in 1..=config.runs {
        let progress = |side: &str| eprint!("run {i}/{}: {side} ...", config.runs);
        let done = |run: &Run| eprintln!(" {} items/s", grouped(run.rate(&config)));

        progress("stm-store");
        let stm = run(&StmQueue::new(config.capacity), &config);
        done(&stm);
        let failed = check(&stm, &config).into_iter();
        failures.extend(failed.map(|f| format!("stm-store run {i}: {f}")));
        ours.push(stm);

        progress("mutex");
        let mutex = run(&MutexQueue::new(config.capacity), &config);
        done(&mutex);
        let failed = check(&mutex, &config).into_iter();
        failures.extend(failed.map(|f| format!("mutex run {i}: {f}")));
        theirs.push(mutex);
    }

    let our_median = report("stm-store", &ours, &config, "retry");
    let their_median = report("mutex", &theirs, &config, "Condvar::wait");
    let pair_ratios = ours
        .iter()
        .zip(&theirs)
        .map(|(s, m)| s.rate(&config) / m.rate(&config));
    let (_, low, high) = spread(pair_ratios.collect());
    println!(
        "throughput ratio stm-store / mutex: {:.2}x of the medians (per pair of runs: {low:.2}x to {high:.2}x)",
        our_median / their_median
    );

    println!(
        "checked in every run of both sides: each of the {} items consumed exactly once (count, sum, \
no duplicates, none missing); FIFO per producer; each item left at the position it entered; \
one pill per consumer; queue empty at the end",
        grouped(config.items)
    );
    for failure in &failures {
        println!("FAILED: {failure}");
    }
    if failures.is_empty() {
        println!("invariants hold: yes");
        ExitCode::SUCCESS
    } else {
        println!("invariants hold: NO");
        ExitCode::FAILURE
    }
}

/// Prints one side's throughput and waits. Returns its median items per second.
fn report(side: &str, runs: &[Run], config: &Config, wait: &str) -> f64 {
    let (median, min, max) = spread(runs.iter().map(|run| run.rate(config)).collect());
    let (mut producers, mut consumers) = (Tally::default(), Tally::default());
    for run in runs {
        producers.add(run.producers);
        consumers.add(run.consumers);
    }
    let per_item = |n: u64| n as f64 / (config.items * runs.len() as u64) as f64;
    println!(
        "{side:>9}: median {} items/s (range {} to {})",
        grouped(median),
        grouped(min),
        grouped(max),
    );
    println!(
        "{:>9}  per item: {:.3} waits of producers (full) and {:.3} of consumers (empty), by {wait}; \
{:.3} conflicts",
        "",
        per_item(producers.waits),
        per_item(consumers.waits),
        per_item(producers.conflicts + consumers.conflicts),
    );
    median
}

fn help() -> String {
    let default = Config::default();
    format!(
        "\
A bounded producer/consumer queue kept in the store: a ring of slots with Head and Tail keys.
Consumers call `retry` when the queue is empty and producers when it is full; the transaction
sleeps until a key it read changes. Producers push a fixed number of items, then one poison
pill per consumer ends the run. The same workload runs on the mutex variant:
{MUTEX_VARIANT}.
Prints the items per second of both and their ratio, then `invariants hold: yes` if, in every
run, every item was consumed exactly once, in FIFO order per producer, at the position it
entered (exit status 0; 1 otherwise, 2 for a bad option).

{USAGE}

options:
  --producers N  producer threads (default {})
  --consumers N  consumer threads (default {})
  --items N      items in all, shared out among the producers (default {})
  --capacity N   slots in the ring: how many items the queue holds (default {})
  --runs N       runs per side, alternating stm-store and mutex (default {})
  -h, --help     print this help
",
        default.producers, default.consumers, default.items, default.capacity, default.runs,
    )
}

/// The options, or `None` for `--help`. Takes `--name value` and `--name=value`.
fn parse_args(args: impl Iterator<Item = String>) -> Result<Option<Config>, String> {
    let mut config = Config::default();
    let run = common::parse_options(args, |name, value| {
        match name {
            "--producers" => config.producers = number(name, &value()?, 1)?,
            "--consumers" => config.consumers = number(name, &value()?, 1)?,
            "--items" => config.items = number(name, &value()?, 0)?,
            "--capacity" => config.capacity = number(name, &value()?, 1)?,
            "--runs" => config.runs = number(name, &value()?, 1)?,
            _ => return common::unknown(name),
        }
        Ok(())
    })?;
    // Item numbers are 32 bits per producer (and the pill is all ones).
    if config.producers >= 1 << 31 || config.items / config.producers as u64 >= 1 << 32 {
        return Err("at most 2^32 items per producer".to_owned());
    }
    Ok(run.then_some(config))
}
