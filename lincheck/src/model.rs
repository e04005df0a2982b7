//! The sequential model of the whole store: what each operation does, and whether what it
//! answered is possible, from a given state. It is exactly the contract (`docs::contract`), with
//! the freedom the contract leaves:
//!
//! - **New keys** start at version 0, or, once keys were removed, one above the *floor* (the
//!   highest version reached by the removed keys unlinked so far, contract 23). Unlinking
//!   follows a removal's commit at a time no operation reports, and the floor is per store, so
//!   the model keeps only the contract's promise per key: a key created again starts above its
//!   previous incarnation's last version (its removal's), and any key's first version is 0 or
//!   lies between 2 and one above the highest removal version in the history.
//! - **Creation** happens inside `usevar`, `using` and transactions, at a time no operation
//!   reports (and again if a removal landed before the read: `using` then creates the key
//!   anew). So a key may come into existence at any instant while one of those calls is in
//!   flight (the search knows which are): an operation that finds an absent key existing, at a
//!   first version and with no value, is allowed then, and only then.
//! - **Versions say everything**: a key's versions only grow, across removals too, so a commit
//!   whose handles hold the versions the keys have now validates, and no other does.
//!
//! States are small (one entry per key of the component), copied at each step.

use crate::history::Outcome;

/// A key, by its index among the keys of the part of the history being checked.
pub(crate) type KeyId = u32;

/// A value, by its index among the values of the history; [`NO_VALUE`] is "no value".
pub(crate) type ValId = u32;

/// "No value" (a key never written, or cleared).
pub(crate) const NO_VALUE: ValId = 0;

/// A key's value in a state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Val {
    /// Not known (only when checking a window of a history, which starts from any state).
    Unknown,
    /// This value ([`NO_VALUE`]: none).
    Is(ValId),
}

/// A key in a state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Key {
    /// Anything (a window of a history starts from any state).
    Unknown,
    /// The key does not exist. Created now, it would start at version 0 if `zero`, or at any
    /// version in `lo..=max_start`.
    Absent { lo: u64, zero: bool },
    /// The key exists with this version and value.
    Known { version: u64, value: Val },
    /// The key was created and not written since: no value, at a first version not known yet
    /// (`zero` and `lo` as for `Absent`). Only a read whose answer the checker leaves open
    /// creates it so (see [`Action::Create`]).
    Fresh { lo: u64, zero: bool },
}

impl Key {
    /// A key that never existed.
    pub(crate) const NEVER_SEEN: Key = Key::Absent { lo: 2, zero: true };
}

/// What a write does to its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Writes this value (`NO_VALUE`: `clear`).
    Value(ValId),
    /// Removes the key.
    Remove,
}

/// One key of a commit: the version it must have, the value it must have (transactions check
/// the values their closure saw; handle commits only versions), and the write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Part {
    pub key: KeyId,
    pub version: u64,
    pub value: Option<ValId>,
    pub write: Option<Effect>,
    /// The key must be absent, and would be created at `version`, or be there at `version` with
    /// no value (a transaction of a backend whose reads create nothing and do not tell the two
    /// apart); a write makes it `version + 1`.
    pub absent: bool,
}

/// What an operation does, as the search sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Nothing the checker can hold it to (a read whose answer is unknown); it may still have
    /// created keys (see [`Step::creates`](crate::check)).
    Nothing,
    /// A read at one instant: these keys exist with these versions and values, these do not.
    Observe {
        present: Vec<(KeyId, u64, ValId)>,
        absent: Vec<KeyId>,
    },
    /// A commit (of handles, or of a transaction's run) and its outcome.
    Commit { parts: Vec<Part>, outcome: Outcome },
    /// A read that created these keys (those that were absent), whose answer is left open
    /// (while looking for the operations a violation needs): the keys exist from its instant
    /// on, at first versions nobody saw.
    Create(Vec<KeyId>),
}

/// The model's parameters.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Model {
    /// The highest first version a key can have: one above the highest removal version that
    /// may have landed (0 if nothing was removed: every key starts at 0).
    pub max_start: u64,
}

impl Model {
    /// Whether a key absent as `key` could be created at `version`.
    fn can_start(&self, key: Key, version: u64) -> bool {
        match key {
            Key::Absent { lo, zero } | Key::Fresh { lo, zero } => {
                (zero && version == 0) || (lo <= version && version <= self.max_start)
            }
            Key::Unknown => true,
            Key::Known { .. } => false,
        }
    }

    /// Whether `key` can be seen existing at `version` with `value`, and the state after
    /// (unknowns resolved, the key created if it may be now).
    fn see(
        &self,
        state: &mut [Key],
        key: KeyId,
        version: u64,
        value: ValId,
        creatable: &mut dyn FnMut(KeyId) -> bool,
    ) -> bool {
        let slot = &mut state[key as usize];
        match *slot {
            Key::Known {
                version: v,
                value: Val::Is(x),
            } => v == version && x == value,
            Key::Known {
                version: v,
                value: Val::Unknown,
            } if v == version => {
                *slot = Key::Known {
                    version,
                    value: Val::Is(value),
                };
                true
            }
            Key::Known { .. } => false,
            Key::Unknown => {
                *slot = Key::Known {
                    version,
                    value: Val::Is(value),
                };
                true
            }
            fresh @ Key::Fresh { .. } => {
                let seen = value == NO_VALUE && self.can_start(fresh, version);
                if seen {
                    *slot = Key::Known {
                        version,
                        value: Val::Is(NO_VALUE),
                    };
                }
                seen
            }
            absent @ Key::Absent { .. } => {
                let created =
                    value == NO_VALUE && self.can_start(absent, version) && creatable(key);
                if created {
                    *slot = Key::Known {
                        version,
                        value: Val::Is(NO_VALUE),
                    };
                }
                created
            }
        }
    }

