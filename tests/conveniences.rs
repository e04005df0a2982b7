//! Conveniences and edges: contract points 27–33, one test (or a few) per point, named after it
//! (as `tests/contract.rs` names its tests). Borrowed keys in transactions; `Store::insert`,
//! `remove`, `update`, `modify` and their `Tx` forms; nesting refused on any store; the highest
//! version; `Debug`.
//!
//! Every check compares what the store reports with what the operations imply: exact values
//! and versions, and under threads, invariants that a lost or doubled update breaks (every
//! value inserted comes back exactly once; every increment returns a distinct count). Conflicts
//! are forced from inside the closure (a handle commits the key being changed), never by
//! sleeping. "Nothing written" is checked as no value and no commit counted, so that it holds
//! whether or not a transaction's read of a missing key leaves the key behind.

mod common;

use std::cell::RefCell;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Barrier, Once};
use std::task::{Context, Poll, Wake, Waker};
use std::thread;

use common::SCALE;
use stm_store::{Store, TxError};

type S = Store<&'static str, i64>;

/// The value of `key` (`None`: no such key, or no value).
fn value<K, Q>(store: &Store<K, i64>, key: &Q) -> Option<i64>
where
    K: std::borrow::Borrow<Q> + Ord + std::hash::Hash + Clone + Send + Sync + 'static,
    Q: std::hash::Hash + Ord + ?Sized,
{
    store.get(key).and_then(|(_, value)| value)
}

/// The message of a caught panic.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

thread_local! {
    /// Where the last panic on this thread was raised (file, line), as the panic hook saw it.
    static PANICKED_AT: RefCell<Option<(String, u32)>> = const { RefCell::new(None) };
}

/// Runs `f`, which must panic: its message, and the file and line the panic points at.
fn panics(f: impl FnOnce()) -> (String, (String, u32)) {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if let Some(at) = info.location() {
                let at = (at.file().to_string(), at.line());
                PANICKED_AT.with(|slot| *slot.borrow_mut() = Some(at));
            }
            previous(info);
        }));
    });
    PANICKED_AT.with(|slot| slot.borrow_mut().take());
    let payload = catch_unwind(AssertUnwindSafe(f)).expect_err("it did not panic");
    let at = PANICKED_AT.with(|slot| slot.borrow_mut().take());
    (
        panic_message(&*payload),
        at.expect("the hook saw the panic"),
    )
}

/// A minimal executor: polls `future` on this thread, parking it until a wake-up.
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let mut future = pin!(future);
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        thread::park(); // a spurious wake-up only polls again
    }
}

// ---------------------------------------------------------------------------------------------
// 27. Borrowed keys in transactions
// ---------------------------------------------------------------------------------------------

#[test]
fn p27_transactions_take_borrowed_keys() {
    // `String` keys, by `&str` and by `&String`: one key, whichever form touches it first.
    let store: Store<String, i64> = Store::new();
    let owned = "acct-1".to_string();
    store.atomically(|tx| {
        tx.set("acct-0", 10)?;
        tx.set(&owned, 20)?;
        // Already touched: found again by either form, seeing this transaction's writes.
        assert_eq!(tx.get(&"acct-0".to_string())?, Some(10));
        assert_eq!(tx.get("acct-1")?, Some(20));
        assert!(tx.exists("acct-0")?);
        assert_eq!(tx.version("acct-1")?, 0);
        Ok(())
    });
    assert_eq!(store.dump().len(), 2, "one key per name, whichever form");
    assert_eq!(store.get("acct-0"), Some((1, Some(10))));
    assert_eq!(store.get("acct-1"), Some((1, Some(20))));
    let moved = store.atomically(|tx| {
        let from = tx.modify("acct-0", |n| n - 5)?;
        let to = tx.update("acct-1", |n| n.copied().unwrap_or(0) + 5)?;
        tx.clear("acct-0")?;
        Ok((from, to))
    });
    assert_eq!(moved, (Some(5), 25));
    assert_eq!(store.get("acct-0"), Some((2, None)));
    store.atomically(|tx| tx.remove("acct-0"));
    assert_eq!(store.get("acct-0"), None);

    // `Arc<str>` keys by `&str`; integer keys by `&n`; `&'static str` keys by `&"k"`.
    let shared: Store<Arc<str>, i64> = Store::new();
    shared.atomically(|tx| tx.set("k", 1));
    assert_eq!(shared.atomically(|tx| tx.get("k")), Some(1));
    let numbers: Store<u64, i64> = Store::new();
    numbers.atomically(|tx| tx.set(&5, 1));
    assert_eq!(
        numbers.atomically(|tx| tx.update(&5, |n| n.unwrap() + 1)),
        2
    );
    let names: S = Store::new();
    names.atomically(|tx| tx.set(&"k", 1));
    let key: &'static str = "k";
    assert_eq!(names.atomically(|tx| tx.get(&key)), Some(1));
}

