//! Workload 8, `memory`: bytes per key of a store holding 1M `u64 -> u64` keys (each written
//! once), ours against the mutex map (and, for reference, the other implementations); and
//! allocations per commit in the steady state.
//!
//! Not a criterion benchmark: a counting global allocator tracks the live heap and counts
//! allocations. Each implementation is measured in a fresh child process (this binary run
//! again with `--measure NAME`, or `--allocs NAME THREADS`), so one's freed memory cannot hide
//! in another's resident set, and nothing else allocates meanwhile. Three numbers per
//! implementation for the bytes:
//!
//! - `requested`: live bytes asked of the allocator (sizes passed to `alloc`), divided by keys
//!   (the target: the store's within 1.5x of the mutex map's);
//! - `allocator`: live bytes the allocator actually handed out (`malloc_usable_size`), per key;
//! - `rss`: growth of the resident set (`/proc/self/statm`), per key.
//!
//!
//! Allocations per commit: 2-key transfers over 64 accounts on 1 and 2 threads, after 10^4
//! transfers per thread of warm-up, counting every allocation (and reallocation) the process
//! makes during the next 10^5 transfers (split between the threads), failed attempts included,
//! divided by the transfers. For the store through `using` + `set` + `commit` (`ours`) and
//! through `atomically`, and for both mutex maps and the floor as references.
//!
//! In test mode (`cargo test --benches`, `cargo bench -- --test`) it runs with 16k keys and
//! 10^4 measured transfers.

#[allow(dead_code)]
mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::c_void;
use std::process::Command;
use std::sync::atomic::{AtomicIsize, AtomicU64, Ordering};
use std::sync::Barrier;
use std::thread;

use common::{
    rng, test_mode, ArcSwapCell, Atomically, Backoff, Floor, Kv, MutexKv, MutexOne, Ours, RwLockKv,
    StmCrate, ACCOUNTS, BALANCE,
};

extern "C" {
    /// glibc: the usable size of a block from `malloc` (what it really took, rounding included).
    fn malloc_usable_size(ptr: *mut c_void) -> usize;
}

/// Counts live bytes (requested, and as handed out by the allocator) and allocations.
struct Counting;

