//! The checker: is there one order of the recorded operations, consistent with real time, in
//! which the model gives every answer that was recorded?
//!
//! 1. **Compile.** Keys and values become small numbers; each event becomes a step with its
//!    interval, the keys it may create while in flight, and an action for the model.
//! 2. **Partition** where it is sound: keys that some operation touches together (a multi-key
//!    commit, a `using`, a transaction) are checked together; `dump` and `snapshot` see every
//!    key (and the absence of the others), so a history with one checks all its keys together.
//!    Components share nothing in the model (see `model.rs` for the one store-wide rule, the
//!    floor, and how the model keeps only its per-key promise), so the history is
//!    linearizable if and only if every component is (Herlihy and Wing's locality, as
//!    Porcupine's P-compositionality uses it).
//! 3. **Order from versions.** Each key's versions are totally ordered and every answer names
//!    them, so some orders follow from the answers alone: the commit that wrote version `v` of
//!    a key comes before every operation that saw `v`, and those come before the commit that
//!    wrote `v + 1`. These edges hold in every linearization the model accepts, so the search
//!    only tries operations whose predecessors are placed.
//! 4. **Search** (Wing and Gong, with Lowe's memoization, as Porcupine does it): a depth-first
//!    search over the operations that may come next, each tried against the model; a pair
//!    (set of operations placed, model state) seen before is not explored again. The set is
//!    hashed incrementally (Zobrist: 128 random bits per operation, XORed); the state is hashed
//!    whole. A collision could only prune a branch wrongly, that is, report a violation that
//!    is not one (with odds of about 2^-100); an accepted history always has an explicit
//!    linearization.
//! 5. **The smallest window.** For a component that fails: the shortest prefix that already
//!    fails (operations still in flight at its end may or may not take effect), then the latest
//!    start from which that prefix still fails when it may start from *any* state (operations
//!    in flight at the start may or may not take effect). Both cuts keep every linearizable
//!    history linearizable, so the window is a self-contained witness. Then as many of the
//!    window's operations as possible are forgotten (answer and outcome left open) while it
//!    still fails: the report shows the rest, the operations whose answers contradict each
//!    other. Each trial search has a budget of states; a trial over budget counts as not
//!    failing, so what is reported was always shown to fail.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasher, Hash};

use crate::history::{Event, History, Op, Outcome, Time, Write, NEVER};
use crate::model::{Action, Effect, Key, KeyId, Model, Part, ValId, NO_VALUE};

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type FastSet<K> = HashSet<K, foldhash::fast::RandomState>;

/// What went wrong with a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckError {
    /// No order of the operations fits the model: the smallest window that shows it.
    NotLinearizable(Violation),
    /// The history cannot be from the store (its recorder is broken): why.
    Malformed(String),
    /// The search explored more states than [`Checker::max_states`] in a part of the history
    /// with this many events, without a verdict.
    GaveUp {
        /// The budget.
        states: u64,
        /// Events of the part that exhausted it.
        events: usize,
    },
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckError::NotLinearizable(violation) => violation.fmt(f),
            CheckError::Malformed(why) => write!(f, "malformed history: {why}"),
            CheckError::GaveUp { states, events } => write!(
                f,
                "undecided: the search of a part of {events} events explored more than \
                 {states} states (raise Checker::max_states)"
            ),
        }
    }
}

impl std::error::Error for CheckError {}

/// A history that is not linearizable, shown as the smallest window of its operations that no
/// order fits, and within it the operations whose answers show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The window's events (indices into the history's events), by call time.
    pub window: Vec<usize>,
    /// Those of them whose answers show the violation, by call time: these answers cannot all
    /// be true, whatever the window's other operations did (each of those may or may not have
    /// taken effect, with any answer).
    pub needed: Vec<usize>,
    /// Reads of the window whose answers are not needed, only that they returned: each found
    /// or created its keys (contract 1), so they existed at one instant of its call.
    pub creators: Vec<usize>,
    /// The report, ready to print.
    pub report: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.report)
    }
}

/// What checking a linearizable history took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    /// Events checked.
    pub events: usize,
    /// Independent parts the keys fell into.
    pub components: usize,
    /// Events of the largest part.
    pub largest: usize,
    /// Search states explored (pairs of placed set and model state).
    pub states: u64,
}

/// Checks histories. [`check`] uses the defaults.
#[derive(Debug, Clone, Copy)]
pub struct Checker {
    partition: bool,
    minimize: bool,
    max_states: u64,
}

impl Default for Checker {
    fn default() -> Self {
        Self {
            partition: true,
            minimize: true,
            max_states: 5_000_000,
        }
    }
}

/// Checks `history` with the default [`Checker`].
pub fn check<K, V>(history: &History<K, V>) -> Result<Summary, CheckError>
where
    K: Clone + Eq + Hash + Ord + fmt::Debug,
    V: Clone + Eq + Hash + fmt::Debug,
{
    Checker::default().check(history)
}

