//! An inventory reservation service: orders reserve stock all or nothing.
//!
//! The store holds two kinds of keys: `Key::Stock(item)`, the units of an item on the shelf,
//! and `Key::Order(id)`, an order: the lines it asks for (item, quantity) and who reserved it,
//! if anyone has.
//!
//! Reserving an order is one transaction ([`Store::try_atomically`]) whose keys come from what
//! it reads: it reads the order first, then the stock of each item the order names. If every
//! item has enough, it takes the units and marks the order reserved, all at one instant. If one
//! item lacks stock, the closure returns the service's own error, `OutOfStock { item, .. }`:
//! the call ends with that error, and **nothing is written**, not even the units already taken
//! in the transaction for the order's earlier lines. Since every read of the transaction is
//! consistent with the ones before it, the refusal was decided on stock levels that all held
//! at one instant. An order already reserved is left alone (and reported), so no order is ever
//! reserved twice, even when two workers try it at the same moment: the second one's commit
//! finds the order changed, and its closure runs again and sees the reservation.
//!
//! Several worker threads make passes over all the orders, each starting at a different place,
//! so they meet on the same orders and the same items. Meanwhile restocker threads deliver units
//! of random items, until the workers are done; an order refused in one pass may go through in
//! the next. Then the example ends on its own and checks, from what the threads report and
//! what the store holds:
//!
//! - for each item: initial stock + restocked = remaining + reserved by the orders that went
//!   through;
//! - no order was reserved twice: each one reported reserved by exactly one worker, and the
//!   store's record of who reserved it agrees (orders nobody reserved are still open).
//!
//! ```text
//! cargo run --release --example inventory -- [--workers 3] [--restockers 1] [--items 50] [--stock 10000] [--orders 100000] [--passes 2]
//! cargo run --release --example inventory -- --help
//! ```
//!
//! The last line is `invariants hold: yes`; otherwise the example prints what failed, ends
//! with `invariants hold: NO` and exits with 1. A bad option exits with 2.

use std::collections::BTreeMap;
use std::fmt::{self, Display};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use stm_store::{Store, Tx, TxError};

mod common;
use common::{grouped, number, plural, XorShift};

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Key {
    /// The units of an item on the shelf.
    Stock(u32),
    /// An order.
    Order(u32),
}

#[derive(Clone, Debug)]
enum Value {
    Stock(u64),
    Order(Order),
}

/// An order: what it asks for, and who reserved it. Cloning it is cheap (the lines are shared).
#[derive(Clone, Debug)]
struct Order {
    lines: Arc<[Line]>,
    /// The worker that reserved the order; `None` while it is open.
    reserved_by: Option<usize>,
}

#[derive(Clone, Copy, Debug)]
struct Line {
    item: u32,
    quantity: u64,
}

type Inventory = Store<Key, Value>;

/// Why an order was not reserved: the service's own error.
#[derive(Debug)]
enum ReserveError {
    /// `item` has only `available` units, and the order wants `wanted`.
    OutOfStock {
        item: u32,
        wanted: u64,
        available: u64,
    },
    /// The transaction gave up: only with a timeout, which this example never sets.
    Tx(TxError),
}

/// What lets `?` pass a [`TxError`] up from a closure that returns [`ReserveError`].
impl From<TxError> for ReserveError {
    fn from(error: TxError) -> Self {
        Self::Tx(error)
    }
}

impl Display for ReserveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutOfStock {
                item,
                wanted,
                available,
            } => write!(
                f,
                "item {item} is out of stock: wanted {wanted}, {available} left"
            ),
            Self::Tx(error) => error.fmt(f),
        }
    }
}

/// What happened to an order that was not refused.
enum Reserved {
    /// This call reserved it.
    Now,
    /// Someone had already: the worker named.
    Already { by: usize },
}

/// Reserves order `id` for `worker`, all or nothing.
fn reserve(
    inventory: &Inventory,
    id: u32,
    worker: usize,
    runs: &mut u64,
) -> Result<Reserved, ReserveError> {
    inventory.try_atomically(|tx| {
        *runs += 1;
        // First the order...
        let order = order(tx, id)?;
        if let Some(by) = order.reserved_by {
            return Ok(Reserved::Already { by });
        }
        // ...then the items it names: keys this transaction learns as it runs.
        for line in order.lines.iter() {
            // An order may name an item twice: this read then sees the first line's write.
            let available = stock(tx, line.item)?;
            if available < line.quantity {
                // The user's error: the call returns it, and the units set aside above for
                // earlier lines are never written.
                return Err(ReserveError::OutOfStock {
                    item: line.item,
                    wanted: line.quantity,
                    available,
                });
            }
            tx.set(
                &Key::Stock(line.item),
                Value::Stock(available - line.quantity),
            )?;
        }
        let reserved = Order {
            reserved_by: Some(worker),
            ..order
        };
        tx.set(&Key::Order(id), Value::Order(reserved))?;
        Ok(Reserved::Now)
    })
}

