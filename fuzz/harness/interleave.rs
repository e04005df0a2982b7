//! The `interleave` runner: 2-3 clients, commits that may stop half-way, and the possible
//! worlds that every answer must be explained by (linearizability).

use std::collections::BTreeMap;
use std::fmt::{self, Debug};

use stm_store::Store;

use super::decode::{decode_interleave, interleave_claim, Op, Step, TxKind, TxOp, Via};
use super::handles::{
    check_handle, dump_of, look_at, model_of, read_ok, seen, take_snapshots, using_seen,
    write_member, Handle,
};
use super::memory::{check_all_freed, check_memory, memory_due, Lives, Val};
use super::model::{Event, MHandle, MVal, Model, Seen, Write};
use super::tx::{effective_kind, run_tx, simulate_tx, TxEnd};
use super::{divergence, expect_eq, Stats, K, MAX_HANDLES, N, S};

/// One commit attempt, as its handles were when it started.
pub(super) struct Attempt {
    /// Index of the step that started it.
    pub(super) step: usize,
    pub(super) client: usize,
    pub(super) members: Vec<MVal>,
}

/// One possible state of the world: the committed state (whose log is the order in which
/// commits took effect and keys were created), the paused commits that have not taken effect
/// yet, and those that have (with their answer) but were not resumed yet.
#[derive(Clone, Debug)]
pub(super) struct World {
    pub(super) model: Model,
    pub(super) pending: Vec<usize>,
    pub(super) decided: Vec<(usize, bool)>,
}

impl World {
    /// Worlds that differ only in their history are interchangeable: any one serial order
    /// will do.
    fn same_state(&self, other: &World) -> bool {
        self.model == other.model && self.pending == other.pending && self.decided == other.decided
    }
}

pub(super) struct Client<'s> {
    slots: Vec<Option<(Handle<'s>, MHandle)>>,
    /// Stopped inside a paused commit.
    paused: bool,
}

pub(super) struct Interleave<'p, 's> {
    pub(super) program: &'p [Step],
    /// The next step to run.
    pub(super) pos: usize,
    /// The step being run (for messages).
    pub(super) current: usize,
    pub(super) store: &'s S,
    pub(super) clients: Vec<Client<'s>>,
    pub(super) worlds: Vec<World>,
    pub(super) attempts: Vec<Attempt>,
    pub(super) stats: Stats,
    /// The run's values and keys.
    pub(super) lives: Lives,
    /// Members of the collections stopped inside a commit (out of their slots meanwhile).
    pub(super) paused_members: usize,
}

/// Why a run of steps stopped.
enum Exit {
    /// The program ended.
    End,
    /// A step of this paused client: it resumes (`abandon: false`) or is dropped (`true`).
    Wake { client: usize, abandon: bool },
}

/// Runs the `interleave` program of `data`; panics on any behaviour the contract forbids.
pub fn run_interleave(data: &[u8]) -> Stats {
    let (clients, program) = decode_interleave(data);
    let slots = MAX_HANDLES / clients;
    let lives = Lives::default();
    let store = Store::new();
    take_snapshots(&store, interleave_claim(data));
    let mut run = Interleave {
        program: &program,
        pos: 0,
        current: 0,
        store: &store,
        clients: (0..clients)
            .map(|_| Client {
                slots: (0..slots).map(|_| None).collect(),
                paused: false,
            })
            .collect(),
        worlds: vec![World {
            model: Model::default(),
            pending: Vec::new(),
            decided: Vec::new(),
        }],
        attempts: Vec::new(),
        stats: Stats::default(),
        lives: lives.clone(),
        paused_members: 0,
    };
    if let Err(msg) = run.exec().and_then(|_| run.finish()) {
        divergence("interleave", &program, run.current, &msg);
    }
    let mut stats = run.stats;
    stats.count_history(&run.worlds[0].model);
    stats.snapshot_claims = store.stats().snapshot_claims;
    let end = run.program.len();
    drop(run);
    drop(store);
    if let Err(msg) = check_all_freed(&lives) {
        divergence("interleave", &program, end, &msg);
    }
    stats
}

