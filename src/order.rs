//! Key order without trusting the user's `Ord`.
//!
//! The standard library's sorts may panic when `Ord` is not a total order. A broken `Ord` must
//! never make `using` or `dump` panic or lose a key (keys are matched by `Hash`/`Eq`, commits
//! ordered by slot id), so this heapsort (insertion sort when short) only compares and swaps in bounds: with a broken `Ord`
//! the order is unspecified, and nothing else goes wrong. In place, no allocation.

use std::cmp::Ordering;

/// Sorts `items` by `compare`; never panics, whatever `compare` answers.
pub(crate) fn sort_by<T>(items: &mut [T], compare: impl Fn(&T, &T) -> Ordering) {
    let less = |items: &[T], a: usize, b: usize| compare(&items[a], &items[b]) == Ordering::Less;
    if items.len() <= 12 {
        // Insertion sort: fewer comparisons for the few keys of a typical `using`.
        for end in 1..items.len() {
            let mut at = end;
            while at > 0 && less(items, at, at - 1) {
                items.swap(at, at - 1);
                at -= 1;
            }
        }
        return;
    }
    // Moves the element at `root` down the max-heap held in `items[..end]`.
    let sift_down = |items: &mut [T], mut root: usize, end: usize| loop {
        let mut child = 2 * root + 1;
        if child >= end {
            return;
        }
        if child + 1 < end && less(items, child, child + 1) {
            child += 1;
        }
        if !less(items, root, child) {
            return;
        }
        items.swap(root, child);
        root = child;
    };
    for root in (0..items.len() / 2).rev() {
        sift_down(items, root, items.len());
    }
    for end in (1..items.len()).rev() {
        items.swap(0, end);
        sift_down(items, 0, end);
    }
}

#[cfg(test)]
mod tests {
    use super::sort_by;

    #[test]
    fn sorts_like_std_for_a_total_order() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for len in 0..70 {
            let mut items: Vec<u64> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed % 50
                })
                .collect();
            let mut expected = items.clone();
            expected.sort();
            sort_by(&mut items, |a, b| a.cmp(b));
            assert_eq!(items, expected);
        }
    }

    #[test]
    fn keeps_every_item_under_a_random_order() {
        let seed = std::cell::Cell::new(7_u64);
        let mut items: Vec<u32> = (0..200).collect();
        sort_by(&mut items, |_, _| {
            seed.set(seed.get().wrapping_mul(6364136223846793005).wrapping_add(1));
            [
                std::cmp::Ordering::Less,
                std::cmp::Ordering::Equal,
                std::cmp::Ordering::Greater,
            ][(seed.get() >> 33) as usize % 3]
        });
        items.sort();
        assert_eq!(items, (0..200).collect::<Vec<_>>());
    }
}
