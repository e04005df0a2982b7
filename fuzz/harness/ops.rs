//! The `ops` runner: one client, and an exact model.

use stm_store::Store;

use super::decode::{decode_ops, ops_claim, Op, TxKind, Via};
use super::handles::{
    check_handle, dump_of, look_at, model_of, read_ok, seen, take_snapshots, using_seen,
    write_member, Handle,
};
use super::memory::{check_all_freed, check_memory_exact, memory_due, Lives};
use super::model::{MHandle, MVal, Model, Seen, Write};
use super::tx::{effective_kind, run_tx, simulate_tx, TxEnd};
use super::{divergence, expect_eq, Stats, K, MAX_HANDLES, S};

struct OpsSlot<'s> {
    handle: Handle<'s>,
    model: MHandle,
    /// Which store (generation) the handle came from.
    generation: usize,
    /// For each member: the version its key was created at, which names the slot it holds
    /// (see [`OpsRun::check_memory`]).
    born: Vec<u64>,
}

struct OpsRun<'s> {
    /// Every store of the run, made up front: one, and one more per `NewStore`. A handle
    /// borrows its store, so every store lives until the run ends.
    stores: &'s [S],
    /// One model per store started so far; the last is the current store's.
    models: Vec<Model>,
    slots: Vec<Option<OpsSlot<'s>>>,
    lives: Lives,
    stats: Stats,
}

/// Runs the `ops` program of `data` on a store and on the model; panics on any difference.
pub fn run_ops(data: &[u8]) {
    run_ops_counting(data);
}

/// [`run_ops`], returning what it did.
pub fn run_ops_counting(data: &[u8]) -> Stats {
    let ops = decode_ops(data);
    let lives = Lives::default();
    let new_stores = ops.iter().filter(|op| matches!(op, Op::NewStore)).count();
    let stores: Vec<S> = (0..=new_stores).map(|_| Store::new()).collect();
    for store in &stores {
        take_snapshots(store, ops_claim(data));
    }
    let mut run = OpsRun {
        stores: &stores,
        models: vec![Model::default()],
        slots: (0..MAX_HANDLES).map(|_| None).collect(),
        lives: lives.clone(),
        stats: Stats::default(),
    };
    for (i, op) in ops.iter().enumerate() {
        let checked =
            run.step(op)
                .and_then(|()| run.check_handles())
                .and_then(|()| match memory_due(i, ops.len()) {
                    true => run.check_memory(),
                    false => Ok(()),
                });
        if let Err(msg) = checked {
            divergence("ops", &ops, i, &msg);
        }
    }
    if let Err(msg) = run.dump("final dump") {
        divergence("ops", &ops, ops.len(), &msg);
    }
    let mut stats = run.stats;
    for model in &run.models {
        stats.count_history(model);
    }
    stats.snapshot_claims = stores.iter().map(|s| s.stats().snapshot_claims).sum();
    drop(run);
    drop(stores);
    if let Err(msg) = check_all_freed(&lives) {
        divergence("ops", &ops, ops.len(), &msg);
    }
    stats
}

impl<'s> OpsRun<'s> {
    fn generation(&self) -> usize {
        self.models.len() - 1
    }

