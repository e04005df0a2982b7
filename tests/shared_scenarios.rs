//! The contract's shared scenarios (`tests/scenarios`, points 1-7, 10-17 and 22-25) against the
//! in-process store. `etcd/tests/contract.rs` runs the same text against the etcd store.

#[macro_use]
mod scenarios;

mod in_process {
    scenarios!(
        stm_store::Store::<String, i64>::new(),
        stm_store::Store<String, i64>
    );
}
