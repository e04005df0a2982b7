//! Single-thread costs.
//!
//! 5. `commit_k`: an atomic commit of k = 1, 2, 4, 8 keys.
//!    - `ours-commit`: the commit alone: one `Collection` kept across iterations (a committed
//!      handle is clean and can be set and committed again), every key set, then `commit`;
//!    - `ours-rmw`, `mutex`, `mutex-one`, `rwlock`, `stm-crate`, `floor`: the whole
//!      read-modify-write ([`Kv::write_all`]: read the k keys, add 1 to each, commit; `floor`
//!      is the lock-free multi-word CAS, 2k + 1 CASes);
//!    - `arcswap`: k bare `ArcSwap` compare-and-swaps (load + allocate + CAS per key, not
//!      atomic across keys).
//! 6. `store_size`: single-key read and single-key read-modify-write on a key drawn uniformly
//!    from a store of 1k, 64k and 1M keys (`ours`, both mutex maps, the floor); `*-ws1k` draws
//!    from 1024 keys of the same store instead (the same code with a cache-resident working
//!    set: what is left of the store-size effect once cache misses are taken out).
//!
//! The 1M-key stores are built lazily, and in test mode (`cargo test --benches`,
//! `cargo bench -- --test`) every store is at most 16k keys, so a test run stays fast.

#[allow(dead_code)]
mod common;

use std::cell::OnceCell;
use std::hint::black_box;
use std::time::Duration;

use common::{
    test_mode, ArcSwapCell, Backoff, Floor, Kv, MutexKv, MutexOne, Ours, Rng, RwLockKv, StmCrate,
};
use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};

const KEYS: u64 = 1024;
/// The keys of a k-key commit: spread over the store.
const COMMIT_KEYS: [u64; 8] = [3, 131, 259, 387, 515, 643, 771, 899];

fn group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(15)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(1));
    group
}

// 5. k-key commit ---------------------------------------------------------------------------

fn rmw_k<K: Kv>(group: &mut BenchmarkGroup<'_, WallTime>, label: &str, k: usize) {
    let kv = K::new(KEYS as usize, 0);
    let keys = &COMMIT_KEYS[..k];
    group.bench_function(BenchmarkId::new(label, k), |b| {
        b.iter(|| kv.write_all(black_box(keys), Backoff::None))
    });
}

fn commit_k(c: &mut Criterion) {
    let mut group = group(c, "commit_k");
    for k in [1, 2, 4, 8] {
        let store = Ours::new(KEYS as usize, 0).0;
        let mut values = store.using(COMMIT_KEYS[..k].iter().copied()).unwrap();
        group.bench_function(BenchmarkId::new("ours-commit", k), |b| {
            b.iter(|| {
                for value in values.values_mut() {
                    let next = value.value().copied().unwrap_or(0) + 1;
                    value.set(next);
                }
                values.commit().expect("nobody else commits")
            })
        });
        rmw_k::<Ours>(&mut group, "ours-rmw", k);
        rmw_k::<Floor>(&mut group, "floor", k);
        rmw_k::<ArcSwapCell>(&mut group, "arcswap", k);
        rmw_k::<MutexKv>(&mut group, "mutex", k);
        rmw_k::<MutexOne>(&mut group, "mutex-one", k);
        rmw_k::<RwLockKv>(&mut group, "rwlock", k);
        rmw_k::<StmCrate>(&mut group, "stm-crate", k);
    }
    group.finish();
}

// 6. store size -----------------------------------------------------------------------------

/// The sizes measured, by label; in test mode the stores are at most 16k keys.
fn sizes() -> [(&'static str, usize); 3] {
    let cap = if test_mode() { 1 << 14 } else { usize::MAX };
    [("1k", 1 << 10), ("64k", 1 << 16), ("1M", 1 << 20)].map(|(label, n)| (label, n.min(cap)))
}

fn size_benches<K: Kv>(group: &mut BenchmarkGroup<'_, WallTime>, label: &str, keys: u64) {
    let kv: OnceCell<K> = OnceCell::new();
    let mut sets = vec![("", keys)];
    if label == "ours" {
        sets.push(("-ws1k", KEYS.min(keys)));
    }
    for (suffix, range) in sets {
        let mut rng = Rng::new(7);
        group.bench_function(format!("{label}-read{suffix}"), |b| {
            let kv = kv.get_or_init(|| K::new(keys as usize, 0));
            b.iter(|| kv.read(rng.below(range)))
        });
        group.bench_function(format!("{label}-rmw{suffix}"), |b| {
            let kv = kv.get_or_init(|| K::new(keys as usize, 0));
            b.iter(|| kv.incr(rng.below(range), Backoff::None))
        });
    }
}

fn store_size(c: &mut Criterion) {
    for (label, keys) in sizes() {
        let mut group = group(c, &format!("store_size/{label}"));
        size_benches::<Ours>(&mut group, "ours", keys as u64);
        size_benches::<MutexKv>(&mut group, "mutex", keys as u64);
        size_benches::<MutexOne>(&mut group, "mutex-one", keys as u64);
        size_benches::<Floor>(&mut group, "floor", keys as u64);
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = commit_k, store_size
}
criterion_main!(benches);