/// Adds `quantity` units of `item` to the shelf.
fn restock(inventory: &Inventory, item: u32, quantity: u64) {
    inventory.atomically(|tx| {
        let on_shelf = stock(tx, item)?;
        tx.set(&Key::Stock(item), Value::Stock(on_shelf + quantity))
    });
}

/// The units of `item` on the shelf (no value: none).
fn stock(tx: &mut Tx<'_, Key, Value>, item: u32) -> Result<u64, TxError> {
    match tx.get(&Key::Stock(item))? {
        None => Ok(0),
        Some(Value::Stock(units)) => Ok(units),
        Some(Value::Order(_)) => unreachable!("a stock key holds stock"),
    }
}

/// Order `id`, which the set-up wrote.
fn order(tx: &mut Tx<'_, Key, Value>, id: u32) -> Result<Order, TxError> {
    match tx.get(&Key::Order(id))? {
        Some(Value::Order(order)) => Ok(order),
        other => unreachable!("order {id} was written before the workers started, not {other:?}"),
    }
}

const USAGE: &str = "usage: cargo run --release --example inventory -- \
[--workers N] [--restockers N] [--items N] [--stock N] [--orders N] [--passes N]";

/// Lines per order: 1 to this many.
const MAX_LINES: u64 = 4;
/// Units per line: 1 to this many.
const MAX_QUANTITY: u64 = 5;
/// Units per delivery: 1 to this many.
const MAX_DELIVERY: u64 = 100;
/// A restocker's pause between deliveries.
const DELIVERY_PAUSE: Duration = Duration::from_micros(50);

struct Config {
    workers: usize,
    restockers: usize,
    items: u32,
    /// Units of each item on the shelf at the start.
    stock: u64,
    orders: u32,
    passes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            workers: 3,
            restockers: 1,
            items: 50,
            stock: 10_000,
            orders: 100_000,
            passes: 2,
        }
    }
}

/// The orders, made up from a fixed seed.
fn make_orders(config: &Config) -> Vec<Arc<[Line]>> {
    let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
    (0..config.orders)
        .map(|_| {
            let lines = 1 + rng.below(MAX_LINES);
            (0..lines)
                .map(|_| Line {
                    item: rng.below(u64::from(config.items)) as u32,
                    quantity: 1 + rng.below(MAX_QUANTITY),
                })
                .collect()
        })
        .collect()
}

/// A store with `config.stock` units of every item, and every order open.
fn stocked(config: &Config, orders: &[Arc<[Line]>]) -> Inventory {
    let inventory = Inventory::new();
    for item in 0..config.items {
        inventory.atomically(|tx| tx.set(&Key::Stock(item), Value::Stock(config.stock)));
    }
    for (id, lines) in (0..).zip(orders) {
        let order = Order {
            lines: lines.clone(),
            reserved_by: None,
        };
        inventory.atomically(|tx| tx.set(&Key::Order(id), Value::Order(order.clone())));
    }
    inventory
}

/// What a worker saw.
#[derive(Default)]
struct WorkerTally {
    /// The orders it reserved.
    reserved: Vec<u32>,
    /// Orders it found reserved by another worker.
    already: u64,
    /// Orders it found reserved by itself, in an earlier pass.
    already_mine: u64,
    /// Orders refused for lack of stock, and the first such refusal.
    out_of_stock: u64,
    first_refusal: Option<(u32, String)>,
    /// Runs of the closure beyond the first, after a conflict.
    conflicts: u64,
}

/// A worker: `passes` passes over every order, starting at its own place in the list.
fn work(inventory: &Inventory, config: &Config, worker: usize) -> WorkerTally {
    let mut tally = WorkerTally::default();
    let orders = u64::from(config.orders);
    let start = orders * worker as u64 / config.workers as u64;
    for _ in 0..config.passes {
        for i in 0..orders {
            let id = ((start + i) % orders) as u32;
            let mut runs = 0;
            match reserve(inventory, id, worker, &mut runs) {
                Ok(Reserved::Now) => tally.reserved.push(id),
                Ok(Reserved::Already { by }) if by == worker => tally.already_mine += 1,
                Ok(Reserved::Already { .. }) => tally.already += 1,
                Err(refusal @ ReserveError::OutOfStock { .. }) => {
                    tally.out_of_stock += 1;
                    tally.first_refusal.get_or_insert((id, refusal.to_string()));
                }
                Err(ReserveError::Tx(error)) => unreachable!("no timeout was set: {error}"),
            }
            tally.conflicts += runs - 1;
        }
    }
    tally
}

