//! The contract's shared scenarios (`tests/scenarios` at the workspace root: points 1-7, 10-17
//! and 22-25, written once) against the etcd store's blocking API, and what is etcd's own: how
//! versions, removals and transactions map onto etcd keys and revisions. The root crate's
//! `tests/shared_scenarios.rs` runs the same scenarios against the in-process store.

mod common;

#[macro_use]
#[path = "../../tests/scenarios/mod.rs"]
mod scenarios;

use std::ops::Deref;

use common::k;
use scenarios::{err, Rows};
use stm_store::Error::BusyRetry;
use stm_store_etcd::blocking;
use stm_store_etcd::TxError;

impl scenarios::AsContract for stm_store_etcd::Error {
    fn as_contract(&self) -> stm_store::Error {
        self.contract()
            .unwrap_or_else(|| panic!("expected a contract error, got: {self}"))
    }
}

impl<K, V> Rows<K, V> for Result<Vec<(K, u64, Option<V>)>, stm_store_etcd::Error> {
    fn rows(self) -> Vec<(K, u64, Option<V>)> {
        self.expect("dump")
    }
}

/// The etcd store as the scenarios take it: its `atomically` returns the closure's value (a
/// healthy etcd never fails one), everything else is the blocking store's own.
pub struct Etcd(blocking::EtcdStore<String, i64>);

impl Etcd {
    fn new() -> Self {
        Etcd(common::etcd_store("contract"))
    }

    fn atomically<'s, T>(
        &'s self,
        f: impl FnMut(&mut blocking::Tx<'s, String, i64>) -> Result<T, TxError>,
    ) -> T {
        self.0
            .atomically(f)
            .unwrap_or_else(|e| panic!("atomically: {e}"))
    }
}

impl Deref for Etcd {
    type Target = blocking::EtcdStore<String, i64>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

mod etcd {
    scenarios!(super::Etcd::new(), super::Etcd);
}

/// Every etcd key under `prefix` but the commit markers, as text after the prefix, with its
/// value.
fn etcd_rows(prefix: &str) -> Vec<(String, Vec<u8>)> {
    common::raw(async |c: &mut etcd_client::Client| {
        let options = etcd_client::GetOptions::new().with_prefix();
        let response = c.get(prefix, Some(options)).await.unwrap();
        response
            .kvs()
            .iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(&kv.key()[prefix.len()..]).into_owned();
                (key, kv.value().to_vec())
            })
            .filter(|(key, _)| !key.starts_with("m/"))
            .collect()
    })
}

/// The stored form of a version and value: a tag (0x02 "no value", 0x03 CBOR), the version as
/// 8 bytes big-endian, then CBOR.
fn stored(version: u64, value: Option<i64>) -> Vec<u8> {
    let mut bytes = vec![if value.is_some() { 3 } else { 2 }];
    bytes.extend_from_slice(&version.to_be_bytes());
    if let Some(value) = value {
        ciborium::into_writer(&value, &mut bytes).unwrap();
    }
    bytes
}

/// The mapping seen from etcd's side: a key is one etcd key under `prefix` + `k/` whose value
/// carries its version; a transaction's read creates nothing, `usevar` creates the key; a
/// removal deletes the etcd key and raises the store's floor (`prefix` + `f`, the removal's
/// version), and the key read again starts one above it.
#[test]
fn what_a_store_keeps_in_etcd() {
    let prefix = common::fresh_prefix("mapping");
    let store =
        blocking::EtcdStore::<String, i64>::connect(common::endpoints(), prefix.clone()).unwrap();
    let a = k("a");
    assert_eq!(store.atomically(|tx| tx.get(&a)).unwrap(), None);
    assert_eq!(
        etcd_rows(&prefix),
        vec![],
        "a transaction's read created a key"
    );
    let mut v = store.usevar(k("a")).unwrap();
    assert_eq!(etcd_rows(&prefix), vec![(k("k/a"), stored(0, None))]);
    let early = store.usevar(k("c")).unwrap();
    assert_eq!(early.version(), 0);
    for expected in 1..=3 {
        v.set(expected as i64 * 10);
        v.commit().unwrap();
        assert_eq!(v.version(), expected);
    }
    assert_eq!(
        etcd_rows(&prefix),
        vec![(k("k/a"), stored(3, Some(30))), (k("k/c"), stored(0, None))]
    );
    v.remove();
    v.commit().unwrap();
    assert_eq!(
        etcd_rows(&prefix),
        vec![
            (k("f"), 4u64.to_be_bytes().to_vec()),
            (k("k/c"), stored(0, None))
        ],
        "the removal deleted the key and raised the floor to its version"
    );
    // A removal above the floor raises it again.
    let mut b = store.usevar(k("b")).unwrap();
    assert_eq!(b.version(), 5);
    store.atomically(|tx| tx.remove(&k("b"))).unwrap();
    assert_eq!(
        etcd_rows(&prefix),
        vec![
            (k("f"), 6u64.to_be_bytes().to_vec()),
            (k("k/c"), stored(0, None))
        ]
    );
    b.set(1);
    assert_eq!(err(b.commit()), Some(stm_store::Error::ConcurrentUpdate));
    assert_eq!(store.usevar(k("a")).unwrap().version(), 7);
    // A removal below the floor (of a key created before it was raised) leaves it as it is.
    let mut c = early;
    c.remove();
    c.commit().unwrap();
    assert_eq!(
        etcd_rows(&prefix),
        vec![
            (k("f"), 6u64.to_be_bytes().to_vec()),
            (k("k/a"), stored(7, None))
        ]
    );
    // Not a single BusyRetry in this file: the contract's "rare" is "never" on a healthy etcd.
    assert_ne!(err(store.usevar(k("a"))), Some(BusyRetry));
}