impl Interleave<'_, '_> {
    /// Runs steps until the program ends or a paused client (one of the enclosing frames) has
    /// a step. A paused commit runs the following steps in a nested call, so that its
    /// `Paused` guard (which borrows the collection) lives across them; paused commits
    /// therefore resume innermost first.
    fn exec(&mut self) -> Result<Exit, String> {
        while let Some(step) = self.program.get(self.pos) {
            self.current = self.pos;
            self.pos += 1;
            let client = step.client;
            if self.clients[client].paused {
                let abandon = matches!(step.op, Op::Drop { .. });
                return Ok(Exit::Wake { client, abandon });
            }
            if let Op::Pause { slot, claims } = step.op {
                if let Some(exit) = self.pause(client, slot, claims)? {
                    return Ok(exit);
                }
            } else {
                self.step(client, &step.op)?;
            }
            self.check_handles()?;
            if memory_due(self.current, self.program.len()) {
                self.check_memory()?;
            }
        }
        Ok(Exit::End)
    }

    /// Ends the run: every paused commit has been resumed; compare the handles, the final dump,
    /// and the serial replay of the history.
    fn finish(&mut self) -> Result<(), String> {
        self.current = self.program.len();
        self.check_handles()?;
        let dump = dump_of(self.store);
        self.observe("final dump", &dump, |w, _| w.model.dump())?;
        let world = &self.worlds[0];
        expect_eq("paused commits left", world.pending.len(), 0)?;
        replay(&world.model.log, &dump)
    }

    fn check_memory(&self) -> Result<(), String> {
        let slots = self.clients.iter().flat_map(|c| c.slots.iter().flatten());
        let members: usize = slots.map(|(_, m)| m.members().len()).sum();
        // Worlds may differ in which keys exist (a removal landed or not).
        let keys = self.worlds.iter().map(|w| w.model.keys.len()).max();
        check_memory(
            &self.lives,
            members + self.paused_members,
            self.paused_members,
            keys.unwrap_or(0),
        )
    }

    fn check_handles(&self) -> Result<(), String> {
        for (c, client) in self.clients.iter().enumerate() {
            for (i, slot) in client.slots.iter().enumerate() {
                if let Some((handle, model)) = slot {
                    check_handle(handle, model).map_err(|e| format!("client {c} slot {i}: {e}"))?;
                }
            }
        }
        Ok(())
    }

    /// Lets any paused commit take effect now, in any order: every world that could be.
    fn expand(&mut self) {
        if self.worlds.iter().all(|w| w.pending.is_empty()) {
            return;
        }
        let mut todo = std::mem::take(&mut self.worlds);
        let mut done: Vec<World> = Vec::new();
        while let Some(world) = todo.pop() {
            for (i, &id) in world.pending.iter().enumerate() {
                let mut next = world.clone();
                next.pending.remove(i);
                let ok = next.model.commit(&self.attempts[id].members).is_ok();
                next.decided.push((id, ok));
                if !done.iter().chain(&todo).any(|w| w.same_state(&next)) {
                    todo.push(next);
                }
            }
            if !done.iter().any(|w| w.same_state(&world)) {
                done.push(world);
            }
        }
        self.stats.max_worlds = self.stats.max_worlds.max(done.len());
        self.worlds = done;
    }

    /// An answer of the store: keeps the worlds (after any paused commit may have taken
    /// effect) in which `predict` gives the same answer, advanced by it.
    pub(super) fn observe<P: PartialEq + Debug>(
        &mut self,
        what: &str,
        actual: &P,
        predict: impl Fn(&mut World, &[Attempt]) -> P,
    ) -> Result<(), String> {
        self.expand();
        let mut kept: Vec<World> = Vec::new();
        let mut allowed: Vec<P> = Vec::new();
        for mut world in std::mem::take(&mut self.worlds) {
            let p = predict(&mut world, &self.attempts);
            if p == *actual {
                if !kept.iter().any(|w| w.same_state(&world)) {
                    kept.push(world);
                }
            } else if !allowed.contains(&p) {
                allowed.push(p);
            }
        }
        if kept.is_empty() {
            return Err(format!(
                "{what}: the store gives {actual:?}, the model allows only {}",
                OneOf(&allowed)
            ));
        }
        self.worlds = kept;
        Ok(())
    }