impl Checker {
    /// Whether to check independent keys apart (default: yes). Off, every key is checked
    /// together: the same verdict, more slowly (the tests compare the two).
    pub fn partition(mut self, partition: bool) -> Self {
        self.partition = partition;
        self
    }

    /// Whether to look for the smallest failing window (default: yes). Off, a violation reports
    /// the whole failing part of the history.
    pub fn minimize(mut self, minimize: bool) -> Self {
        self.minimize = minimize;
        self
    }

    /// The most search states (pairs of operations placed and model state) to explore in one
    /// part of the history before giving up undecided (default 5 million, a few hundred MB).
    pub fn max_states(mut self, states: u64) -> Self {
        self.max_states = states;
        self
    }

    /// Checks `history`: `Ok` with what it took if it is linearizable.
    ///
    /// # Errors
    ///
    /// [`CheckError::NotLinearizable`] with the smallest window that shows it,
    /// [`CheckError::Malformed`] if the history cannot come from a store at all, or
    /// [`CheckError::GaveUp`] if the search needed more than [`Checker::max_states`].
    pub fn check<K, V>(&self, history: &History<K, V>) -> Result<Summary, CheckError>
    where
        K: Clone + Eq + Hash + Ord + fmt::Debug,
        V: Clone + Eq + Hash + fmt::Debug,
    {
        let compiled = Compiled::new(history, self.partition).map_err(CheckError::Malformed)?;
        let mut summary = Summary {
            events: history.events.len(),
            components: compiled.components.len(),
            ..Summary::default()
        };
        for component in &compiled.components {
            summary.largest = summary.largest.max(component.steps.len());
            let all = Window::whole(component);
            match all.search(compiled.model, self.max_states) {
                Searched::Linearizable { states } => summary.states += states,
                Searched::GaveUp => {
                    return Err(CheckError::GaveUp {
                        states: self.max_states,
                        events: component.steps.len(),
                    })
                }
                Searched::NotLinearizable { .. } => {
                    let window = if self.minimize {
                        all.smallest_failing(compiled.model).needed(compiled.model)
                    } else {
                        all
                    };
                    let names: Vec<&str> = component
                        .keys
                        .iter()
                        .map(|&key| compiled.key_names[key].as_str())
                        .collect();
                    let names = format!("[{}]", names.join(", "));
                    return Err(CheckError::NotLinearizable(
                        window.violation(history, &names),
                    ));
                }
            }
        }
        Ok(summary)
    }
}

// ---------------------------------------------------------------------------------------------
// Compiling a history
// ---------------------------------------------------------------------------------------------

/// One operation as the search sees it.
#[derive(Clone, Debug)]
struct Step {
    /// Its event in the history.
    event: usize,
    call: Time,
    ret: Time,
    /// Keys it may create while in flight (`usevar`, `using`, a transaction's keys).
    creates: Vec<KeyId>,
    action: Action,
}

/// A set of keys that no operation touches together with another set, and its operations.
struct Component {
    /// Its keys, as the history names them (by their index among all keys).
    keys: Vec<usize>,
    /// The state before the first event.
    initial: Box<[Key]>,
    steps: Vec<Step>,
}

struct Compiled {
    model: Model,
    components: Vec<Component>,
    /// Every key, printed (for reports).
    key_names: Vec<String>,
}

/// Dense numbers for keys or values.
struct Interner<T> {
    ids: FastMap<T, u32>,
}

impl<T: Eq + Hash + Clone> Interner<T> {
    fn new() -> Self {
        Self {
            ids: FastMap::default(),
        }
    }

    fn id(&mut self, item: &T) -> u32 {
        let next = self.ids.len() as u32;
        *self.ids.entry(item.clone()).or_insert(next)
    }
}

/// Union-find over key indices.
struct Sets(Vec<usize>);

impl Sets {
    fn find(&mut self, mut at: usize) -> usize {
        while self.0[at] != at {
            self.0[at] = self.0[self.0[at]];
            at = self.0[at];
        }
        at
    }

    fn join(&mut self, a: usize, b: usize) {
        let (a, b) = (self.find(a), self.find(b));
        if a != b {
            self.0[a.max(b)] = a.min(b);
        }
    }
}

/// An event with global key ids: what it creates, does, and which keys it touches.
struct Global {
    creates: Vec<usize>,
    action: GlobalAction,
}

enum GlobalAction {
    Nothing,
    Observe {
        present: Vec<(usize, u64, ValId)>,
        absent: Vec<usize>,
        /// `dump` and `snapshot`: every key not in `present` is absent.
        whole_store: bool,
    },
    Commit {
        /// Keys by their index among all keys (made local to the part later).
        parts: Vec<Part>,
        outcome: Outcome,
    },
}