static REQUESTED: AtomicIsize = AtomicIsize::new(0);
static USABLE: AtomicIsize = AtomicIsize::new(0);
/// Calls of `alloc` and `realloc` (`alloc_zeroed` goes through `alloc`).
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded to `System` unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = System.alloc(layout);
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        if !ptr.is_null() {
            REQUESTED.fetch_add(layout.size() as isize, Ordering::Relaxed);
            USABLE.fetch_add(malloc_usable_size(ptr.cast()) as isize, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        REQUESTED.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        USABLE.fetch_sub(malloc_usable_size(ptr.cast()) as isize, Ordering::Relaxed);
        System.dealloc(ptr, layout);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let before = malloc_usable_size(ptr.cast()) as isize;
        let new = System.realloc(ptr, layout, new_size);
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        if !new.is_null() {
            REQUESTED.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
            USABLE.fetch_add(
                malloc_usable_size(new.cast()) as isize - before,
                Ordering::Relaxed,
            );
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Resident set size in bytes.
fn rss() -> isize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: isize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .expect("statm resident field");
    pages * 4096
}

/// Lets crossbeam-epoch free what was retired while the store was built (a bounded pin/flush
/// loop, as the memory tests do), so that only live data is counted. Writing each key once
/// replaces no record, so nothing is expected; the loop makes sure.
fn flush_epoch() {
    for _ in 0..128 {
        crossbeam_epoch::pin().flush();
    }
}

/// What building `keys` keys of `K` costs: (requested, usable, rss) bytes.
fn measure<K: Kv>(keys: usize) -> [isize; 3] {
    let before = [
        REQUESTED.load(Ordering::Relaxed),
        USABLE.load(Ordering::Relaxed),
        rss(),
    ];
    let kv = K::new(keys, 1);
    flush_epoch();
    let after = [
        REQUESTED.load(Ordering::Relaxed),
        USABLE.load(Ordering::Relaxed),
        rss(),
    ];
    assert_eq!(kv.read(keys as u64 - 1), 1);
    std::hint::black_box(&kv);
    [0, 1, 2].map(|i| after[i] - before[i])
}

/// The mutex map first: the others are printed relative to it.
const NAMES: [&str; 5] = ["mutex", "ours", "rwlock", "stm-crate", "arcswap"];

/// The implementations whose allocations per commit are counted, and the thread counts.
const ALLOC_NAMES: [&str; 5] = ["ours", "atomically", "mutex", "mutex-one", "floor"];
const ALLOC_THREADS: [usize; 2] = [1, 2];
/// Warm-up transfers per thread, before counting.
const WARM_UP: u64 = 10_000;

/// Allocations during `transfers` 2-key transfers of `K` on `threads` threads (after
/// [`WARM_UP`] each), and the transfers made.
fn count_allocations<K: Kv>(threads: usize, transfers: u64) -> (u64, u64) {
    let kv = K::new(ACCOUNTS as usize, BALANCE);
    let per_thread = transfers / threads as u64;
    // Warmed up, counted from here, done: the count is read while every thread waits.
    let [warm, go, done] = [(); 3].map(|_| Barrier::new(threads + 1));
    let (before, after) = thread::scope(|scope| {
        for index in 0..threads {
            let (kv, warm, go, done) = (&kv, &warm, &go, &done);
            scope.spawn(move || {
                let mut rng = rng(index);
                let mut transfer = || {
                    let from = rng.below(ACCOUNTS);
                    let to = (from + 1 + rng.below(ACCOUNTS - 1)) % ACCOUNTS;
                    kv.transfer(from, to, 1, Backoff::Exponential);
                };
                (0..WARM_UP).for_each(|_| transfer());
                warm.wait();
                go.wait();
                (0..per_thread).for_each(|_| transfer());
                done.wait();
            });
        }
        warm.wait();
        let before = ALLOCATIONS.load(Ordering::SeqCst);
        go.wait();
        done.wait();
        (before, ALLOCATIONS.load(Ordering::SeqCst))
    });
    let mut values = Vec::with_capacity(ACCOUNTS as usize);
    kv.snapshot(&(0..ACCOUNTS).collect::<Vec<_>>(), &mut values);
    let total = values.iter().fold(0u64, |sum, v| sum.wrapping_add(*v));
    assert_eq!(
        total,
        ACCOUNTS * BALANCE,
        "{}: transfers must keep the total",
        K::NAME
    );
    (after - before, per_thread * threads as u64)
}

/// In the child: counts one implementation's allocations, prints `COUNTED allocations
/// transfers`.
fn allocs_child(name: &str, threads: usize) {
    let transfers = if test_mode() { 10_000 } else { 100_000 };
    let (allocations, transfers) = match name {
        "ours" => count_allocations::<Ours>(threads, transfers),
        "atomically" => count_allocations::<Atomically>(threads, transfers),
        "mutex" => count_allocations::<MutexKv>(threads, transfers),
        "mutex-one" => count_allocations::<MutexOne>(threads, transfers),
        "floor" => count_allocations::<Floor>(threads, transfers),
        other => panic!("unknown implementation {other}"),
    };
    println!("COUNTED {allocations} {transfers}");
}

/// Runs this binary again with `args` (and the test-mode flag if set); its stdout line that
/// starts with `tag`, split into numbers after the tag.
fn child_line(args: &[&str], tag: &str) -> Vec<f64> {
    let exe = std::env::current_exe().expect("current_exe");
    let output = Command::new(&exe)
        .args(args)
        .args(test_mode().then_some("--test"))
        .args(["--bench"])
        .output()
        .expect("run the measuring child");
    assert!(output.status.success(), "child {args:?} failed: {output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find(|line| line.starts_with(tag))
        .unwrap_or_else(|| panic!("the child's {tag} line"));
    line.split_whitespace()
        .skip(1)
        .filter_map(|field| field.parse().ok())
        .collect()
}

/// In the child: measures one implementation, prints `MEASURED name requested usable rss`.
fn child(name: &str, keys: usize) {
    let [requested, usable, rss] = match name {
        "ours" => measure::<Ours>(keys),
        "mutex" => measure::<MutexKv>(keys),
        "rwlock" => measure::<RwLockKv>(keys),
        "stm-crate" => measure::<StmCrate>(keys),
        "arcswap" => measure::<ArcSwapCell>(keys),
        other => panic!("unknown implementation {other}"),
    };
    println!("MEASURED {name} {requested} {usable} {rss}");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let keys: usize = if test_mode() { 1 << 14 } else { 1 << 20 };
    if let Some(at) = args.iter().position(|arg| arg == "--measure") {
        return child(&args[at + 1], keys);
    }
    if let Some(at) = args.iter().position(|arg| arg == "--allocs") {
        let threads = args[at + 2].parse().expect("a thread count");
        return allocs_child(&args[at + 1], threads);
    }
    let filters: Vec<&String> = args[1..]
        .iter()
        .filter(|arg| !arg.starts_with('-'))
        .collect();
    if !filters.is_empty() && !filters.iter().any(|f| "memory".contains(f.as_str())) {
        return;
    }
    println!("memory: {keys} u64 -> u64 keys, each written once");
    println!(
        "{:<10} {:>15} {:>15} {:>10} {:>26}",
        "impl", "requested B/key", "allocator B/key", "rss B/key", "vs mutex (req/alloc/rss)"
    );
    let mut mutex: Option<[f64; 3]> = None;
    for name in NAMES {
        let fields = child_line(&["--measure", name], "MEASURED");
        let per_key: Vec<f64> = fields.iter().map(|bytes| bytes / keys as f64).collect();
        let mutex = *mutex.get_or_insert([per_key[0], per_key[1], per_key[2]]);
        println!(
            "{name:<10} {:>15.1} {:>15.1} {:>10.1} {:>7.2}x {:>7.2}x {:>7.2}x",
            per_key[0],
            per_key[1],
            per_key[2],
            per_key[0] / mutex[0],
            per_key[1] / mutex[1],
            per_key[2] / mutex[2],
        );
        eprintln!(
            "MEMORY {name} keys={keys} requested_per_key={:.1} allocator_per_key={:.1} rss_per_key={:.1}",
            per_key[0], per_key[1], per_key[2]
        );
    }
    println!("\nallocations per 2-key transfer, after {WARM_UP} transfers per thread of warm-up");
    println!(
        "{:<10} {:>7} {:>10} {:>12} {:>10}",
        "impl", "threads", "transfers", "allocations", "per commit"
    );
    for name in ALLOC_NAMES {
        for threads in ALLOC_THREADS {
            let fields = child_line(&["--allocs", name, &threads.to_string()], "COUNTED");
            let (allocations, transfers) = (fields[0], fields[1]);
            let per_commit = allocations / transfers;
            println!(
                "{name:<10} {threads:>7} {transfers:>10} {allocations:>12} {per_commit:>10.3}"
            );
            eprintln!(
                "ALLOCS {name}/{threads} transfers={transfers} allocations={allocations} \
                 per_commit={per_commit:.4}"
            );
        }
    }
}
