//! Axon.STM's dining philosophers: each fork is a key whose value names the philosopher holding
//! it. A philosopher takes both forks in one commit, and only if both are free; so two
//! neighbours can never hold the same fork, and nobody holds one fork while waiting for the
//! other (no deadlock). Every philosopher eats a fixed number of meals, then the example ends.
//!
//! ```text
//! cargo run --release --example philosophers -- [philosophers 5] [meals 1000]
//! ```

use std::sync::Arc;
use std::thread;

use stm_store::{Error, Store};

type Forks = Store<usize, usize>;

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>());
    let philosophers = args
        .next()
        .unwrap_or(Ok(5))
        .expect("philosophers: a number");
    let meals = args.next().unwrap_or(Ok(1000)).expect("meals: a number");
    assert!(
        philosophers >= 2,
        "the table needs at least two philosophers"
    );

    let forks = Arc::new(Forks::new());
    let diners: Vec<_> = (0..philosophers)
        .map(|me| {
            let forks = Arc::clone(&forks);
            thread::spawn(move || dine(&forks, me, me, (me + 1) % philosophers, meals))
        })
        .collect();
    let mut retries = 0;
    for (me, diner) in diners.into_iter().enumerate() {
        let tries = diner.join().expect("a philosopher panicked");
        println!("philosopher {me} ate {meals} meals ({tries} tries to pick up forks)");
        retries += tries - meals as u64;
    }
    let held = forks
        .dump()
        .iter()
        .filter(|(_, _, holder)| holder.is_some())
        .count();
    println!("{retries} retries in all; forks still held at the end: {held}");
    assert_eq!(held, 0, "every philosopher puts both forks down");
}

/// Eats `meals` times with forks `left` and `right`; returns how many times it tried to pick
/// them up.
fn dine(forks: &Forks, me: usize, left: usize, right: usize, meals: usize) -> u64 {
    let mut tries = 0;
    for _ in 0..meals {
        loop {
            tries += 1;
            if pick_up(forks, me, left, right) {
                break;
            }
            thread::yield_now(); // let a neighbour finish eating
        }
        // Eating: both forks must name us, in one consistent read.
        let table = forks.using([left, right]).expect("using never fails here");
        assert!(
            table.iter().all(|(_, fork)| fork.value() == Some(&me)),
            "fork stolen"
        );
        put_down(forks, left, right);
    }
    tries
}

/// Takes both forks if both are free: one atomic commit.
fn pick_up(forks: &Forks, me: usize, left: usize, right: usize) -> bool {
    let mut table = forks.using([left, right]).expect("using never fails here");
    if table.iter().any(|(_, fork)| fork.value().is_some()) {
        return false;
    }
    table[&left].set(me);
    table[&right].set(me);
    match table.commit() {
        Ok(()) => true,
        Err(Error::ConcurrentUpdate | Error::BusyRetry) => false,
    }
}

/// Puts both forks down. Only their holder writes them, so this commit cannot conflict.
fn put_down(forks: &Forks, left: usize, right: usize) {
    let mut table = forks.using([left, right]).expect("using never fails here");
    table[&left].clear();
    table[&right].clear();
    table.commit().expect("only the holder writes held forks");
}