/// A key type that counts how often it is copied or built from its owned borrowed form.
#[derive(PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
struct Name(String);

static NAMES_MADE: AtomicUsize = AtomicUsize::new(0);

impl Clone for Name {
    fn clone(&self) -> Self {
        NAMES_MADE.fetch_add(1, SeqCst);
        Name(self.0.clone())
    }
}

impl From<String> for Name {
    fn from(name: String) -> Self {
        NAMES_MADE.fetch_add(1, SeqCst);
        Name(name)
    }
}

impl std::borrow::Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0 // hashes and compares as `str`: `Name` derives both from its one `String`
    }
}

/// A transaction that touches existing keys by their borrowed form, again and again, makes no
/// copy of any key: neither to look a key up in the store, nor to find one it already touched.
#[test]
fn p27_touching_existing_keys_copies_no_key() {
    let store: Store<Name, i64> = Store::new();
    store.insert(Name("alice".into()), 100);
    store.insert(Name("bob".into()), 0);
    let made = NAMES_MADE.load(SeqCst);
    store.atomically(|tx| {
        for _ in 0..3 {
            let alice = tx.get("alice")?.unwrap();
            let bob = tx.get("bob")?.unwrap();
            tx.set("alice", alice - 1)?;
            tx.set("bob", bob + 1)?;
        }
        Ok(())
    });
    assert_eq!(NAMES_MADE.load(SeqCst), made, "a key was copied");
    assert_eq!(value(&store, "alice"), Some(97));
    assert_eq!(value(&store, "bob"), Some(3));
}

// ---------------------------------------------------------------------------------------------
// 28. insert and remove
// ---------------------------------------------------------------------------------------------

#[test]
fn p28_insert_returns_the_value_it_replaced() {
    let store: Store<String, i64> = Store::new();
    assert_eq!(store.insert("a".into(), 1), None, "a new key");
    assert_eq!(store.insert("a".into(), 2), Some(1));
    assert_eq!(store.get("a"), Some((2, Some(2))));
    store.atomically(|tx| tx.clear("a"));
    assert_eq!(store.insert("a".into(), 3), None, "a key with no value");
    assert_eq!(store.get("a"), Some((4, Some(3))));
}

#[test]
fn p28_remove_returns_the_value_and_leaves_absent_keys_alone() {
    let store: Store<String, i64> = [("a".to_string(), 1)].into_iter().collect();
    drop(store.usevar("empty".to_string()).unwrap()); // a key with no value
    assert_eq!(store.remove("a"), Some(1));
    assert_eq!(store.get("a"), None);
    assert_eq!(store.remove("a"), None, "already removed");
    assert_eq!(
        store.remove("empty"),
        None,
        "a key with no value is removed too"
    );
    assert_eq!(store.get("empty"), None);
    let commits = store.stats().commits;
    assert_eq!(store.remove("never"), None);
    assert_eq!(store.get("never"), None, "nothing created");
    assert_eq!(store.stats().commits, commits, "nothing written");
    assert!(store.is_empty());
    // A removal, as `Value::remove`'s: the key created again starts one above the highest
    // removed version ("a"'s removal, version 2), and the insert writes the next one.
    assert_eq!(store.insert("a".into(), 5), None);
    assert_eq!(store.get("a"), Some((4, Some(5))));
}