impl Global {
    fn keys(&self) -> Vec<usize> {
        let mut keys = self.creates.clone();
        match &self.action {
            GlobalAction::Nothing => {}
            GlobalAction::Observe {
                present, absent, ..
            } => {
                keys.extend(present.iter().map(|p| p.0));
                keys.extend(absent);
            }
            GlobalAction::Commit { parts, .. } => keys.extend(parts.iter().map(|p| p.key as usize)),
        }
        keys
    }

    fn whole_store(&self) -> bool {
        matches!(
            self.action,
            GlobalAction::Observe {
                whole_store: true,
                ..
            }
        )
    }
}

impl Compiled {
    fn new<K, V>(history: &History<K, V>, partition: bool) -> Result<Self, String>
    where
        K: Clone + Eq + Hash + Ord + fmt::Debug,
        V: Clone + Eq + Hash + fmt::Debug,
    {
        let mut keys = Interner::new();
        let mut values = Interner::new();
        let mut value = |v: &Option<V>| -> ValId {
            match v {
                None => NO_VALUE,
                Some(v) => values.id(v) + 1,
            }
        };
        let mut globals = Vec::with_capacity(history.events.len());
        let mut max_start = 0;
        for (at, event) in history.events.iter().enumerate() {
            if event.ret < event.call {
                return Err(format!("event {at} returns before its call: {event:?}"));
            }
            let global = compile_event(event, &mut |k| keys.id(k) as usize, &mut value)
                .map_err(|why| format!("event {at} ({}): {why}", event.op))?;
            if let GlobalAction::Commit { parts, outcome } = &global.action {
                if matches!(outcome, Outcome::Ok | Outcome::Unknown) {
                    for part in parts.iter().filter(|p| p.write == Some(Effect::Remove)) {
                        // The removal's version is version + 1; a new key may start one above.
                        max_start = max_start.max(part.version + 2);
                    }
                }
            }
            globals.push(global);
        }
        let mut initial = Vec::with_capacity(history.initial.len());
        for (key, version, v) in &history.initial {
            initial.push((keys.id(key) as usize, *version, value(v)));
        }
        let n = keys.ids.len();
        let mut key_names = vec![String::new(); n];
        for (key, &id) in &keys.ids {
            key_names[id as usize] = format!("{key:?}");
        }
        let mut sorted: Vec<usize> = (0..n).collect();
        sorted.sort_by(|&a, &b| key_names[a].cmp(&key_names[b]));

        // Components.
        let mut sets = Sets((0..n).collect());
        let mut whole = !partition;
        for global in &globals {
            whole |= global.whole_store();
            let touched = global.keys();
            for pair in touched.windows(2) {
                sets.join(pair[0], pair[1]);
            }
        }
        if whole {
            for key in 1..n {
                sets.join(0, key);
            }
        }
        let mut component_of = vec![usize::MAX; n];
        let mut local = vec![0 as KeyId; n];
        let mut components: Vec<Component> = Vec::new();
        for &key in &sorted {
            let root = sets.find(key);
            if component_of[root] == usize::MAX {
                component_of[root] = components.len();
                components.push(Component {
                    keys: Vec::new(),
                    initial: Box::new([]),
                    steps: Vec::new(),
                });
            }
            let c = component_of[root];
            component_of[key] = c;
            local[key] = components[c].keys.len() as KeyId;
            components[c].keys.push(key);
        }
        if components.is_empty() {
            // Only keyless events (empty `using`s and commits): one part with no keys.
            components.push(Component {
                keys: Vec::new(),
                initial: Box::new([]),
                steps: Vec::new(),
            });
        }
        for component in &mut components {
            let mut state = vec![Key::NEVER_SEEN; component.keys.len()];
            for &(key, version, v) in &initial {
                if component.keys.contains(&key) {
                    state[local[key] as usize] = Key::Known {
                        version,
                        value: crate::model::Val::Is(v),
                    };
                }
            }
            component.initial = state.into();
        }
        for (event, global) in globals.into_iter().enumerate() {
            // A keyless event (an empty `using` or commit) goes to the first part.
            let c = global.keys().first().map_or(0, |&key| component_of[key]);
            let component = &mut components[c];
            let to_local = |key: usize| local[key];
            let action = match global.action {
                GlobalAction::Nothing => Action::Nothing,
                GlobalAction::Observe {
                    present,
                    mut absent,
                    whole_store,
                } => {
                    if whole_store {
                        let listed: FastSet<usize> = present.iter().map(|p| p.0).collect();
                        absent = component
                            .keys
                            .iter()
                            .copied()
                            .filter(|key| !listed.contains(key))
                            .collect();
                    }
                    Action::Observe {
                        present: present
                            .into_iter()
                            .map(|(key, version, v)| (to_local(key), version, v))
                            .collect(),
                        absent: absent.into_iter().map(to_local).collect(),
                    }
                }
                GlobalAction::Commit { parts, outcome } => Action::Commit {
                    parts: parts
                        .into_iter()
                        .map(|part| Part {
                            key: to_local(part.key as usize),
                            ..part
                        })
                        .collect(),
                    outcome,
                },
            };
            let e = &history.events[event];
            component.steps.push(Step {
                event,
                call: e.call,
                ret: e.ret,
                creates: global.creates.into_iter().map(to_local).collect(),
                action,
            });
        }
        components.retain(|c| !c.steps.is_empty());
        Ok(Self {
            model: Model { max_start },
            components,
            key_names,
        })
    }
}

