//! The real store and handles, read and written as the model sees them, and compared with
//! their models.

use std::ops::Bound;

use stm_store::{Collection, Error, Value};

use super::decode::{Look, Via};
use super::memory::{Key, Lives, Val};
use super::model::{Looked, MHandle, MVal, Seen, Write};
use super::{expect_eq, K, PROBE_KEYS, S, V};

/// Makes `store` take every snapshot of several keys (`using`, `dump`, `snapshot`,
/// `snapshot_range`) by claiming the keys at once if `claim`, instead of by a double collect,
/// which on one thread always succeeds: the claiming snapshot (which helps a stopped commit in
/// its way to its end) is otherwise out of a single thread's reach. Only with `test-hooks`.
pub(super) fn take_snapshots(store: &S, claim: bool) {
    #[cfg(feature = "test-hooks")]
    store.force_claiming_snapshots(claim);
    #[cfg(not(feature = "test-hooks"))]
    let _ = (store, claim);
}

/// `store.dump()` as `(key, version, number)`.
pub(super) fn dump_of(store: &S) -> Vec<Seen> {
    store
        .dump()
        .into_iter()
        .map(|(key, version, value)| (key.n, version, value.as_ref().map(Val::get)))
        .collect()
}

/// A row of a snapshot as `(key, version, number)`.
fn row_of((key, version, value): (&Key, u64, Option<&Val>)) -> Seen {
    (key.n, version, value.map(Val::get))
}

/// Calls `look` on the store.
pub(super) fn look_at(store: &S, lives: &Lives, look: &Look) -> Result<Looked, String> {
    Ok(match *look {
        Look::Get(key) => Looked::Get(
            store
                .get(&key)
                .map(|(version, value)| (version, value.as_ref().map(Val::get))),
        ),
        Look::Contains(key) => Looked::Contains(store.contains_key(&key)),
        Look::Len => Looked::Len(store.len(), store.is_empty()),
        Look::Snapshot(start, end) => {
            let read = |snapshot: &stm_store::Snapshot<'_, Key, V>| {
                let rows: Vec<Seen> = snapshot.iter().map(row_of).collect();
                (rows, snapshot.len(), snapshot.is_empty())
            };
            let (rows, len, empty) = match (start, end) {
                (Bound::Unbounded, Bound::Unbounded) => store.snapshot(read),
                _ => {
                    let key = |n| lives.key(n);
                    store.snapshot_range((start.map(key), end.map(key)), read)
                }
            };
            expect_eq(
                "snapshot (len, is_empty)",
                (len, empty),
                (rows.len(), rows.is_empty()),
            )?;
            Looked::Rows(rows)
        }
    })
}

pub(super) enum Handle<'s> {
    Value(Value<'s, Key, V>),
    Coll(Collection<'s, Key, V>),
}

pub(super) fn seen(value: &Value<'_, Key, V>) -> Seen {
    (value.key().n, value.version(), value.value().map(Val::get))
}

fn seen_all(coll: &Collection<'_, Key, V>) -> Vec<Seen> {
    coll.iter().map(|(_, v)| seen(v)).collect()
}

/// Compares everything the public API shows of a handle with its model (without allocating
/// when they agree: this runs after every step).
pub(super) fn check_handle(handle: &Handle<'_>, model: &MHandle) -> Result<(), String> {
    let agree = match (handle, model) {
        (Handle::Value(v), MHandle::Value(m)) => seen(v) == m.seen(),
        (Handle::Coll(c), MHandle::Coll(ms)) => {
            c.len() == ms.len()
                && c.is_empty() == ms.is_empty()
                && c.iter().count() == ms.len()
                && c.iter()
                    .zip(ms)
                    .all(|((k, v), m)| k.n == m.key && seen(v) == m.seen())
                && c.keys().map(|k| k.n).eq(ms.iter().map(|m| m.key))
                && (0..PROBE_KEYS).all(|probe| {
                    c.get(&probe).map(seen) == ms.iter().find(|m| m.key == probe).map(MVal::seen)
                })
        }
        _ => false,
    };
    if agree {
        Ok(())
    } else {
        explain_handle(handle, model)
    }
}

/// The slow path of [`check_handle`]: says what differs.
fn explain_handle(handle: &Handle<'_>, model: &MHandle) -> Result<(), String> {
    match (handle, model) {
        (Handle::Value(v), MHandle::Value(m)) => {
            expect_eq("Value (key, version(), value())", seen(v), m.seen())
        }
        (Handle::Coll(c), MHandle::Coll(ms)) => {
            let expected: Vec<Seen> = ms.iter().map(MVal::seen).collect();
            expect_eq(
                "Collection members (key, version, value)",
                seen_all(c),
                expected,
            )?;
            for (key, value) in c.iter() {
                expect_eq("Collection::iter key vs Value::key", key, value.key())?;
            }
            expect_eq("Collection::len", c.len(), ms.len())?;
            expect_eq("Collection::is_empty", c.is_empty(), ms.is_empty())?;
            let keys: Vec<K> = ms.iter().map(|m| m.key).collect();
            expect_eq("Collection::keys", c.keys().map(|k| k.n).collect(), keys)?;
            for probe in 0..PROBE_KEYS {
                let expected = ms.iter().find(|m| m.key == probe).map(MVal::seen);
                expect_eq(
                    &format!("Collection::get(&{probe})"),
                    c.get(&probe).map(seen),
                    expected,
                )?;
            }
            Err("the handle differs from its model".to_string())
        }
        _ => panic!("harness bug: the slot holds a handle of another kind than its model"),
    }
}

/// Applies a `Set`, `Clear` or `Remove` to the real handle and its model.
pub(super) fn write_member(
    lives: &Lives,
    handle: &mut Handle<'_>,
    model: &mut MHandle,
    key: K,
    write: Write,
    via: Via,
) -> Result<(), String> {
    let apply = |v: &mut Value<'_, Key, V>| match write {
        Write::Value(Some(new)) => v.set(lives.val(new)),
        Write::Value(None) => v.clear(),
        Write::Remove => v.remove(),
    };
    let member = model.member_mut(key);
    let expected_present = member.is_some();
    if let Some(m) = member {
        m.pending = Some(write);
    }
    match handle {
        Handle::Value(v) => {
            apply(v);
            Ok(())
        }
        Handle::Coll(c) => {
            let found = match via {
                Via::GetMut => c.get_mut(&key),
                Via::Index if expected_present => Some(&mut c[&key]),
                Via::Index => c.get_mut(&key),
                Via::ValuesMut => c.values_mut().find(|v| v.key().n == key),
            };
            let present = found.is_some();
            if let Some(v) = found {
                expect_eq("the member reached by key", v.key().n, key)?;
                apply(v);
            }
            if present == expected_present {
                Ok(())
            } else {
                expect_eq(
                    &format!("whether the collection has key {key} ({via:?})"),
                    present,
                    expected_present,
                )
            }
        }
    }
}

/// Reads `(key, version, value)` of what `using` returned.
pub(super) fn using_seen(coll: &Collection<'_, Key, V>) -> Vec<Seen> {
    seen_all(coll)
}

pub(super) fn model_of(members: Vec<MVal>) -> MHandle {
    MHandle::Coll(members)
}

/// A read (`usevar`/`using`) must not fail on one thread: there is no contention at all, and
/// `BusyRetry` is never the answer because of another commit in progress (semantics 6).
pub(super) fn read_ok<T>(what: &str, result: Result<T, Error>) -> Result<T, String> {
    result.map_err(|e| format!("{what} failed with {e:?} on a single thread"))
}