/// Four threads insert distinct values into one key and remove it, at random. Every value
/// inserted comes back exactly once: replaced (returned by an `insert`), removed (returned by
/// a `remove`), or left in the store at the end. A value returned twice, or never, is a write
/// that was not atomic with the read of what it replaced.
#[test]
fn p28_insert_and_remove_under_threads_return_each_value_exactly_once() {
    const THREADS: i64 = 4;
    let ops = 2_000 * SCALE as i64;
    let store: S = Store::new();
    let barrier = Barrier::new(THREADS as usize);
    let mut returned: Vec<i64> = thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (store, barrier) = (&store, &barrier);
                s.spawn(move || {
                    let mut rng = common::XorShift::new(t as u64 + 1);
                    let mut back = Vec::new();
                    barrier.wait();
                    for i in 0..ops {
                        let answer = match rng.below(3) {
                            0 => store.remove("k"),
                            _ => store.insert("k", t * ops + i),
                        };
                        back.extend(answer);
                    }
                    back
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    returned.extend(value(&store, "k"));
    returned.sort_unstable();
    let mut inserted: Vec<i64> = Vec::new();
    for t in 0..THREADS {
        let mut rng = common::XorShift::new(t as u64 + 1);
        inserted.extend((0..ops).filter(|_| rng.below(3) != 0).map(|i| t * ops + i));
    }
    inserted.sort_unstable();
    assert_eq!(returned.len(), inserted.len(), "values lost or doubled");
    assert!(returned == inserted, "a value came back twice, or never");
    assert!(store.len() <= 1, "removals of an absent key created it");
}

// ---------------------------------------------------------------------------------------------
// 29. update and modify
// ---------------------------------------------------------------------------------------------

#[test]
fn p29_update_creates_and_modify_only_changes_a_value() {
    let store: Store<String, i64> = Store::new();
    assert_eq!(store.modify("n", |n| n + 1), None);
    assert_eq!(store.get("n"), None, "modify created the key");
    assert_eq!(
        store.update("n".into(), |n| n.copied().unwrap_or(10) + 1),
        11
    );
    assert_eq!(store.get("n"), Some((1, Some(11))));
    assert_eq!(store.modify("n", |n| n * 2), Some(22));
    assert_eq!(store.get("n"), Some((2, Some(22))));
    // A key with no value: `modify` writes nothing; `update` sees `None`.
    drop(store.usevar("empty".to_string()).unwrap());
    let commits = store.stats().commits;
    assert_eq!(store.modify("empty", |n| n + 1), None);
    assert_eq!(store.get("empty"), Some((0, None)));
    assert_eq!(store.stats().commits, commits, "modify wrote");
    assert_eq!(
        store.update("empty".into(), |n| n.map_or(-1, |n| n + 1)),
        -1
    );
}

/// If another commit lands on the key between the read and the write, `f` runs again on the
/// new value: forced here by `f` itself, which commits the key through a handle on its first run.
#[test]
fn p29_a_conflict_runs_f_again_on_the_new_value() {
    let store: S = [("n", 1)].into_iter().collect();
    let mut runs = Vec::new();
    let wrote = store.update("n", |n| {
        let n = *n.unwrap();
        if runs.is_empty() {
            let mut theirs = store.usevar("n").unwrap();
            theirs.set(100);
            theirs.commit().unwrap();
        }
        runs.push(n);
        n + 1
    });
    assert_eq!((wrote, runs), (101, vec![1, 100]));
    assert_eq!(store.get("n"), Some((3, Some(101))));

    let mut runs = Vec::new();
    let wrote = store.modify("n", |&n| {
        if runs.is_empty() {
            let mut theirs = store.usevar("n").unwrap();
            theirs.set(200);
            theirs.commit().unwrap();
        }
        runs.push(n);
        n + 1
    });
    assert_eq!((wrote, runs), (Some(201), vec![101, 200]));
    assert_eq!(store.get("n"), Some((5, Some(201))));
}

/// Four threads increment one counter, half through `update`, half through `modify`: the final
/// count is the number of increments, and every call returned a distinct count (each is the
/// value its own commit wrote). A lost update would leave the count short or return a count
/// twice.
#[test]
fn p29_no_update_is_lost_under_threads() {
    const THREADS: usize = 4;
    let per_thread = 2_000 * SCALE as i64;
    let store: S = [("count", 0)].into_iter().collect();
    let barrier = Barrier::new(THREADS);
    let mut counts: Vec<i64> = thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (store, barrier) = (&store, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    (0..per_thread)
                        .map(|_| match t % 2 {
                            0 => store.update("count", |n| n.unwrap() + 1),
                            _ => store.modify("count", |n| n + 1).unwrap(),
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    let total = per_thread * THREADS as i64;
    assert_eq!(value(&store, "count"), Some(total));
    counts.sort_unstable();
    assert!(
        counts == (1..=total).collect::<Vec<_>>(),
        "a count was returned twice"
    );
}

#[test]
fn p29_a_panic_in_f_writes_nothing() {
    let store: S = [("n", 1)].into_iter().collect();
    let caught = catch_unwind(AssertUnwindSafe(|| store.update("n", |_| panic!("no"))));
    assert!(caught.is_err());
    let caught = catch_unwind(AssertUnwindSafe(|| store.modify("n", |_| panic!("no"))));
    assert!(caught.is_err());
    assert_eq!(store.get("n"), Some((1, Some(1))));
    assert_eq!(
        store.update("n", |n| n.unwrap() + 1),
        2,
        "the key is not left claimed"
    );
}

// ---------------------------------------------------------------------------------------------
// 30. update and modify in a transaction
// ---------------------------------------------------------------------------------------------

#[test]
fn p30_tx_update_and_modify_read_and_write_in_the_transaction() {
    let store: S = [("a", 1)].into_iter().collect();
    let seen = store.atomically(|tx| {
        tx.set(&"a", 10)?;
        let a = tx.update(&"a", |a| a.unwrap() + 1)?; // sees this transaction's write
        let b = tx.update(&"b", |b| b.map_or(0, |b| b + 1))?; // a new key: `None`
        let c = tx.modify(&"c", |c| c + 1)?; // no value: nothing written
        let b2 = tx.modify(&"b", |b| b + 5)?;
        Ok((a, b, c, b2, tx.get(&"b")?))
    });
    assert_eq!(seen, (11, 0, None, Some(5), Some(5)));
    assert_eq!(store.get("a"), Some((2, Some(11))));
    assert_eq!(store.get("b"), Some((1, Some(5))));
    assert_eq!(value(&store, "c"), None);
}

/// The key `modify` read is validated at the commit: a commit of it in between (forced from
/// inside the first attempt) makes the transaction run again, on the new value.
#[test]
fn p30_tx_modify_reads_are_validated() {
    let store: S = [("a", 1)].into_iter().collect();
    let (wrote, attempts) = store.atomically(|tx| {
        let wrote = tx.modify(&"a", |a| a * 10)?;
        if tx.attempt() == 1 {
            let mut theirs = store.usevar("a").unwrap();
            theirs.set(7);
            theirs.commit().unwrap();
        }
        Ok((wrote, tx.attempt()))
    });
    assert_eq!((wrote, attempts), (Some(70), 2));
    assert_eq!(store.get("a"), Some((3, Some(70))));
}

/// Inside `or_else`, an `update` of a first branch that retries is undone, as a `set` is.
#[test]
fn p30_tx_update_is_undone_by_or_else() {
    let store: S = [("a", 1)].into_iter().collect();
    let took = store.atomically(|tx| {
        tx.or_else(
            |tx| {
                tx.update(&"a", |a| a.unwrap() + 100)?;
                tx.retry()
            },
            |tx| tx.get(&"a"),
        )
    });
    assert_eq!(took, Some(1));
    assert_eq!(store.get("a"), Some((1, Some(1))));
}

// ---------------------------------------------------------------------------------------------
// 31. Transactions do not nest
// ---------------------------------------------------------------------------------------------

const SAME: &str = "inside the closure of a transaction on the same store";
const OTHER: &str = "inside the closure of a transaction on another store";

/// Nothing written to either store, and no commit counted.
fn assert_untouched(a: &S, b: &S) {
    for (name, store) in [("a", a), ("b", b)] {
        assert_eq!(
            value(store, "outer"),
            None,
            "{name}: the outer write landed"
        );
        assert_eq!(
            value(store, "inner"),
            None,
            "{name}: the inner write landed"
        );
        assert_eq!(store.stats().commits, 0, "{name}: a commit landed");
    }
}

/// A inside A, and B inside A: refused at the caller's line, with a message that says which;
/// the outer transaction writes nothing.
#[test]
fn p31_atomically_inside_a_transaction_panics_on_any_store() {
    let (a, b): (S, S) = (Store::new(), Store::new());
    for (inner, expected) in [(&a, SAME), (&b, OTHER)] {
        let mut line = 0;
        let (message, at) = panics(|| {
            a.atomically(|tx| {
                tx.set(&"outer", 1)?;
                line = line!() + 1;
                inner.atomically(|tx| tx.set(&"inner", 2));
                Ok(())
            })
        });
        assert!(message.starts_with("Store::atomically "), "{message}");
        assert!(message.contains(expected), "{message}");
        assert_eq!(at, (file!().to_string(), line), "not the caller's line");
        assert_untouched(&a, &b);
    }
}

/// A inside B inside A: the B start inside A is refused, so B's closure never runs and A is
/// never started a second time; neither store is written.
#[test]
fn p31_a_inside_b_inside_a_is_refused_at_b() {
    let (a, b): (S, S) = (Store::new(), Store::new());
    let mut b_ran = false;
    let (message, _) = panics(|| {
        a.atomically(|tx| {
            tx.set(&"outer", 1)?;
            b.atomically(|tx| {
                b_ran = true;
                tx.set(&"inner", 2)?;
                a.atomically(|tx| tx.set(&"inner", 3));
                Ok(())
            });
            Ok(())
        })
    });
    assert!(message.contains(OTHER), "{message}");
    assert!(!b_ran);
    assert_untouched(&a, &b);
}

/// Every way to start a transaction, and every single-key change, is refused inside a closure,
/// on the same store and on another one, and names the call; the outer writes nothing. The
/// outer closure is a blocking transaction, or a `run_async` one (its synchronous part).
#[test]
fn p31_every_transaction_and_single_key_change_is_refused() {
    type Start<'a> = (&'static str, Box<dyn Fn(&S) + 'a>);
    let starts: Vec<Start> = vec![
        (
            "Store::try_atomically",
            Box::new(|s: &S| {
                let _ = s.try_atomically(|tx| tx.set(&"inner", 1));
            }),
        ),
        (
            "Transaction::run",
            Box::new(|s: &S| {
                let _ = s.transaction().run(|tx| tx.set(&"inner", 1));
            }),
        ),
        (
            "Transaction::run_async",
            Box::new(|s: &S| {
                let _ = block_on(s.transaction().run_async(|tx| tx.set(&"inner", 1)));
            }),
        ),
        (
            "Store::insert",
            Box::new(|s: &S| {
                s.insert("inner", 1);
            }),
        ),
        (
            "Store::remove",
            Box::new(|s: &S| {
                s.remove("outer");
            }),
        ),
        (
            "Store::update",
            Box::new(|s: &S| {
                s.update("inner", |_| 1);
            }),
        ),
        (
            "Store::modify",
            Box::new(|s: &S| {
                s.modify("outer", |n| n + 1);
            }),
        ),
    ];
    let (a, b): (S, S) = (Store::new(), Store::new());
    for (call, start) in &starts {
        for (inner, expected) in [(&a, SAME), (&b, OTHER)] {
            let outer_blocking = || {
                a.atomically(|tx| {
                    tx.set(&"outer", 1)?;
                    start(inner);
                    Ok(())
                })
            };
            let outer_async = || {
                let done: Result<(), TxError> = block_on(a.transaction().run_async(|tx| {
                    tx.set(&"outer", 1)?;
                    start(inner);
                    Ok(())
                }));
                done.unwrap();
            };
            for outer in [&outer_blocking as &dyn Fn(), &outer_async] {
                let (message, _) = panics(outer);
                assert!(message.starts_with(call), "{call}: {message}");
                assert!(message.contains(expected), "{call}: {message}");
                assert_untouched(&a, &b);
            }
        }
    }
}

/// A refusal caught inside the closure leaves the outer transaction whole (it commits its own
/// writes, and only those), and after a refusal went through, the thread runs transactions
/// again as usual.
#[test]
fn p31_after_a_refusal_transactions_run_as_usual() {
    let (a, b): (S, S) = (Store::new(), Store::new());
    a.atomically(|tx| {
        tx.set(&"outer", 1)?;
        let refused = catch_unwind(AssertUnwindSafe(|| b.insert("inner", 2)));
        assert!(refused.is_err());
        Ok(())
    });
    assert_eq!((value(&a, "outer"), value(&b, "inner")), (Some(1), None));
    let _ = panics(|| {
        a.atomically(|_| {
            b.atomically(|tx| tx.set(&"inner", 3));
            Ok(())
        })
    });
    b.atomically(|tx| tx.set(&"inner", 4));
    a.atomically(|tx| tx.set(&"outer", 5));
    assert_eq!((value(&a, "outer"), value(&b, "inner")), (Some(5), Some(4)));
    // Handles are not refused: a handle's commit inside a closure is its own commit.
    let copied = a.atomically(|tx| {
        let mut handle = b.usevar("inner").unwrap();
        handle.set(6);
        handle.commit().unwrap();
        tx.get(&"outer")
    });
    assert_eq!((copied, value(&b, "inner")), (Some(5), Some(6)));
}

// ---------------------------------------------------------------------------------------------
// 32. The highest version
// ---------------------------------------------------------------------------------------------

#[cfg(feature = "serde")]
mod highest_version {
    use super::*;

    const MAX: u64 = (1 << 62) - 1;

    type Rows = Vec<(String, u64, Option<i64>)>;

    fn load(rows: &[(&str, u64, Option<i64>)]) -> Store<String, i64> {
        serde_json::from_str(&serde_json::to_string(rows).unwrap()).unwrap()
    }

    /// Saves `store`, loads it back, and checks that the loaded store holds the same rows.
    fn round_trip(store: &Store<String, i64>) -> Store<String, i64> {
        let saved = serde_json::to_string(store).unwrap();
        let back: Store<String, i64> =
            serde_json::from_str(&saved).expect("what a store saves loads");
        assert_eq!(back.dump(), store.dump());
        back
    }

    fn rows(store: &Store<String, i64>) -> Rows {
        store.dump()
    }

    /// A store loaded near the top takes commits up to the highest version (writes, a removal,
    /// the key created again above it), saves, and loads back with the same rows; the loaded
    /// store goes on to the top and round-trips again.
    #[test]
    fn p32_a_store_near_the_top_saves_and_loads_back_after_commits() {
        let store = load(&[
            ("a", MAX - 2, Some(1)),
            ("b", MAX - 1, Some(2)),
            ("c", MAX - 3, Some(3)),
        ]);
        assert_eq!(store.insert("a".into(), 10), Some(1));
        assert_eq!(store.update("b".into(), |b| b.unwrap() + 10), 12);
        assert_eq!(store.remove("c"), Some(3));
        drop(store.usevar("c".into()).unwrap()); // created again, one above the removal
        assert_eq!(
            rows(&store),
            vec![
                ("a".into(), MAX - 1, Some(10)),
                ("b".into(), MAX, Some(12)),
                ("c".into(), MAX - 1, None),
            ]
        );
        let back = round_trip(&store);
        back.atomically(|tx| {
            tx.set("a", 11)?;
            tx.set("c", 13)
        });
        assert_eq!(back.get("a"), Some((MAX, Some(11))));
        assert_eq!(back.get("c"), Some((MAX, Some(13))));
        round_trip(&back);
    }

    /// At the top, every kind of commit that would go past it panics with its message, and
    /// writes nothing, not even its other keys; reads and read-only commits go on; a removal
    /// needs one version more. The store still saves and loads.
    #[test]
    fn p32_a_commit_past_the_highest_version_panics_and_writes_nothing() {
        let store = load(&[("top", MAX, Some(1)), ("next", MAX - 1, Some(2))]);
        let before = rows(&store);
        type Attempt<'a> = (&'static str, Box<dyn Fn() + 'a>);
        let attempts: Vec<Attempt> = vec![
            (
                "a handle",
                Box::new(|| {
                    let mut top = store.usevar("top".into()).unwrap();
                    top.set(2);
                    let _ = top.commit();
                }),
            ),
            (
                "a collection",
                Box::new(|| {
                    let mut both = store.using(["next".into(), "top".into()]).unwrap();
                    both["next"].set(3);
                    both["top"].clear();
                    let _ = both.commit();
                }),
            ),
            (
                "a transaction",
                Box::new(|| {
                    store.atomically(|tx| {
                        tx.set("next", 3)?;
                        tx.update("top", |top| top.unwrap() + 1)
                    });
                }),
            ),
            (
                "insert",
                Box::new(|| {
                    store.insert("top".into(), 2);
                }),
            ),
            (
                "modify",
                Box::new(|| {
                    store.modify("top", |n| n + 1);
                }),
            ),
            (
                "remove at the top",
                Box::new(|| {
                    store.remove("top");
                }),
            ),
            (
                "remove one below",
                Box::new(|| {
                    store.remove("next");
                }),
            ),
        ];
        for (what, attempt) in attempts {
            let (message, _) = panics(attempt);
            assert!(message.contains("2^62 - 1"), "{what}: {message}");
            assert!(message.contains("nothing was written"), "{what}: {message}");
            assert_eq!(rows(&store), before, "{what} wrote");
        }
        assert_eq!(store.stats().commits, 0);
        // Reads, and commits that only read, go on.
        assert_eq!(store.atomically(|tx| tx.get("top")), Some(1));
        assert_eq!(store.usevar("top".into()).unwrap().commit(), Ok(()));
        // One below the top: a write lands (a removal would not).
        assert_eq!(store.insert("next".into(), 3), Some(2));
        assert_eq!(store.get("next"), Some((MAX, Some(3))));
        round_trip(&store);
    }

    /// Loading accepts every version a store can hold, up to the highest, and refuses the
    /// ones above it.
    #[test]
    fn p32_loading_accepts_every_version_up_to_the_highest() {
        for version in [1, MAX - 1, MAX] {
            let store = load(&[("a", version, Some(5)), ("b", version, None)]);
            assert_eq!(store.get("a"), Some((version, Some(5))));
            round_trip(&store);
        }
        for version in [MAX + 1, (1 << 63) - 1, 1 << 63, u64::MAX] {
            let too_new = format!(r#"[["a", {version}, 5]]"#);
            let err = serde_json::from_str::<Store<String, i64>>(&too_new).unwrap_err();
            assert!(err.to_string().contains("above 2^62 - 1"), "{err}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 33. Debug
// ---------------------------------------------------------------------------------------------

#[test]
fn p33_tx_transaction_and_snapshot_implement_debug() {
    let store: S = [("b", 2), ("a", 1)].into_iter().collect();
    let shown = store.atomically(|tx| {
        tx.get(&"a")?;
        tx.set(&"b", 20)?;
        Ok(format!("{tx:?}"))
    });
    assert_eq!(
        shown,
        "Tx { attempt: 1, keys: [\
         Key { key: \"a\", version: 1, value: Some(1), pending: false }, \
         Key { key: \"b\", version: 1, value: Some(20), pending: true }], \
         stopped: None }"
    );

    let none = format!("{:?}", store.transaction());
    assert!(
        none.starts_with("Transaction {") && none.contains("deadline: None"),
        "{none}"
    );
    let timed = format!(
        "{:?}",
        store
            .transaction()
            .timeout(std::time::Duration::from_secs(60))
    );
    assert!(timed.contains("deadline: Some("), "{timed}");

    let snapshot = store.snapshot(|snapshot| format!("{snapshot:?}"));
    assert_eq!(snapshot, r#"{"a": (1, Some(1)), "b": (2, Some(20))}"#);
    assert_eq!(
        snapshot,
        format!("{store:?}"),
        "the store's Debug shows the same"
    );
    let range = store.snapshot_range("b".., |snapshot| format!("{snapshot:?}"));
    assert_eq!(range, r#"{"b": (2, Some(20))}"#);
}
