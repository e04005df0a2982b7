//! Key order without trusting the user's `Ord`.
//!
//! The standard library's sorts may panic when `Ord` is not a total order. A broken `Ord` must
//! never make `using` or `dump` panic or lose a key (keys are matched by `Hash`/`Eq`, commits
//! ordered by slot id), so this merge sort only ever asks "is b before a?": with a broken `Ord`
//! the order is unspecified, and nothing else goes wrong.

use std::cmp::Ordering;

/// Sorts `items` by `compare`, stably; never panics, whatever `compare` answers.
pub(crate) fn sort_by<T>(items: Vec<T>, compare: &impl Fn(&T, &T) -> Ordering) -> Vec<T> {
    if items.len() < 2 {
        return items;
    }
    let mut left = items;
    let right = left.split_off(left.len() / 2);
    let (left, right) = (sort_by(left, compare), sort_by(right, compare));
    let mut merged = Vec::with_capacity(left.len() + right.len());
    let (mut left, mut right) = (left.into_iter().peekable(), right.into_iter().peekable());
    while let (Some(a), Some(b)) = (left.peek(), right.peek()) {
        let next = match compare(b, a) {
            Ordering::Less => right.next(),
            Ordering::Equal | Ordering::Greater => left.next(),
        };
        merged.extend(next);
    }
    merged.extend(left);
    merged.extend(right);
    merged
}
