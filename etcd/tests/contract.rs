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

/// The etcd backend's version mapping, seen from etcd's side: contract version = etcd
/// version - 1 (a key created by a read is etcd version 1, "no value").
#[test]
fn etcd_versions_are_etcd_versions_minus_one() {
    let store = common::etcd_store::<i64>("mapping");
    let mut v = store.usevar(k("a")).unwrap();
    assert_eq!(v.version(), 0);
    for expected in 1..=3 {
        v.set(expected as i64);
        v.commit().unwrap();
        assert_eq!(v.version(), expected);
    }
    assert_eq!(store.dump().rows(), vec![(k("a"), 3, Some(3))]);
    // Not a single BusyRetry in this file: the contract's "rare" is "never" on a healthy etcd.
    assert_ne!(err(store.usevar(k("a"))), Some(BusyRetry));
}
