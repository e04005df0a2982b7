//! A session store: logins create sessions, logouts remove them, probes read without creating.
//!
//! The store maps a session's key (`"session-<id>"`, ids never reused) to its user and the
//! number of requests it served. Worker threads each log users in (a transaction that creates
//! the key), serve requests on their live sessions (a transaction that reads and writes one
//! key), log the oldest out once they hold more than their share of the live sessions (a
//! transaction that reads the session and removes it, so the count it read is the final one),
//! and probe keys with [`Store::get`], which creates nothing: their own live sessions, ones they
//! logged out, and ids nobody was given. An auditor thread meanwhile takes consistent
//! snapshots of the whole store and checks that they never hold more sessions than can be live.
//!
//! So the store sees a million keys come and go with about a thousand live at any time. At the
//! end the example checks, from what the workers report and what the store holds:
//!
//! - the store holds exactly the sessions still logged in, with every request counted (none
//!   lost, none counted twice), and every logged-out session had its requests counted when it
//!   was removed;
//! - every probe answered as it must: a live session found, a logged-out or never-issued one
//!   absent;
//! - no snapshot held more keys than can be live, and the probes left no key behind;
//! - memory: the bytes the store holds (counted by this program's allocator, after reclamation
//!   caught up) are within twice those of a store built from just the live sessions.
//!
//! ```text
//! cargo run --release --example sessions -- [--logins 1000000] [--live 1000] [--threads 4] [--probes 2]
//! cargo run --release --example sessions -- --help
//! ```
//!
//! The last line is `invariants hold: yes`; otherwise the example prints what failed, ends
//! with `invariants hold: NO` and exits with 1. A bad option exits with 2.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::{BTreeMap, VecDeque};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering::Relaxed};
use std::thread;
use std::time::Instant;

use stm_store::Store;

mod common;
use common::{grouped, number, plural, XorShift};

/// Counts the bytes this program holds from the allocator.
struct Counting;