/// A restocker: deliveries of random items until `done`. Returns the units it delivered per
/// item, and how many deliveries.
fn deliver(
    inventory: &Inventory,
    config: &Config,
    seed: u64,
    done: &AtomicBool,
) -> (Vec<u64>, u64) {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ (seed + 1));
    let mut delivered = vec![0; config.items as usize];
    let mut deliveries = 0;
    while !done.load(Ordering::Relaxed) {
        let item = rng.below(u64::from(config.items)) as u32;
        let quantity = 1 + rng.below(MAX_DELIVERY);
        restock(inventory, item, quantity);
        delivered[item as usize] += quantity;
        deliveries += 1;
        thread::sleep(DELIVERY_PAUSE);
    }
    (delivered, deliveries)
}

/// What the store holds at the end: per item its stock, per order who reserved it. Read in
/// one transaction per key: nothing runs any more.
fn final_state(inventory: &Inventory, config: &Config) -> (Vec<u64>, Vec<Option<usize>>) {
    let stock = (0..config.items)
        .map(|item| inventory.atomically(|tx| stock(tx, item)))
        .collect();
    let reserved_by = (0..config.orders)
        .map(|id| inventory.atomically(|tx| Ok(order(tx, id)?.reserved_by)))
        .collect();
    (stock, reserved_by)
}

