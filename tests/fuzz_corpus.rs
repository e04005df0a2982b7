//! Replays the checked-in fuzz corpus (`fuzz/corpus/{ops,interleave}/*`) and the kept
//! regression inputs (`fuzz/regressions/*`) through both differential harnesses of
//! `fuzz/harness/`, so a plain `cargo test` catches regressions without nightly or
//! cargo-fuzz. See `fuzz/README.md`.

#[path = "../fuzz/harness/mod.rs"]
mod harness;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files of `dir` (sorted). Panics if `required` and the directory is missing or empty: a
/// replay that checks nothing must not pass.
fn inputs(dir: &Path, required: bool) -> Vec<PathBuf> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("cannot read the corpus directory {}: {e}", dir.display()),
    };
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("readable directory entry").path())
        .filter(|path| path.is_file())
        .filter(|path| {
            // Dot files (`.gitkeep`, editor leftovers) are not inputs.
            !path
                .file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with('.'))
        })
        .collect();
    files.sort();
    assert!(
        !required || !files.is_empty(),
        "the corpus directory {} has no inputs: the replay would check nothing",
        dir.display()
    );
    files
}

/// Runs `run` on `data`; a divergence (panic) names the input file and the harness.
fn run_one<T>(path: &Path, name: &str, run: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(run)) {
        Ok(result) => result,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            panic!(
                "input {} failed in the {name} harness:\n{msg}",
                path.display()
            );
        }
    }
}

/// Runs every file through both harnesses. Returns what the runs did (both harnesses'
/// transactions and removals; the paused commits of `interleave`).
fn replay(files: &[PathBuf]) -> harness::Stats {
    let mut stats = harness::Stats::default();
    for path in files {
        let data =
            std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        stats += run_one(path, "ops", || harness::run_ops_counting(&data));
        stats += run_one(path, "interleave", || harness::run_interleave(&data));
    }
    stats
}

/// The corpus must keep reaching every way a transaction ends, and reruns; removals, with
/// keys created again above the floor; and (with `test-hooks`) snapshots that claim their keys.
fn assert_transactions_reached(stats: &harness::Stats) {
    assert!(
        stats.tx_ok > 0 && stats.tx_failed > 0 && stats.tx_timed_out > 0 && stats.tx_reruns > 0,
        "{stats:?}"
    );
    assert!(stats.removals > 0 && stats.recreations > 0, "{stats:?}");
    if harness::CLAIM_SUPPORTED {
        assert!(stats.snapshot_claims > 0, "{stats:?}");
    }
}

#[test]
fn ops_corpus_replays() {
    let stats = replay(&inputs(&fuzz_dir().join("corpus/ops"), true));
    println!("{stats:?}");
    assert_transactions_reached(&stats);
}

#[test]
fn interleave_corpus_replays() {
    let stats = replay(&inputs(&fuzz_dir().join("corpus/interleave"), true));
    println!("{stats:?}");
    // The corpus must keep reaching the interesting paths: commits that fail, and (with
    // `test-hooks`) paused commits resumed both ways, dropped, and seen by other clients.
    assert!(
        stats.commits_ok > 0 && stats.commits_failed > 0,
        "{stats:?}"
    );
    if harness::PAUSE_SUPPORTED {
        assert!(
            stats.resumed_ok > 0 && stats.resumed_failed > 0,
            "{stats:?}"
        );
        assert!(stats.abandoned > 0 && stats.max_worlds > 1, "{stats:?}");
        // Removals that may have landed inside a stopped commit, looked up before a key is
        // created (`Interleave::unlink_landed`).
        assert!(stats.looked_up_landed > 0, "{stats:?}");
    }
    assert_transactions_reached(&stats);
}

#[test]
fn regressions_replay() {
    replay(&inputs(&fuzz_dir().join("regressions"), false));
}

/// A hand-written program, so the decoder's format is pinned down: two handles on one key, the
/// second commit is stale and must be refused (`ConcurrentUpdate`) in both harnesses.
#[test]
fn harness_decodes_and_runs_a_known_program() {
    // ops: usevar(slot 0, key 1); usevar(slot 1, key 1); set(slot 0, 7); commit(slot 0);
    // set(slot 1, 9); commit(slot 1) -> ConcurrentUpdate; dump.
    let program = [0, 0, 1, 0, 1, 1, 4, 0, 0, 7, 9, 0, 4, 1, 0, 9, 9, 1, 12];
    let ops = harness::decode_ops(&program);
    assert_eq!(ops.len(), 7, "{ops:?}");
    harness::run_ops(&program);
    harness::run_interleave(&program);
}