static HELD: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call goes to the system allocator unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HELD.fetch_add(layout.size() as isize, Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size() as isize, Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        HELD.fetch_add(new_size as isize - layout.size() as isize, Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The bytes held once the epoch's deferred frees have run: what is left is what is reachable.
fn held_after_reclamation() -> isize {
    for _ in 0..256 {
        crossbeam_epoch::pin().flush();
    }
    HELD.load(Relaxed)
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Session {
    user: u64,
    requests: u64,
}

type Sessions = Store<String, Session>;

fn key(id: u64) -> String {
    format!("session-{id}")
}

struct Config {
    logins: u64,
    live: u64,
    threads: u64,
    probes: u64,
}

const USAGE: &str = "usage: sessions [--logins N] [--live N] [--threads N] [--probes N] [--help]";

fn help() -> String {
    format!(
        "{USAGE}\n\
         \x20 --logins N   sessions created (and all but the live ones removed) in all (1000000)\n\
         \x20 --live N     sessions live at any time, about (1000)\n\
         \x20 --threads N  worker threads, besides one auditor (4)\n\
         \x20 --probes N   `Store::get` probes per login (2)\n"
    )
}

fn parse_args(args: impl Iterator<Item = String>) -> Result<Option<Config>, String> {
    let mut config = Config {
        logins: 1_000_000,
        live: 1_000,
        threads: 4,
        probes: 2,
    };
    let complete = common::parse_options(args, |name, value| {
        match name {
            "--logins" => config.logins = number(name, &value()?, 1)?,
            "--live" => config.live = number(name, &value()?, 1)?,
            "--threads" => config.threads = number(name, &value()?, 1)?,
            "--probes" => config.probes = number(name, &value()?, 0)?,
            _ => return common::unknown(name),
        }
        Ok(())
    })?;
    Ok(complete.then_some(config))
}

/// What a worker saw and did.
#[derive(Default)]
struct Tally {
    /// Its sessions still logged in, with the requests it served on each.
    live: BTreeMap<u64, u64>,
    logins: u64,
    logouts: u64,
    requests: u64,
    probes: u64,
    /// What went wrong, as it was seen.
    failures: Vec<String>,
}

/// Worker `w` of `config.threads`: logs in the sessions `w`, `w + threads`, `w + 2 threads`, ...
fn work(store: &Sessions, config: &Config, w: u64) -> Tally {
    let mut tally = Tally::default();
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15 ^ (w + 1));
    let share = config.live.div_ceil(config.threads);
    let logins = (config.logins / config.threads) + u64::from(w < config.logins % config.threads);
    let mut live: VecDeque<(u64, u64)> = VecDeque::new(); // (id, requests), oldest first
    let mut logged_out: Vec<u64> = Vec::new(); // a sample, for probes
    for n in 0..logins {
        let id = w + n * config.threads;
        let session = Session {
            user: rng.below(1 << 20),
            requests: 0,
        };
        // Login: the key is new (ids are never reused), so it must read as never written.
        let fresh = store.atomically(|tx| {
            let fresh = tx.get(&key(id))?.is_none();
            tx.set(&key(id), session.clone())?;
            Ok(fresh)
        });
        if !fresh {
            tally
                .failures
                .push(format!("session {id} existed before its login"));
        }
        live.push_back((id, 0));
        tally.logins += 1;

        // A request on one of its live sessions.
        let at = rng.below(live.len() as u64) as usize;
        let (id, served) = &mut live[at];
        store.atomically(|tx| {
            let mut session = tx.get(&key(*id))?.expect("a live session is in the store");
            session.requests += 1;
            tx.set(&key(*id), session)
        });
        *served += 1;
        tally.requests += 1;

        // Logout of the oldest, once over its share: the count read is the final one.
        if live.len() as u64 > share {
            let (id, served) = live.pop_front().expect("over its share");
            let last = store.atomically(|tx| {
                let session = tx.get(&key(id))?;
                tx.remove(&key(id))?;
                Ok(session)
            });
            match last {
                Some(session) if session.requests == served => {}
                other => tally.failures.push(format!(
                    "session {id} logged out with {other:?}, {served} requests served"
                )),
            }
            if logged_out.len() < 64 {
                logged_out.push(id);
            } else {
                logged_out[rng.below(64) as usize] = id;
            }
            tally.logouts += 1;
        }

        // Probes, which create nothing.
        for _ in 0..config.probes {
            let (id, expect) = match rng.below(3) {
                0 => (live[rng.below(live.len() as u64) as usize].0, true),
                1 if !logged_out.is_empty() => (
                    logged_out[rng.below(logged_out.len() as u64) as usize],
                    false,
                ),
                _ => (config.logins + rng.below(1 << 30), false), // never given out
            };
            let found = store.get(key(id).as_str()).is_some();
            if found != expect {
                tally.failures.push(format!(
                    "probe of session {id}: found {found}, expected {expect}"
                ));
            }
            tally.probes += 1;
        }
    }
    tally.live = live.into_iter().collect();
    tally
}

/// Takes whole-store snapshots until `done`; returns how many, and the most keys one held.
fn audit(store: &Sessions, done: &AtomicBool) -> (u64, usize) {
    let (mut snapshots, mut most) = (0, 0);
    while !done.load(Relaxed) {
        most = most.max(store.snapshot(|snapshot| snapshot.len()));
        snapshots += 1;
    }
    (snapshots, most)
}

fn main() -> ExitCode {
    let config = match common::options_or_exit(parse_args(std::env::args().skip(1)), help, USAGE) {
        Ok(config) => config,
        Err(exit) => return exit,
    };
    let cores = thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "sessions: {} and an auditor on {}; {} in all, about {} live; {} per login",
        plural(config.threads, "worker"),
        plural(cores, "core"),
        plural(grouped(config.logins), "login"),
        grouped(config.live),
        plural(config.probes, "probe"),
    );

    let store = Sessions::new();
    let done = AtomicBool::new(false);
    let began = Instant::now();
    let (tallies, (snapshots, most)) = thread::scope(|scope| {
        let (store, config, done) = (&store, &config, &done);
        let auditor = scope.spawn(move || audit(store, done));
        let workers: Vec<_> = (0..config.threads)
            .map(|w| scope.spawn(move || work(store, config, w)))
            .collect();
        let tallies: Vec<Tally> = (workers.into_iter())
            .map(|worker| worker.join().expect("a worker panicked"))
            .collect();
        done.store(true, Relaxed);
        (tallies, auditor.join().expect("the auditor panicked"))
    });
    let elapsed = began.elapsed().as_secs_f64();

    let total = |field: fn(&Tally) -> u64| tallies.iter().map(field).sum::<u64>();
    let (logins, logouts) = (total(|t| t.logins), total(|t| t.logouts));
    println!(
        "{:>9}  {} logins, {} logouts, {} requests, {} probes in {elapsed:.2} s ({}/s); \
         {} snapshots by the auditor",
        "work",
        grouped(logins),
        grouped(logouts),
        grouped(total(|t| t.requests)),
        grouped(total(|t| t.probes)),
        grouped((logins + logouts) as f64 / elapsed),
        grouped(snapshots),
    );
    println!("{:>9}  {}", "stats", common::stats_line(&[store.stats()]));

    let mut failures: Vec<String> = tallies.iter().flat_map(|t| t.failures.clone()).collect();
    let expected: BTreeMap<String, u64> = (tallies.iter())
        .flat_map(|t| t.live.iter().map(|(id, served)| (key(*id), *served)))
        .collect();
    let held: BTreeMap<String, u64> = (store.dump().into_iter())
        .map(|(key, _, session)| (key, session.map_or(u64::MAX, |s| s.requests)))
        .collect();
    if held != expected {
        let missing = expected.keys().filter(|k| !held.contains_key(*k)).count();
        let extra = held.keys().filter(|k| !expected.contains_key(*k)).count();
        let miscounted = (expected.iter())
            .filter(|(k, n)| held.get(*k).is_some_and(|m| m != *n))
            .count();
        failures.push(format!(
            "the store holds {} keys for {} live sessions: {missing} missing, {extra} not live, \
             {miscounted} with a wrong request count",
            held.len(),
            expected.len()
        ));
    }
    let bound = config.live.div_ceil(config.threads) * config.threads + config.threads;
    if most as u64 > bound {
        failures.push(format!(
            "a snapshot held {most} keys; at most {bound} sessions can be live"
        ));
    }
    if store.len() != expected.len() {
        failures.push(format!(
            "len() is {} for {} live sessions",
            store.len(),
            expected.len()
        ));
    }
    println!(
        "{:>9}  {} live at the end, as the workers expect: {}; largest snapshot {} keys (bound {bound})",
        "sessions",
        grouped(expected.len()),
        if held == expected { "yes" } else { "NO" },
        grouped(most),
    );

    // Memory: the churned store against one that only ever held the live sessions.
    drop(tallies);
    let with = held_after_reclamation();
    drop(store);
    let without = held_after_reclamation();
    let fresh: Sessions = (expected.iter())
        .map(|(key, served)| {
            let session = Session {
                user: 0,
                requests: *served,
            };
            (key.clone(), session)
        })
        .collect();
    let fresh_bytes = held_after_reclamation() - without;
    drop(fresh);
    let store_bytes = with - without;
    let ratio = store_bytes as f64 / fresh_bytes as f64;
    println!(
        "{:>9}  the store holds {} bytes after {} logins; a store of just the {} live sessions: {} \
         bytes ({ratio:.2}x)",
        "memory",
        grouped(store_bytes),
        grouped(logins),
        grouped(expected.len()),
        grouped(fresh_bytes),
    );
    if ratio > 2.0 {
        failures.push(format!(
            "the churned store holds {ratio:.2}x the memory of a fresh one (bound 2x)"
        ));
    }

    for failure in failures.iter().take(20) {
        println!("FAILED: {failure}");
    }
    if failures.is_empty() {
        println!("invariants hold: yes");
        ExitCode::SUCCESS
    } else {
        println!("invariants hold: NO ({} failures)", failures.len());
        ExitCode::FAILURE
    }
}
