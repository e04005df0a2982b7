//! One workload, a fixed number of operations per thread, for instruction counts under
//! callgrind (`valgrind --tool=callgrind target/release/examples/callgrind_driver transfer`)
//! and for A/B timings of two builds (it prints the nanoseconds per operation): the A/Bs of
//! the statistics counters and of key removal in BENCHMARKS.md. Workloads: commit1, hot_key,
//! transfer, atomically, read_mostly, snapshot. `OPS` (20,000) and `THREADS` (2) in the
//! environment change the operations per thread and the threads.
use std::thread;
use std::time::Instant;
use stm_store::{Error, Store};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).map_or(default, |v| v.parse().expect("a whole number"))
}

fn rng(seed: u64) -> impl FnMut(u64) -> u64 {
    let mut x = seed | 1;
    move |bound| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % bound
    }
}

fn increment(store: &Store<u64, u64>, key: u64) {
    loop {
        let mut v = store.usevar(key).unwrap();
        v.set(v.value().copied().unwrap_or(0) + 1);
        match v.commit() {
            Ok(()) => return,
            Err(Error::ConcurrentUpdate | Error::BusyRetry) => continue,
        }
    }
}

fn transfer(store: &Store<u64, u64>, from: u64, to: u64) {
    loop {
        let mut c = store.using([from, to]).unwrap();
        let (a, b) = (*c[&from].value().unwrap(), *c[&to].value().unwrap());
        c[&from].set(a.wrapping_sub(1));
        c[&to].set(b.wrapping_add(1));
        match c.commit() {
            Ok(()) => return,
            Err(_) => continue,
        }
    }
}

fn main() {
    let work = std::env::args().nth(1).expect("workload");
    let (ops, threads) = (env_or("OPS", 20_000), env_or("THREADS", 2));
    let store: Store<u64, u64> = (0..1024).map(|k| (k, 1000)).collect();
    let began = Instant::now();
    thread::scope(|s| {
        for t in 0..threads {
            let (store, work) = (&store, work.as_str());
            s.spawn(move || {
                let mut r = rng(t + 7);
                for _ in 0..ops {
                    match work {
                        "transfer" => {
                            let (a, b) = (r(64), r(63));
                            transfer(store, a, if b >= a { b + 1 } else { b });
                        }
                        "atomically" => {
                            let (a, b) = (r(64), r(63));
                            let b = if b >= a { b + 1 } else { b };
                            store.atomically(|tx| {
                                let (x, y) = (tx.get(&a)?.unwrap(), tx.get(&b)?.unwrap());
                                tx.set(&a, x.wrapping_sub(1))?;
                                tx.set(&b, y.wrapping_add(1))
                            });
                        }
                        "hot_key" => increment(store, 0),
                        "read_mostly" => {
                            let key = r(1024);
                            if r(100) < 5 {
                                increment(store, key);
                            } else {
                                std::hint::black_box(store.usevar(key).unwrap().value().copied());
                            }
                        }
                        "snapshot" => {
                            if t == 0 {
                                let (a, b) = (r(8), r(7));
                                transfer(store, a, if b >= a { b + 1 } else { b });
                            } else {
                                std::hint::black_box(store.using(0..8).unwrap().len());
                            }
                        }
                        "commit1" => {
                            let mut v = store.usevar(5 + t).unwrap();
                            v.set(1);
                            v.commit().unwrap();
                        }
                        _ => panic!("unknown workload"),
                    }
                }
            });
        }
    });
    let per_op = began.elapsed().as_nanos() as f64 / (ops * threads) as f64;
    println!("{per_op:.1}");
}