    /// A stopped commit `id` resumed and answered `ok` (`Ok` or `ConcurrentUpdate`).
    pub(super) fn observe_resume(&mut self, id: usize, ok: bool) -> Result<(), String> {
        // By its end the commit has taken effect or failed: a world in which it is still
        // pending has a sibling in which it is decided.
        self.expand();
        self.worlds.retain(|w| !w.pending.contains(&id));
        self.observe("resumed commit answer (Ok?)", &ok, |w, _| {
            let at = w.decided.iter().position(|&(p, _)| p == id);
            w.decided.remove(at.expect("decided in every world left")).1
        })?;
        if ok {
            for world in &mut self.worlds {
                world.model.returned(&self.attempts[id].members);
            }
        }
        Ok(())
    }

    /// Before a step that may create a key: looks up (`Store::get`) every key whose removal
    /// may have landed while its committer has not returned (a paused commit helped to its end,
    /// or one dropped there), but `keep`.
    ///
    /// The store raises its floor when it unlinks a removed key (its committer, once the
    /// commit returns, or the next call that names the key), not at the removal's instant, so a
    /// key created while a removal has landed but is not unlinked starts below that removal's
    /// version, which the contract (1, 23) does not allow: see `fuzz/README.md`, "Findings".
    /// The look-ups unlink every such key first (a lookup may: contract 26), so that the
    /// model's floor, raised at the removal's instant, is the store's at every creation.
    /// `keep` is the one such key a `usevar` or `using` may find landing itself (the store then
    /// unlinks it before it creates the key again, which is the path this keeps reachable).
    fn unlink_landed(&mut self, keep: Option<K>) -> Result<(), String> {
        self.expand();
        let mut keys: Vec<K> = self
            .worlds
            .iter()
            .flat_map(|w| w.model.landing.keys().copied())
            .filter(|&k| Some(k) != keep)
            .collect();
        keys.sort_unstable();
        keys.dedup();
        for key in keys {
            self.stats.looked_up_landed += 1;
            let actual = self
                .store
                .get(&key)
                .map(|(version, value)| (version, value.as_ref().map(Val::get)));
            self.observe(
                &format!("get(&{key}), before a step that may create a key"),
                &actual,
                |w, _| w.model.get(key),
            )?;
        }
        Ok(())
    }

    /// The key of `keys` that `using` may find landing without it changing the floor of the
    /// keys it creates (see [`Interleave::unlink_landed`]): one whose removal may be landing,
    /// if every other key of the list exists in every world (so `using` creates no other key).
    fn using_keeps(&mut self, keys: &[K]) -> Option<K> {
        self.expand();
        let worlds = &self.worlds;
        let landing = |k: &K| worlds.iter().any(|w| w.model.landing.contains_key(k));
        let exists = |k: &K| worlds.iter().all(|w| w.model.keys.contains_key(k));
        let kept = *keys.iter().find(|&b| landing(b))?;
        keys.iter().all(|k| *k == kept || exists(k)).then_some(kept)
    }

    fn step(&mut self, client: usize, op: &Op) -> Result<(), String> {
        match op {
            &Op::UseVar { slot, key } => {
                self.unlink_landed(Some(key))?;
                let value = read_ok("usevar", self.store.usevar(self.lives.key(key)))?;
                let actual = seen(&value);
                self.observe("usevar (key, version, value)", &actual, |w, _| {
                    w.model.usevar(key).seen()
                })?;
                let model = MVal {
                    key,
                    version: actual.1,
                    value: actual.2,
                    pending: None,
                };
                self.clients[client].slots[slot] =
                    Some((Handle::Value(value), MHandle::Value(model)));
            }
            Op::Using { slot, keys } => {
                let keep = self.using_keeps(keys);
                self.unlink_landed(keep)?;
                let named = keys.iter().map(|&k| self.lives.key(k));
                let coll = read_ok("using", self.store.using(named))?;
                let actual = using_seen(&coll);
                self.observe("using snapshot", &actual, |w, _| {
                    w.model.using(keys).iter().map(MVal::seen).collect()
                })?;
                let members = actual
                    .iter()
                    .map(|&(key, version, value)| MVal {
                        key,
                        version,
                        value,
                        pending: None,
                    })
                    .collect();
                self.clients[client].slots[*slot] = Some((Handle::Coll(coll), model_of(members)));
            }
            &Op::Set {
                slot,
                key,
                value,
                via,
            } => self.write(client, slot, key, Write::Value(Some(value)), via)?,
            &Op::Clear { slot, key } => {
                self.write(client, slot, key, Write::Value(None), Via::GetMut)?
            }
            &Op::Remove { slot, key, via } => self.write(client, slot, key, Write::Remove, via)?,
            &Op::Commit { slot, via_store } => self.commit(client, slot, via_store)?,
            Op::Pause { .. } => unreachable!("exec runs Pause itself"),
            Op::Dump => {
                let dump = dump_of(self.store);
                self.observe("dump", &dump, |w, _| w.model.dump())?;
            }
            Op::Look(look) => {
                let actual = look_at(self.store, &self.lives, look)?;
                self.observe(&format!("{look:?}"), &actual, |w, _| {
                    w.model.look(look, &actual)
                })?;
            }
            &Op::Drop { slot } => self.clients[client].slots[slot] = None,
            Op::Read { .. } => {}
            Op::NewStore => unreachable!("the interleave decoder makes no NewStore"),
            Op::Tx { kind, body } => self.transaction(*kind, body)?,
        }
        Ok(())
    }