    /// The current store.
    fn store(&self) -> &'s S {
        &self.stores[self.generation()]
    }

    fn dump(&self, what: &str) -> Result<(), String> {
        let model = self.models.last().expect("there is always a store");
        expect_eq(what, dump_of(self.store()), model.dump())
    }

    /// Exactly, for values: one copy of every key's value in every store, and each handle's
    /// copies of the value it read and of its pending value. For keys (one per slot not freed):
    /// one per key that exists in each store (listed in its index), and one per removed key's
    /// slot that some handle still holds; a slot is named by (store, key, version it was
    /// created at), and handles of the same key's same life share it.
    fn check_memory(&self) -> Result<(), String> {
        let in_stores: usize = self
            .models
            .iter()
            .flat_map(|m| m.keys.values())
            .filter(|k| k.value.is_some())
            .count();
        let in_handles: usize = self
            .slots
            .iter()
            .flatten()
            .flat_map(|s| s.model.members())
            .map(|m| {
                let pending = matches!(m.pending, Some(Write::Value(Some(_))));
                usize::from(m.value.is_some()) + usize::from(pending)
            })
            .sum();
        check_memory_exact(&self.lives.vals, "values", in_stores + in_handles)?;
        let listed: usize = self
            .models
            .iter()
            .map(|m| m.keys.len() + m.landing.len())
            .sum();
        let mut held: Vec<(usize, K, u64)> = Vec::new();
        for s in self.slots.iter().flatten() {
            let model = &self.models[s.generation];
            for (m, &born) in s.model.members().iter().zip(&s.born) {
                let linked = model.keys.get(&m.key).is_some_and(|k| k.born == born);
                if !linked && !held.contains(&(s.generation, m.key, born)) {
                    held.push((s.generation, m.key, born));
                }
            }
        }
        check_memory_exact(&self.lives.keys, "keys (slots)", listed + held.len())
    }

    fn check_handles(&self) -> Result<(), String> {
        for (i, slot) in self.slots.iter().enumerate() {
            if let Some(s) = slot {
                check_handle(&s.handle, &s.model).map_err(|e| format!("slot {i}: {e}"))?;
            }
        }
        Ok(())
    }

    /// A handle just read from the current store, and its model: its slot in the run.
    fn keep(&mut self, slot: usize, handle: Handle<'s>, model: MHandle) {
        let generation = self.generation();
        let keys = &self.models[generation].keys;
        let born = model.members().iter().map(|m| keys[&m.key].born).collect();
        self.slots[slot] = Some(OpsSlot {
            handle,
            model,
            generation,
            born,
        });
    }

    fn step(&mut self, op: &Op) -> Result<(), String> {
        let generation = self.generation();
        match op {
            &Op::UseVar { slot, key } => {
                let value = read_ok("usevar", self.store().usevar(self.lives.key(key)))?;
                let model = self.models[generation].usevar(key);
                expect_eq("usevar (key, version, value)", seen(&value), model.seen())?;
                self.keep(slot, Handle::Value(value), MHandle::Value(model));
            }
            Op::Using { slot, keys } => {
                let named = keys.iter().map(|&k| self.lives.key(k));
                let coll = read_ok("using", self.store().using(named))?;
                let members = self.models[generation].using(keys);
                let expected: Vec<Seen> = members.iter().map(MVal::seen).collect();
                expect_eq("using snapshot", using_seen(&coll), expected)?;
                self.keep(*slot, Handle::Coll(coll), model_of(members));
            }
            &Op::Set {
                slot,
                key,
                value,
                via,
            } => self.write(slot, key, Write::Value(Some(value)), via)?,
            &Op::Clear { slot, key } => self.write(slot, key, Write::Value(None), Via::GetMut)?,
            &Op::Remove { slot, key, via } => self.write(slot, key, Write::Remove, via)?,
            &Op::Commit { slot, via_store } => {
                let Some(s) = &mut self.slots[slot] else {
                    return Ok(());
                };
                // `Store::set` with a handle of another store panics (semantics 10): a handle
                // of an older store commits through its own store.
                let store = &self.stores[s.generation];
                let actual = match &mut s.handle {
                    Handle::Value(v) if via_store => store.set(v),
                    Handle::Value(v) => v.commit(),
                    Handle::Coll(c) if via_store => store.set_values(c),
                    Handle::Coll(c) => c.commit(),
                };
                let expected = self.models[s.generation].commit_now(s.model.members());
                if expected.is_ok() {
                    s.model.committed();
                }
                expect_eq("commit answer", actual, expected)?;
            }
            Op::Pause { .. } => unreachable!("the ops decoder makes no Pause"),
            Op::Dump => {
                self.dump("dump")?;
                let _ = format!("{:?}", self.store());
            }
            Op::Look(look) => {
                let actual = look_at(self.store(), &self.lives, look)?;
                let expected = self.models[generation].look(look, &actual);
                expect_eq(&format!("{look:?}"), actual, expected)?;
            }
            &Op::Drop { slot } => self.slots[slot] = None,
            &Op::Read { slot } => {
                if let Some(s) = &self.slots[slot] {
                    let _ = match &s.handle {
                        Handle::Value(v) => format!("{v:?}"),
                        Handle::Coll(c) => format!("{c:?}"),
                    };
                }
            }
            Op::NewStore => {
                // The next store (made up front) becomes the current one; the old one stays
                // for its handles, which may still commit.
                self.models.push(Model::default());
            }
            Op::Tx { kind, body } => {
                let model = &self.models[generation];
                let mut after = model.clone();
                let mut sim = simulate_tx(&mut after, body, *kind == TxKind::Deadline);
                let kind = effective_kind(*kind, std::slice::from_ref(&sim.end));
                if kind == TxKind::Deadline && sim.end == TxEnd::Blocks {
                    after = model.clone();
                    sim = simulate_tx(&mut after, body, true);
                }
                let actual = run_tx(self.store(), &self.lives, kind, body)?;
                expect_eq(
                    &format!("transaction ({kind:?}): (answers, end)"),
                    &actual,
                    &(sim.log, sim.end),
                )?;
                self.stats.count_tx(&actual.0, &actual.1);
                self.models[generation] = after;
            }
        }
        Ok(())
    }

    /// `Set`, `Clear` or `Remove` on a slot's handle (nothing if the slot is empty).
    fn write(&mut self, slot: usize, key: K, write: Write, via: Via) -> Result<(), String> {
        match &mut self.slots[slot] {
            Some(s) => write_member(&self.lives, &mut s.handle, &mut s.model, key, write, via),
            None => Ok(()),
        }
    }
}
