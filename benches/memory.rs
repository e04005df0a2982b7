//! Workload 8, `memory`: bytes per key of a store holding 1M `u64 -> u64` keys (each written
//! once), ours against the mutex map (and, for reference, the other implementations).
//!
//! Not a criterion benchmark: a counting global allocator tracks the live heap. Each
//! implementation is measured in a fresh child process (this binary run again with
//! `--measure NAME`), so one's freed memory cannot hide in another's resident set. Three
//! numbers per implementation:
//!
//! - `requested`: live bytes asked of the allocator (sizes passed to `alloc`), divided by keys
//!   (the target: the store's within 1.5x of the mutex map's);
//! - `allocator`: live bytes the allocator actually handed out (`malloc_usable_size`), per key;
//! - `rss`: growth of the resident set (`/proc/self/statm`), per key.
//!
//! In test mode (`cargo test --benches`, `cargo bench -- --test`) it runs with 16k keys.

#[allow(dead_code)]
mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::c_void;
use std::process::Command;
use std::sync::atomic::{AtomicIsize, Ordering};

use common::{test_mode, Floor, Kv, MutexKv, Ours, RwLockKv, StmCrate};

extern "C" {
    /// glibc: the usable size of a block from `malloc` (what it really took, rounding included).
    fn malloc_usable_size(ptr: *mut c_void) -> usize;
}

/// Counts live bytes: requested, and as handed out by the allocator.
struct Counting;

static REQUESTED: AtomicIsize = AtomicIsize::new(0);
static USABLE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to `System` unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = System.alloc(layout);
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
const NAMES: [&str; 5] = ["mutex", "ours", "rwlock", "stm-crate", "floor"];

/// In the child: measures one implementation, prints `MEASURED name requested usable rss`.
fn child(name: &str, keys: usize) {
    let [requested, usable, rss] = match name {
        "ours" => measure::<Ours>(keys),
        "mutex" => measure::<MutexKv>(keys),
        "rwlock" => measure::<RwLockKv>(keys),
        "stm-crate" => measure::<StmCrate>(keys),
        "floor" => measure::<Floor>(keys),
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
    let filters: Vec<&String> = args[1..]
        .iter()
        .filter(|arg| !arg.starts_with('-'))
        .collect();
    if !filters.is_empty() && !filters.iter().any(|f| "memory".contains(f.as_str())) {
        return;
    }
    let exe = std::env::current_exe().expect("current_exe");
    println!("memory: {keys} u64 -> u64 keys, each written once");
    println!(
        "{:<10} {:>15} {:>15} {:>10} {:>26}",
        "impl", "requested B/key", "allocator B/key", "rss B/key", "vs mutex (req/alloc/rss)"
    );
    let mut mutex: Option<[f64; 3]> = None;
    for name in NAMES {
        let output = Command::new(&exe)
            .args(["--measure", name])
            .args(test_mode().then_some("--test"))
            .args(["--bench"])
            .output()
            .expect("run the measuring child");
        assert!(output.status.success(), "child {name} failed: {output:?}");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = stdout
            .lines()
            .find(|line| line.starts_with("MEASURED"))
            .expect("the child's MEASURED line");
        let fields: Vec<f64> = line
            .split_whitespace()
            .skip(2)
            .map(|field| field.parse().expect("a number"))
            .collect();
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
}