    /// `Set`, `Clear` or `Remove` on a client's slot (nothing if the slot is empty).
    fn write(
        &mut self,
        client: usize,
        slot: usize,
        key: K,
        write: Write,
        via: Via,
    ) -> Result<(), String> {
        match &mut self.clients[client].slots[slot] {
            Some((handle, model)) => write_member(&self.lives, handle, model, key, write, via),
            None => Ok(()),
        }
    }

    /// A transaction, run whole within this step. Its answers (every read, with the version
    /// read, and how it ended) must be what the model predicts in one of the possible worlds;
    /// its commits (from inside its closure, and its own) join that world's history.
    ///
    /// Not while a client is stopped inside a commit: the transaction's commits could help
    /// that commit to take effect between two of its reads, which this model does not follow
    /// (the step is skipped and counted).
    fn transaction(&mut self, kind: TxKind, body: &[TxOp]) -> Result<(), String> {
        if self.clients.iter().any(|c| c.paused) {
            self.stats.tx_skipped += 1;
            return Ok(());
        }
        self.unlink_landed(None)?;
        let deadline = kind == TxKind::Deadline;
        let ends: Vec<TxEnd> = self
            .worlds
            .iter()
            .map(|w| simulate_tx(&mut w.model.clone(), body, deadline).end)
            .collect();
        let kind = effective_kind(kind, &ends);
        let deadline = kind == TxKind::Deadline;
        let actual = run_tx(self.store, &self.lives, kind, body)?;
        self.observe(
            &format!("transaction ({kind:?}): (answers, end)"),
            &actual,
            |w, _| {
                let sim = simulate_tx(&mut w.model, body, deadline);
                (sim.log, sim.end)
            },
        )?;
        self.stats.count_tx(&actual.0, &actual.1);
        Ok(())
    }

    fn commit(&mut self, client: usize, slot: usize, via_store: bool) -> Result<(), String> {
        let Some((handle, model)) = self.clients[client].slots[slot].take() else {
            return Ok(());
        };
        let (mut handle, mut model) = (handle, model);
        let id = self.attempts.len();
        self.attempts.push(Attempt {
            step: self.current,
            client,
            members: model.members().to_vec(),
        });
        let actual = match &mut handle {
            Handle::Value(v) if via_store => self.store.set(v),
            Handle::Value(v) => v.commit(),
            Handle::Coll(c) if via_store => self.store.set_values(c),
            Handle::Coll(c) => c.commit(),
        };
        self.observe("commit answer", &actual, |w, attempts| {
            w.model.commit_now(&attempts[id].members)
        })?;
        if actual.is_ok() {
            self.stats.commits_ok += 1;
            model.committed();
        } else {
            self.stats.commits_failed += 1;
        }
        self.clients[client].slots[slot] = Some((handle, model));
        Ok(())
    }