fn main() -> ExitCode {
    let config = match common::options_or_exit(parse_args(std::env::args().skip(1)), help, USAGE) {
        Ok(config) => config,
        Err(exit) => return exit,
    };
    let cores = thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "inventory: {} and {} on {}; {} of {} units each; {} of 1 to {MAX_LINES} lines; {} per worker",
        plural(config.workers, "worker"),
        plural(config.restockers, "restocker"),
        plural(cores, "core"),
        plural(grouped(config.items), "item"),
        grouped(config.stock),
        plural(grouped(config.orders), "order"),
        plural(config.passes, "pass"),
    );

    let orders = make_orders(&config);
    let inventory = stocked(&config, &orders);
    let done = AtomicBool::new(false);
    let began = Instant::now();
    let (workers, restockers) = thread::scope(|scope| {
        let (inventory, config, done) = (&inventory, &config, &done);
        let restockers: Vec<_> = (0..config.restockers)
            .map(|r| scope.spawn(move || deliver(inventory, config, r as u64, done)))
            .collect();
        let workers: Vec<_> = (0..config.workers)
            .map(|w| scope.spawn(move || work(inventory, config, w)))
            .collect();
        let workers: Vec<WorkerTally> = (workers.into_iter())
            .map(|worker| worker.join().expect("a worker panicked"))
            .collect();
        done.store(true, Ordering::Relaxed);
        let restockers: Vec<(Vec<u64>, u64)> = (restockers.into_iter())
            .map(|restocker| restocker.join().expect("a restocker panicked"))
            .collect();
        (workers, restockers)
    });
    let elapsed = began.elapsed();
    let (remaining, reserved_by) = final_state(&inventory, &config);

    // What the threads report.
    let reserved: u64 = workers.iter().map(|w| w.reserved.len() as u64).sum();
    let attempts = (config.workers * config.passes) as u64 * u64::from(config.orders);
    let already: u64 = workers.iter().map(|w| w.already).sum();
    let already_mine: u64 = workers.iter().map(|w| w.already_mine).sum();
    let out_of_stock: u64 = workers.iter().map(|w| w.out_of_stock).sum();
    let conflicts: u64 = workers.iter().map(|w| w.conflicts).sum();
    let mut restocked = vec![0u64; config.items as usize];
    for (delivered, _) in &restockers {
        restocked
            .iter_mut()
            .zip(delivered)
            .for_each(|(r, d)| *r += d);
    }
    let deliveries: u64 = restockers.iter().map(|(_, n)| n).sum();
    // Units taken per item by the orders that went through, by the workers' account.
    let mut taken = vec![0u64; config.items as usize];
    let mut reservers: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (w, tally) in workers.iter().enumerate() {
        for &id in &tally.reserved {
            reservers.entry(id).or_default().push(w);
            for line in orders[id as usize].iter() {
                taken[line.item as usize] += line.quantity;
            }
        }
    }

    println!(
        "{} reservation attempts in {:.2} s ({} per second):",
        grouped(attempts),
        elapsed.as_secs_f64(),
        grouped(attempts as f64 / elapsed.as_secs_f64()),
    );
    println!(
        "  reserved:         {} ({} units)",
        plural(grouped(reserved), "order"),
        grouped(taken.iter().sum::<u64>()),
    );
    println!(
        "  out of stock:     {} refused, nothing written{}",
        grouped(out_of_stock),
        match workers.iter().find_map(|w| w.first_refusal.as_ref()) {
            Some((id, why)) => format!(" (for instance order {id}: {why})"),
            None => String::new(),
        },
    );
    println!(
        "  already reserved: {} left alone ({} by another worker, {} by the same one in an earlier pass)",
        grouped(already + already_mine),
        grouped(already),
        grouped(already_mine),
    );
    println!(
        "  conflicts:        {} reran a closure because a key it read had changed",
        grouped(conflicts)
    );
    println!(
        "restocked: {}, {} units; at the end {} still open, {} units on the shelves",
        plural(grouped(deliveries), "delivery"),
        grouped(restocked.iter().sum::<u64>()),
        plural(
            grouped(reserved_by.iter().filter(|by| by.is_none()).count()),
            "order"
        ),
        grouped(remaining.iter().sum::<u64>()),
    );

    let mut failures = Vec::new();
    if reserved + already + already_mine + out_of_stock != attempts {
        failures.push(format!(
            "{reserved} reserved + {} already + {out_of_stock} refused is not the {attempts} attempts",
            already + already_mine
        ));
    }
    let unbalanced: Vec<String> = (0..config.items as usize)
        .filter(|&i| config.stock + restocked[i] != remaining[i] + taken[i])
        .map(|i| {
            format!(
                "item {i}: {} + {} restocked != {} remaining + {} reserved",
                config.stock, restocked[i], remaining[i], taken[i]
            )
        })
        .collect();
    failures.extend(unbalanced.iter().take(10).cloned());
    let twice: Vec<String> = (reservers.iter())
        .filter(|(_, by)| by.len() > 1)
        .map(|(id, by)| format!("order {id} reserved by workers {by:?}"))
        .collect();
    failures.extend(twice.iter().take(10).cloned());
    let disagree: Vec<String> = (0..config.orders)
        .zip(&reserved_by)
        .filter(|(id, recorded)| reservers.get(id).map(|by| by[0]) != **recorded)
        .map(|(id, recorded)| {
            format!(
                "order {id}: the store says reserved by {recorded:?}, the workers by {:?}",
                reservers.get(&id)
            )
        })
        .collect();
    failures.extend(disagree.iter().take(10).cloned());

    println!(
        "per item, initial + restocked = remaining + reserved: {}",
        if unbalanced.is_empty() {
            format!("holds for all {}", plural(config.items, "item"))
        } else {
            format!("FAILS for {}", plural(unbalanced.len(), "item"))
        }
    );
    println!(
        "no order reserved twice: {}",
        if twice.is_empty() && disagree.is_empty() {
            "yes (each reserved once, by the worker the store records)"
        } else {
            "NO"
        }
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

fn help() -> String {
    let default = Config::default();
    format!(
        "\
An inventory reservation service on stm-store. Stock levels and orders are keys of the store;
reserving an order is one transaction that reads the order, then the items it names, and takes
every unit or none: if an item lacks stock, `try_atomically` returns the service's own error
OutOfStock and nothing is written. Workers make passes over every order while restockers
deliver units, until the workers are done. Prints the counts, then `invariants hold: yes` if,
per item, initial + restocked = remaining + reserved, and no order was reserved twice
(exit status 0; 1 otherwise, 2 for a bad option).

{USAGE}

options:
  --workers N     threads reserving orders (default {})
  --restockers N  threads delivering units, one delivery every {} µs or so (default {})
  --items N       items (default {})
  --stock N       units of each item on the shelf at the start (default {})
  --orders N      orders of 1 to {MAX_LINES} lines of 1 to {MAX_QUANTITY} units (default {})
  --passes N      passes of each worker over every order (default {})
  -h, --help      print this help
",
        default.workers,
        DELIVERY_PAUSE.as_micros(),
        default.restockers,
        default.items,
        default.stock,
        default.orders,
        default.passes,
    )
}

/// The options, or `None` for `--help`. Takes `--name value` and `--name=value`.
fn parse_args(args: impl Iterator<Item = String>) -> Result<Option<Config>, String> {
    let mut config = Config::default();
    let run = common::parse_options(args, |name, value| {
        match name {
            "--workers" => config.workers = number(name, &value()?, 1)?,
            "--restockers" => config.restockers = number(name, &value()?, 0)?,
            "--items" => config.items = number(name, &value()?, 1)?,
            "--stock" => config.stock = number(name, &value()?, 0)?,
            "--orders" => config.orders = number(name, &value()?, 1)?,
            "--passes" => config.passes = number(name, &value()?, 1)?,
            _ => return common::unknown(name),
        }
        Ok(())
    })?;
    Ok(run.then_some(config))
}