    /// Whether `key` can be seen absent, and the state after.
    fn see_absent(state: &mut [Key], key: KeyId) -> bool {
        let slot = &mut state[key as usize];
        match *slot {
            Key::Absent { .. } => true,
            Key::Unknown => {
                *slot = Key::Absent { lo: 0, zero: true };
                true
            }
            Key::Known { .. } | Key::Fresh { .. } => false,
        }
    }

    /// Applies a commit that lands: every part's key has the part's version (and value, if the
    /// part names one), then the writes. `None` if it cannot land from `state`.
    fn land(
        &self,
        state: &[Key],
        parts: &[Part],
        creatable: &mut dyn FnMut(KeyId) -> bool,
    ) -> Option<Box<[Key]>> {
        let mut next: Box<[Key]> = state.into();
        for part in parts {
            let ok = match part.value {
                // Absent (it would be created at this version), or there with no value.
                _ if part.absent => match next[part.key as usize] {
                    absent @ Key::Absent { .. } => self.can_start(absent, part.version),
                    Key::Unknown => true,
                    _ => self.see(&mut next, part.key, part.version, NO_VALUE, creatable),
                },
                // A transaction's read: it may have created the key itself.
                Some(value) => self.see(&mut next, part.key, part.version, value, creatable),
                None => match next[part.key as usize] {
                    Key::Known { version, .. } => version == part.version,
                    Key::Unknown => {
                        next[part.key as usize] = Key::Known {
                            version: part.version,
                            value: Val::Unknown,
                        };
                        true
                    }
                    // Created by a read whose answer is left open, at this version maybe.
                    fresh @ Key::Fresh { .. } if self.can_start(fresh, part.version) => {
                        next[part.key as usize] = Key::Known {
                            version: part.version,
                            value: Val::Is(NO_VALUE),
                        };
                        true
                    }
                    Key::Absent { .. } | Key::Fresh { .. } => false,
                },
            };
            if !ok {
                return None;
            }
        }
        for part in parts {
            let Some(effect) = part.write else { continue };
            let version = part.version + 1;
            next[part.key as usize] = match effect {
                Effect::Value(value) => Key::Known {
                    version,
                    value: Val::Is(value),
                },
                // The removal counts as a version; the key's next incarnation starts above it.
                Effect::Remove => Key::Absent {
                    lo: version + 1,
                    zero: false,
                },
            };
        }
        Some(next)
    }

    /// Whether a commit of `parts` can fail from `state`: some key does not have its part's
    /// version (a key's versions only grow, so it changed since the handle's read).
    fn can_fail(&self, state: &[Key], parts: &[Part]) -> bool {
        parts.iter().any(|part| match state[part.key as usize] {
            key @ Key::Absent { .. } if part.absent => !self.can_start(key, part.version),
            Key::Known {
                version,
                value: Val::Is(NO_VALUE) | Val::Unknown,
            } if part.absent => version != part.version,
            _ if part.absent => true,
            Key::Known { version, .. } => version != part.version,
            Key::Unknown | Key::Absent { .. } | Key::Fresh { .. } => true,
        })
    }

    /// Every state the operation can leave behind from `state`, given what it answered; none if
    /// its answer is impossible from `state`. `creatable(key)`: whether some call that creates
    /// `key` is in flight at this point of the search.
    pub(crate) fn step(
        &self,
        state: &[Key],
        action: &Action,
        creatable: &mut dyn FnMut(KeyId) -> bool,
    ) -> Vec<Box<[Key]>> {
        match action {
            Action::Nothing => vec![state.into()],
            Action::Create(keys) => {
                let mut next: Box<[Key]> = state.into();
                for &key in keys {
                    if let Key::Absent { lo, zero } = next[key as usize] {
                        next[key as usize] = Key::Fresh { lo, zero };
                    }
                }
                vec![next]
            }
            Action::Observe { present, absent } => {
                let mut next: Box<[Key]> = state.into();
                let ok = present.iter().all(|&(key, version, value)| {
                    self.see(&mut next, key, version, value, creatable)
                }) && absent.iter().all(|&key| Self::see_absent(&mut next, key));
                if ok {
                    vec![next]
                } else {
                    Vec::new()
                }
            }
            Action::Commit { parts, outcome } => {
                let mut next = Vec::with_capacity(2);
                match outcome {
                    Outcome::Ok => next.extend(self.land(state, parts, creatable)),
                    Outcome::ConcurrentUpdate => {
                        if self.can_fail(state, parts) {
                            next.push(state.into());
                        }
                    }
                    // Nothing was written, and the contract asks nothing else of it.
                    Outcome::BusyRetry => next.push(state.into()),
                    Outcome::Unknown => {
                        next.extend(self.land(state, parts, creatable));
                        next.push(state.into());
                    }
                }
                next
            }
        }
    }
}