    /// `Pause` on a collection: starts its commit, runs the next steps while it is stopped
    /// there, then resumes (or drops) it. Returns the exit of an enclosing frame's client.
    #[cfg(feature = "test-hooks")]
    fn pause(&mut self, client: usize, slot: usize, claims: usize) -> Result<Option<Exit>, String> {
        if !matches!(self.clients[client].slots[slot], Some((Handle::Coll(_), _))) {
            // A `Value` (or nothing): an ordinary commit.
            return self.commit(client, slot, false).map(|()| None);
        }
        let Some((Handle::Coll(mut coll), mut model)) = self.clients[client].slots[slot].take()
        else {
            unreachable!("checked just above");
        };
        let id = self.attempts.len();
        self.attempts.push(Attempt {
            step: self.current,
            client,
            members: model.members().to_vec(),
        });
        for world in &mut self.worlds {
            world.pending.push(id);
        }
        let paused = coll.commit_paused(claims);
        self.clients[client].paused = true;
        self.paused_members += model.members().len();
        let exit = self.exec()?;
        self.paused_members -= model.members().len();
        self.clients[client].paused = false;
        let (abandon, outer) = match exit {
            Exit::Wake { client: c, abandon } if c == client => (abandon, None),
            other => (false, Some(other)),
        };
        if abandon {
            // The stopped committer goes away: its commit took effect already, or never will.
            // If it took effect, the keys it removed stay listed until a call names them.
            drop(paused);
            self.stats.abandoned += 1;
            self.expand();
            for world in &mut self.worlds {
                world.pending.retain(|&p| p != id);
                world.decided.retain(|&(p, _)| p != id);
            }
            let worlds = std::mem::take(&mut self.worlds);
            for world in worlds {
                if !self.worlds.iter().any(|w| w.same_state(&world)) {
                    self.worlds.push(world);
                }
            }
        } else {
            let actual = paused.resume();
            let ok = actual.is_ok();
            if actual != Ok(()) && actual != Err(stm_store::Error::ConcurrentUpdate) {
                return Err(format!("resumed commit answered {actual:?}"));
            }
            self.observe_resume(id, ok)?;
            if ok {
                self.stats.resumed_ok += 1;
                model.committed();
            } else {
                self.stats.resumed_failed += 1;
            }
        }
        self.clients[client].slots[slot] = Some((Handle::Coll(coll), model));
        Ok(outer)
    }

    /// Without `test-hooks` there is no paused commit: `Pause` is an ordinary commit.
    #[cfg(not(feature = "test-hooks"))]
    fn pause(
        &mut self,
        client: usize,
        slot: usize,
        _claims: usize,
    ) -> Result<Option<Exit>, String> {
        self.commit(client, slot, false).map(|()| None)
    }
}

/// Replays a world's history serially from an empty store, independently of [`Model`]: each
/// key is created absent, at version 0 while nothing was removed, else at one above the
/// highest version a removed key reached; each commit validates at its turn (every key it
/// read exists, at the version read) and writes its keys (a removal deletes the key and raises
/// that highest version); the result must be the final `dump`.
pub(super) fn replay(log: &[Event], dump: &[Seen]) -> Result<(), String> {
    let mut state: BTreeMap<K, (u64, Option<N>)> = BTreeMap::new();
    let mut removed_max = 0;
    for (i, event) in log.iter().enumerate() {
        match event {
            Event::Create(key, version) => {
                let expected = if removed_max == 0 { 0 } else { removed_max + 1 };
                if state.contains_key(key) || *version != expected {
                    return Err(format!(
                        "serial replay, event {i}: key {key} created at version {version}, but \
                         replayed serially it is {:?} and new keys start at {expected}",
                        state.get(key)
                    ));
                }
                state.insert(*key, (*version, None));
            }
            Event::Commit(members) => {
                for m in members {
                    let version = state.get(&m.key).map(|s| s.0);
                    if version != Some(m.version) {
                        return Err(format!(
                            "serial replay, event {i}: the commit {members:?} read key {} at \
                             version {} but replayed serially the key is at {version:?}",
                            m.key, m.version
                        ));
                    }
                }
                for m in members {
                    match m.pending {
                        None => {}
                        Some(Write::Value(value)) => {
                            state.insert(m.key, (m.version + 1, value));
                        }
                        Some(Write::Remove) => {
                            state.remove(&m.key);
                            removed_max = removed_max.max(m.version + 1);
                        }
                    }
                }
            }
        }
    }
    let replayed: Vec<Seen> = state.into_iter().map(|(k, (n, v))| (k, n, v)).collect();
    expect_eq(
        "final dump vs serial replay of the history",
        dump.to_vec(),
        replayed,
    )
}

/// Formats the answers the model allows.
struct OneOf<'a, P>(&'a [P]);

impl<P: Debug> fmt::Display for OneOf<'_, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" or ")?;
            }
            write!(f, "{p:?}")?;
        }
        Ok(())
    }
}