fn compile_event<K, V>(
    event: &Event<K, V>,
    key: &mut dyn FnMut(&K) -> usize,
    value: &mut dyn FnMut(&Option<V>) -> ValId,
) -> Result<Global, String>
where
    K: Eq + Hash,
    V: Clone,
{
    let distinct = |keys: &[usize], what: &str| -> Result<(), String> {
        let mut seen = FastSet::default();
        match keys.iter().all(|k| seen.insert(*k)) {
            true => Ok(()),
            false => Err(format!("a key appears twice in its {what}")),
        }
    };
    let rows = |rows: &[(K, u64, Option<V>)],
                key: &mut dyn FnMut(&K) -> usize,
                value: &mut dyn FnMut(&Option<V>) -> ValId| {
        rows.iter()
            .map(|(k, version, v)| (key(k), *version, value(v)))
            .collect::<Vec<_>>()
    };
    let effect = |write: &Write<V>, value: &mut dyn FnMut(&Option<V>) -> ValId| match write {
        Write::Set(v) => Effect::Value(value(&Some(v.clone()))),
        Write::Clear => Effect::Value(NO_VALUE),
        Write::Remove => Effect::Remove,
    };
    let observe = |present: Vec<(usize, u64, ValId)>| GlobalAction::Observe {
        present,
        absent: Vec::new(),
        whole_store: false,
    };
    Ok(match &event.op {
        Op::Usevar { key: k, seen } => {
            let k = key(k);
            Global {
                creates: vec![k],
                action: match seen {
                    Some((version, v)) => observe(vec![(k, *version, value(v))]),
                    None => GlobalAction::Nothing,
                },
            }
        }
        Op::Using { keys, rows: seen } => {
            let mut creates: Vec<usize> = keys.iter().map(&mut *key).collect();
            creates.sort_unstable();
            creates.dedup();
            let action = match seen {
                Some(seen) => {
                    let present = rows(seen, key, value);
                    let ids: Vec<usize> = present.iter().map(|p| p.0).collect();
                    distinct(&ids, "rows")?;
                    if let Some(stray) = ids.iter().find(|id| !creates.contains(id)) {
                        return Err(format!(
                            "it returned key #{stray}, which it did not ask for"
                        ));
                    }
                    observe(present)
                }
                None => GlobalAction::Nothing,
            };
            Global { creates, action }
        }
        Op::AbandonedRun { reads } => {
            let present = rows(reads, key, value);
            let ids: Vec<usize> = present.iter().map(|p| p.0).collect();
            distinct(&ids, "reads")?;
            Global {
                creates: ids,
                action: observe(present),
            }
        }
        Op::Get { key: k, found } => {
            let k = key(k);
            Global {
                creates: Vec::new(),
                action: match found {
                    Some((version, v)) => observe(vec![(k, *version, value(v))]),
                    None => GlobalAction::Observe {
                        present: Vec::new(),
                        absent: vec![k],
                        whole_store: false,
                    },
                },
            }
        }
        Op::Dump { rows: seen } | Op::Snapshot { rows: seen } => {
            let present = rows(seen, key, value);
            let ids: Vec<usize> = present.iter().map(|p| p.0).collect();
            distinct(&ids, "rows")?;
            Global {
                creates: Vec::new(),
                action: GlobalAction::Observe {
                    present,
                    absent: Vec::new(),
                    whole_store: true,
                },
            }
        }
        Op::Commit { parts, outcome } => {
            let parts: Vec<_> = parts
                .iter()
                .map(|part| Part {
                    key: key(&part.key) as KeyId,
                    version: part.version,
                    value: None,
                    write: part.write.as_ref().map(|w| effect(w, value)),
                    absent: false,
                })
                .collect();
            let ids: Vec<usize> = parts.iter().map(|p| p.key as usize).collect();
            distinct(&ids, "parts")?;
            Global {
                creates: Vec::new(),
                action: GlobalAction::Commit {
                    parts,
                    outcome: *outcome,
                },
            }
        }
        Op::Transaction {
            touched,
            reads,
            absent,
            writes,
            outcome,
        } => {
            if matches!(outcome, Outcome::ConcurrentUpdate | Outcome::BusyRetry) {
                return Err("a transaction reports only its committed run (Ok or Unknown)".into());
            }
            let read = rows(reads, key, value);
            let absent: Vec<(usize, u64)> = absent.iter().map(|(k, v)| (key(k), *v)).collect();
            let ids: Vec<usize> = read
                .iter()
                .map(|p| p.0)
                .chain(absent.iter().map(|a| a.0))
                .collect();
            distinct(&ids, "reads")?;
            let mut effects: FastMap<usize, Effect> = FastMap::default();
            for (k, write) in writes {
                let k = key(k);
                if !ids.contains(&k) {
                    return Err(format!("it writes key #{k} without having read it"));
                }
                if effects.insert(k, effect(write, value)).is_some() {
                    return Err(format!("it writes key #{k} twice"));
                }
            }
            let mut creates: Vec<usize> = touched.iter().map(&mut *key).collect();
            creates.extend(read.iter().map(|p| p.0));
            creates.sort_unstable();
            creates.dedup();
            let present = read.into_iter().map(|(k, version, v)| Part {
                key: k as KeyId,
                version,
                value: Some(v),
                write: effects.get(&k).copied(),
                absent: false,
            });
            let absent = absent.into_iter().map(|(k, version)| Part {
                key: k as KeyId,
                version,
                value: None,
                write: effects.get(&k).copied(),
                absent: true,
            });
            Global {
                creates,
                action: GlobalAction::Commit {
                    parts: present.chain(absent).collect(),
                    outcome: *outcome,
                },
            }
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Windows of a component, and the search
// ---------------------------------------------------------------------------------------------

/// Some of a component's steps, with the state they start from.
#[derive(Clone)]
struct Window {
    steps: Vec<Step>,
    /// Per step: whether its answer and outcome are left open (in flight at an edge of the
    /// window, or forgotten as not needed).
    open: Vec<bool>,
    initial: Box<[Key]>,
    /// Where the window starts (`None`: with the history, in its initial state) and ends
    /// (`None`: with the history).
    start: Option<Time>,
    end: Option<Time>,
}

enum Searched {
    Linearizable {
        states: u64,
    },
    NotLinearizable {
        states: u64,
    },
    /// More states than the budget: undecided.
    GaveUp,
}

/// The search budget, in states, of each trial while looking for the smallest window (a trial
/// that needs more is taken as not failing: the window found is always one that was shown to
/// fail).
const TRIAL_STATES: u64 = 100_000;

/// The search budget, in states, of all the trials that look for the operations a window
/// needs (a few seconds at most).
const NEEDED_STATES: u64 = 2_000_000;

/// A step whose answer and outcome are unknown: it may or may not take effect. A read that
/// returned by `ret` still created its keys (it found them all existing at its instant); one
/// that may still be in flight (`ret` is `NEVER`) may create them at any time, as it may while
/// in flight anyway.
fn forget(step: &Step, ret: Time) -> Step {
    let action = match &step.action {
        Action::Observe { .. } | Action::Create(_) if ret != NEVER && !step.creates.is_empty() => {
            Action::Create(step.creates.clone())
        }
        Action::Nothing | Action::Observe { .. } | Action::Create(_) => Action::Nothing,
        Action::Commit { parts, .. } => Action::Commit {
            parts: parts.clone(),
            outcome: Outcome::Unknown,
        },
    };
    Step {
        event: step.event,
        call: step.call,
        ret,
        creates: step.creates.clone(),
        action,
    }
}

impl Window {
    fn whole(component: &Component) -> Self {
        Self {
            steps: component.steps.clone(),
            open: vec![false; component.steps.len()],
            initial: component.initial.clone(),
            start: None,
            end: None,
        }
    }

    /// The steps that overlap `[start, end]`: those in flight at `start` (called before it)
    /// and at `end` (returned after it) may or may not take effect; with `start` `None`, from
    /// the component's first step, in its initial state; otherwise from any state.
    fn cut(component: &Component, start: Option<Time>, end: Time) -> Self {
        let mut steps = Vec::new();
        let mut open = Vec::new();
        for step in &component.steps {
            if step.call > end || start.is_some_and(|start| step.ret < start) {
                continue;
            }
            let before = start.is_some_and(|start| step.call < start);
            if step.ret > end {
                steps.push(forget(step, NEVER));
            } else if before {
                steps.push(forget(step, step.ret));
            } else {
                steps.push(step.clone());
            }
            open.push(before || step.ret > end);
        }
        let initial = match start {
            None => component.initial.clone(),
            Some(_) => vec![Key::Unknown; component.keys.len()].into(),
        };
        Self {
            steps,
            open,
            initial,
            start,
            end: Some(end),
        }
    }

    fn fails(&self, model: Model) -> bool {
        matches!(
            self.search(model, TRIAL_STATES),
            Searched::NotLinearizable { .. }
        )
    }

    /// Whether the window fails, found within `budget` states (and at most `TRIAL_STATES`);
    /// takes the states explored from `budget`.
    fn fails_within(&self, model: Model, budget: &mut u64) -> bool {
        let (fails, states) = match self.search(model, TRIAL_STATES.min(*budget)) {
            Searched::NotLinearizable { states } => (true, states),
            Searched::Linearizable { states } => (false, states),
            Searched::GaveUp => (false, TRIAL_STATES.min(*budget)),
        };
        *budget = budget.saturating_sub(states);
        fails
    }

    /// The same window with as many steps as possible forgotten (their answers and outcomes
    /// unknown) while it still fails: what remains is what shows the violation. Forgetting only
    /// relaxes a window, so it stays a witness. Reads first (forgetting one costs the search
    /// nothing), then commits (each forgotten commit may or may not have landed: two branches);
    /// each in chunks, halving down to single steps (on windows of at most `SINGLES` steps),
    /// within a budget of search states for the whole pass.
    fn needed(mut self, model: Model) -> Self {
        const SINGLES: usize = 400;
        let mut budget = NEEDED_STATES;
        for commits in [false, true] {
            let candidates = |w: &Window| -> Vec<usize> {
                (0..w.steps.len())
                    .filter(|&at| !w.open[at])
                    .filter(|&at| matches!(w.steps[at].action, Action::Commit { .. }) == commits)
                    .collect()
            };
            let all = candidates(&self).len();
            let floor = all.div_ceil(SINGLES).max(1);
            let mut chunk = all.div_ceil(2).max(1);
            loop {
                let mut at = 0;
                loop {
                    let remaining = candidates(&self);
                    if at >= remaining.len() || budget == 0 {
                        break;
                    }
                    let group = &remaining[at..(at + chunk).min(remaining.len())];
                    let mut trial = self.clone();
                    for &step in group {
                        trial.steps[step] = forget(&trial.steps[step], trial.steps[step].ret);
                        trial.open[step] = true;
                    }
                    if trial.fails_within(model, &mut budget) {
                        self = trial; // the chunk is not needed; the next one slid into `at`
                    } else {
                        at += chunk;
                    }
                }
                if chunk <= floor || budget == 0 {
                    break;
                }
                chunk = chunk.div_ceil(2).max(floor);
            }
        }
        self
    }

    /// For a whole component that fails: the shortest prefix that fails, then the latest start
    /// from which it still fails from any state.
    fn smallest_failing(&self, model: Model) -> Self {
        let component = Component {
            keys: (0..self.initial.len()).collect(),
            initial: self.initial.clone(),
            steps: self.steps.clone(),
        };
        let mut ends: Vec<Time> = component.steps.iter().map(|s| s.ret).collect();
        ends.sort_unstable();
        ends.dedup();
        // The last end (the whole component) is known to fail.
        let last = ends.len() - 1;
        let end_at = first_true(0, last, |at| {
            Window::cut(&component, None, ends[at]).fails(model)
        });
        let end = ends[end_at];
        let mut starts: Vec<Time> = component
            .steps
            .iter()
            .map(|s| s.call)
            .filter(|&call| call <= end)
            .collect();
        starts.sort_unstable();
        starts.dedup();
        // Failing is monotone in the start: an earlier start keeps more of the history.
        let fails_from = |at: usize| Window::cut(&component, Some(starts[at]), end).fails(model);
        if starts.is_empty() || !fails_from(0) {
            return Window::cut(&component, None, end);
        }
        let latest = last_true(0, starts.len() - 1, fails_from);
        Window::cut(&component, Some(starts[latest]), end)
    }

    /// Wing and Gong's search with memoization, over Porcupine's list of call and return
    /// entries (see the module's documentation).
    fn search(&self, model: Model, budget: u64) -> Searched {
        let n = self.steps.len();
        if n == 0 {
            return Searched::Linearizable { states: 0 };
        }
        // Entries: 2i is step i's call, 2i + 1 its return; `head` is the list's sentinel.
        let head = 2 * n;
        let mut order: Vec<usize> = (0..2 * n).collect();
        let time = |e: usize| {
            let step = &self.steps[e / 2];
            if e % 2 == 0 {
                step.call
            } else {
                step.ret
            }
        };
        // Calls before returns at the same instant: such operations count as concurrent.
        order.sort_by_key(|&e| (time(e), e % 2, e));
        const NIL: usize = usize::MAX;
        let mut next = vec![NIL; 2 * n + 1];
        let mut prev = vec![NIL; 2 * n + 1];
        let mut last = head;
        for &e in &order {
            next[last] = e;
            prev[e] = last;
            last = e;
        }

        let (succ, mut waiting) = version_order(&self.steps);
        let zobrist = zobrist(n);
        let hasher = foldhash::fast::FixedState::with_seed(0x5eed);
        let mut memo: FastSet<(u128, u64)> = FastSet::default();

        struct Frame {
            step: usize,
            state: Box<[Key]>,
            alternative: usize,
        }
        let mut frames: Vec<Frame> = Vec::new();
        let mut state = self.initial.clone();
        let mut placed: u128 = 0;
        let mut entry = next[head];
        let mut from = 0;
        while next[head] != NIL {
            debug_assert!(entry != NIL, "the list always ends with a return entry");
            if entry % 2 == 1 {
                // A return whose call is not placed yet: undo the last placement.
                let Some(frame) = frames.pop() else {
                    return Searched::NotLinearizable {
                        states: memo.len() as u64,
                    };
                };
                let (call, ret) = (2 * frame.step, 2 * frame.step + 1);
                next[prev[ret]] = ret;
                if next[ret] != NIL {
                    prev[next[ret]] = ret;
                }
                next[prev[call]] = call;
                if next[call] != NIL {
                    prev[next[call]] = call;
                }
                for &s in &succ[frame.step] {
                    waiting[s] += 1;
                }
                placed ^= zobrist[frame.step];
                state = frame.state;
                entry = call;
                from = frame.alternative + 1;
                continue;
            }
            let step = entry / 2;
            if waiting[step] == 0 {
                let mut creatable = |key: KeyId| {
                    // Some call that creates `key` is in flight: its call entry comes before the
                    // first return entry still listed.
                    let mut e = next[head];
                    while e != NIL && e % 2 == 0 {
                        if self.steps[e / 2].creates.contains(&key) {
                            return true;
                        }
                        e = next[e];
                    }
                    false
                };
                let alternatives = model.step(&state, &self.steps[step].action, &mut creatable);
                let with = placed ^ zobrist[step];
                let chosen = alternatives
                    .into_iter()
                    .enumerate()
                    .skip(from)
                    .find(|(_, next_state)| memo.insert((with, hasher.hash_one(next_state))));
                if memo.len() as u64 > budget {
                    return Searched::GaveUp;
                }
                if let Some((alternative, next_state)) = chosen {
                    let (call, ret) = (2 * step, 2 * step + 1);
                    next[prev[call]] = next[call];
                    if next[call] != NIL {
                        prev[next[call]] = prev[call];
                    }
                    next[prev[ret]] = next[ret];
                    if next[ret] != NIL {
                        prev[next[ret]] = prev[ret];
                    }
                    for &s in &succ[step] {
                        waiting[s] -= 1;
                    }
                    frames.push(Frame {
                        step,
                        state: std::mem::replace(&mut state, next_state),
                        alternative,
                    });
                    placed = with;
                    entry = next[head];
                    from = 0;
                    continue;
                }
            }
            entry = next[entry];
            from = 0;
        }
        Searched::Linearizable {
            states: memo.len() as u64,
        }
    }

    fn violation<K, V>(&self, history: &History<K, V>, names: &str) -> Violation
    where
        K: fmt::Debug,
        V: fmt::Debug,
    {
        let mut order: Vec<usize> = (0..self.steps.len()).collect();
        order.sort_by_key(|&at| {
            (
                self.steps[at].call,
                self.steps[at].ret,
                self.steps[at].event,
            )
        });
        let window: Vec<usize> = order.iter().map(|&at| self.steps[at].event).collect();
        // A read whose answer is left open still created its keys (contract 1): it counts.
        let created =
            |at: usize| self.open[at] && matches!(self.steps[at].action, Action::Create(_));
        let pick = |f: &dyn Fn(usize) -> bool| -> Vec<usize> {
            order
                .iter()
                .filter(|&&at| f(at))
                .map(|&at| self.steps[at].event)
                .collect()
        };
        let needed = pick(&|at| !self.open[at]);
        let creators = pick(&created);
        let others = window.len() - needed.len() - creators.len();
        // Small windows are shown whole; large ones, what is needed and the creating reads
        // among the needed operations.
        let (first, last) = order
            .iter()
            .filter(|&&at| !self.open[at])
            .fold((NEVER, 0), |(first, last), &at| {
                (first.min(self.steps[at].call), last.max(self.steps[at].ret))
            });
        let shown: Vec<usize> = order
            .iter()
            .copied()
            .filter(|&at| {
                let step = &self.steps[at];
                window.len() <= 30
                    || !self.open[at]
                    || (created(at) && step.call <= last && step.ret >= first)
            })
            .collect();
        let origin = shown.first().map_or(0, |&at| self.steps[at].call);
        let micros = |t: Time| -> String {
            if t == NEVER {
                "never".to_string()
            } else {
                format!("{:.3}", t.saturating_sub(origin) as f64 / 1e3)
            }
        };
        let mut report = String::new();
        use std::fmt::Write as _;
        let _ = write!(
            report,
            "not linearizable: these {} operations cannot all have answered what they did, in any \
             order that respects real time",
            needed.len()
        );
        if !creators.is_empty() {
            let _ = write!(
                report,
                ", given that {} reads marked c found or created their keys (whatever else they \
                 answered)",
                creators.len()
            );
        }
        let _ = match others {
            0 => writeln!(report),
            _ => writeln!(
                report,
                ", whatever the {others} other operations of the window did (each may or may not \
                 have taken effect, with any answer){}",
                if window.len() <= 30 {
                    "; those are marked ~"
                } else {
                    ""
                }
            ),
        };
        let ms = |t: Time| format!("{:.6} ms", t as f64 / 1e6);
        let _ = writeln!(
            report,
            "keys {}; window: {} to {}",
            names,
            match self.start {
                Some(start) => format!("{} into the run, from any state", ms(start)),
                None => "the start of the run, from the initial state,".to_string(),
            },
            match self.end {
                Some(end) if end != NEVER => ms(end),
                _ => "the end".to_string(),
            }
        );
        let _ = writeln!(
            report,
            "     client    call µs  return µs  operation -> answer"
        );
        for &at in &shown {
            let e = &history.events[self.steps[at].event];
            let mark = match (self.open[at], created(at)) {
                (false, _) => " ",
                (true, true) => "c",
                (true, false) => "~",
            };
            let _ = writeln!(
                report,
                "  {mark} t{:<6} {:>10} {:>10}  {}",
                e.client,
                micros(e.call),
                micros(e.ret),
                e.op
            );
        }
        Violation {
            window,
            needed,
            creators,
            report,
        }
    }
}

/// The first `at` in `lo..=hi` where `f` holds, given that it holds at `hi` and, once it
/// holds, holds from there on.
fn first_true(mut lo: usize, mut hi: usize, mut f: impl FnMut(usize) -> bool) -> usize {
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if f(mid) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    hi
}

/// The last `at` in `lo..=hi` where `f` holds, given that it holds at `lo` and, once it stops
/// holding, never holds again.
fn last_true(mut lo: usize, mut hi: usize, mut f: impl FnMut(usize) -> bool) -> usize {
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if f(mid) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo
}

/// 128 random bits per step (splitmix64, fixed seed: runs are reproducible).
fn zobrist(n: usize) -> Vec<u128> {
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    (0..n)
        .map(|_| (u128::from(next()) << 64) | u128::from(next()))
        .collect()
}

/// The order that versions impose (see the module's documentation, point 3): for each step, the
/// steps that must come after it, and for each step how many must come before it.
fn version_order(steps: &[Step]) -> (Vec<Vec<usize>>, Vec<u32>) {
    // (key, version) -> the steps that wrote it, and the steps that saw it.
    let mut writers: FastMap<(KeyId, u64), Vec<usize>> = FastMap::default();
    let mut seers: FastMap<(KeyId, u64), Vec<usize>> = FastMap::default();
    // Single-key commits that failed: they come after the next version of their key.
    let mut failed: Vec<(usize, KeyId, u64)> = Vec::new();
    for (at, step) in steps.iter().enumerate() {
        match &step.action {
            Action::Nothing | Action::Create(_) => {}
            Action::Observe { present, .. } => {
                for &(key, version, _) in present {
                    seers.entry((key, version)).or_default().push(at);
                }
            }
            Action::Commit {
                parts,
                outcome: Outcome::Ok,
            } => {
                for part in parts {
                    if !part.absent {
                        seers.entry((part.key, part.version)).or_default().push(at);
                    }
                    if part.write.is_some() {
                        writers
                            .entry((part.key, part.version + 1))
                            .or_default()
                            .push(at);
                    }
                }
            }
            Action::Commit {
                parts,
                outcome: Outcome::ConcurrentUpdate,
            } if parts.len() == 1 => failed.push((at, parts[0].key, parts[0].version)),
            Action::Commit { .. } => {}
        }
    }
    let writer = |key: KeyId, version: u64| match writers.get(&(key, version)) {
        Some(w) if w.len() == 1 => Some(w[0]),
        _ => None, // none, or two (then no order fits anyway: the search finds out)
    };
    let mut succ = vec![Vec::new(); steps.len()];
    let mut waiting = vec![0u32; steps.len()];
    let mut edge = |from: usize, to: usize| {
        if from != to {
            succ[from].push(to);
            waiting[to] += 1;
        }
    };
    for (&(key, version), seen_by) in &seers {
        let before = writer(key, version);
        let after = writer(key, version + 1);
        for &seer in seen_by {
            if let Some(w) = before {
                edge(w, seer);
            }
            if let Some(w) = after {
                edge(seer, w);
            }
        }
    }
    for (at, key, version) in failed {
        if let Some(w) = writer(key, version + 1) {
            edge(w, at);
        }
    }
    (succ, waiting)
}
