//! A map keyed by numbers handed out in increasing order (message ids, queue positions) that
//! mostly leave in about the order they came: the outbox's unsettled messages and queued items.
//!
//! A B-tree costs a walk and, now and then, a node split or merge that moves whole values per
//! insert and remove; for a queue of a few hundred 100-byte items that was about a tenth of
//! the CPU of sending 1 KiB messages over TLS/TCP. Here the entries from `base` on sit in a
//! ring buffer, one slot per key, so the usual insert at the end and remove near the front
//! are O(1). A key that stays long while later ones come and go (an item starved by its
//! niceness, a message whose antecedent is never acknowledged) would pin the buffer's front
//! and grow it by a slot per later key; instead, once the buffer is mostly empty slots, its
//! front entries move to a B-tree of stragglers, which keeps memory in proportion to the
//! entries held. Keys inserted below `base` (an item queued again) go there too.
//!
//! [`LaneSet`] does the same for an ordered set whose keys mostly come in increasing order
//! and leave from the front: the ready queue ordered by (niceness, seq).
//!
//! Iteration is in key order, so nothing here depends on hashing.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Empty slots tolerated beyond the entries held before stragglers move out of the buffer
/// (and the gap an insert may open before the buffer is emptied into the B-tree).
const SLACK: usize = 64;

#[derive(Debug)]
pub(crate) struct SeqMap<T> {
    /// The key of `window[0]`; every key in `old` is below it.
    base: u64,
    window: VecDeque<Option<T>>,
    /// The `Some` slots in `window`.
    held: usize,
    old: BTreeMap<u64, T>,
}

impl<T> Default for SeqMap<T> {
    fn default() -> Self {
        SeqMap {
            base: 0,
            window: VecDeque::new(),
            held: 0,
            old: BTreeMap::new(),
        }
    }
}

impl<T> SeqMap<T> {
    pub(crate) fn len(&self) -> usize {
        self.held + self.old.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn get(&self, key: u64) -> Option<&T> {
        match key.checked_sub(self.base) {
            None => self.old.get(&key),
            Some(i) => self.window.get(usize::try_from(i).ok()?)?.as_ref(),
        }
    }

    pub(crate) fn get_mut(&mut self, key: u64) -> Option<&mut T> {
        match key.checked_sub(self.base) {
            None => self.old.get_mut(&key),
            Some(i) => self.window.get_mut(usize::try_from(i).ok()?)?.as_mut(),
        }
    }

    pub(crate) fn contains_key(&self, key: u64) -> bool {
        self.get(key).is_some()
    }

    /// Inserts `value` at `key`, returning the value it replaces.
    pub(crate) fn insert(&mut self, key: u64, value: T) -> Option<T> {
        if self.window.is_empty() && key >= self.base {
            self.base = key;
        }
        let Some(i) = key.checked_sub(self.base) else {
            return self.old.insert(key, value);
        };
        let end = self.window.len() as u64;
        if i >= end && i - end > (SLACK + self.window.len()) as u64 {
            // A long jump ahead: the buffer moves there, what it held becomes stragglers.
            self.spill_all();
            self.base = key;
            return self.insert(key, value);
        }
        let i = i as usize;
        if i == self.window.len() {
            // The usual insert, at the end: no empty slot written first.
            self.window.push_back(Some(value));
            self.held += 1;
            return None;
        }
        while self.window.len() <= i {
            self.window.push_back(None);
        }
        let old = self.window[i].replace(value);
        if old.is_none() {
            self.held += 1;
        }
        old
    }

    pub(crate) fn remove(&mut self, key: u64) -> Option<T> {
        let Some(i) = key.checked_sub(self.base) else {
            return self.old.remove(&key);
        };
        if i == 0 && matches!(self.window.front(), Some(Some(_))) {
            // The usual remove, at the front: the entry moves out with its slot. (Taking it
            // out of its slot writes an empty one in its place, and that write, of a niche
            // value into a 100-byte slot, stalled the copy after it: a tenth of the queue's
            // cost per message.)
            let value = self.window.pop_front().flatten()?;
            self.base += 1;
            self.held -= 1;
            self.tidy();
            return Some(value);
        }
        let value = self.window.get_mut(usize::try_from(i).ok()?)?.take()?;
        self.held -= 1;
        self.tidy();
        Some(value)
    }

    /// Drops the empty slots at the ends, and moves front entries out while the buffer is
    /// mostly empty slots.
    fn tidy(&mut self) {
        loop {
            while let Some(None) = self.window.front() {
                self.window.pop_front();
                self.base += 1;
            }
            while let Some(None) = self.window.back() {
                self.window.pop_back();
            }
            if self.window.len() <= 2 * self.held + SLACK {
                return;
            }
            if let Some(Some(v)) = self.window.pop_front() {
                self.old.insert(self.base, v);
                self.held -= 1;
            }
            self.base += 1;
        }
    }

    fn spill_all(&mut self) {
        let base = self.base;
        let window = std::mem::take(&mut self.window);
        self.base += window.len() as u64;
        for (i, slot) in window.into_iter().enumerate() {
            if let Some(v) = slot {
                self.old.insert(base + i as u64, v);
            }
        }
        self.held = 0;
    }

    /// The keys, in order.
    pub(crate) fn keys(&self) -> impl Iterator<Item = u64> + '_ {
        let base = self.base;
        self.old.keys().copied().chain(
            self.window
                .iter()
                .enumerate()
                .filter(|(_, s)| s.is_some())
                .map(move |(i, _)| base + i as u64),
        )
    }

    pub(crate) fn clear(&mut self) {
        self.window.clear();
        self.old.clear();
        self.held = 0;
    }

    /// Memory held in slots, for tests: the buffer's length and the stragglers.
    #[cfg(test)]
    fn footprint(&self) -> (usize, usize) {
        (self.window.len(), self.old.len())
    }
}

/// An ordered set of keys that mostly arrive in increasing order and leave from the front:
/// those sit in a sorted ring buffer (the lane), O(1) to add at either end and to take the
/// first; any other key goes to a B-tree beside it. The set is the union of the two.
#[derive(Debug)]
pub(crate) struct LaneSet<K> {
    lane: VecDeque<K>,
    rest: BTreeSet<K>,
}

impl<K> Default for LaneSet<K> {
    fn default() -> Self {
        LaneSet {
            lane: VecDeque::new(),
            rest: BTreeSet::new(),
        }
    }
}

impl<K: Ord + Copy> LaneSet<K> {
    pub(crate) fn is_empty(&self) -> bool {
        self.lane.is_empty() && self.rest.is_empty()
    }

    /// Adds `key`; false if it was there already.
    pub(crate) fn insert(&mut self, key: K) -> bool {
        let after = self.lane.back().is_none_or(|back| key > *back);
        let before = self.lane.front().is_some_and(|front| key < *front);
        if !(after || before) {
            // Within the lane's range: there already, or beside it.
            return self.lane.binary_search(&key).is_err() && self.rest.insert(key);
        }
        if self.rest.contains(&key) {
            return false;
        }
        if after {
            self.lane.push_back(key);
        } else {
            self.lane.push_front(key);
        }
        true
    }

    pub(crate) fn remove(&mut self, key: &K) -> bool {
        if self.lane.front() == Some(key) {
            self.lane.pop_front();
            return true;
        }
        match self.lane.binary_search(key) {
            Ok(i) => self.lane.remove(i).is_some(),
            Err(_) => self.rest.remove(key),
        }
    }

    pub(crate) fn first(&self) -> Option<&K> {
        match (self.lane.front(), self.rest.first()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub(crate) fn pop_first(&mut self) -> Option<K> {
        let first = *self.first()?;
        self.remove(&first);
        Some(first)
    }

    /// The keys, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &K> + '_ {
        let (mut a, mut b) = (self.lane.iter().peekable(), self.rest.iter().peekable());
        std::iter::from_fn(move || match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if x <= y => a.next(),
            (Some(_), Some(_)) => b.next(),
            (Some(_), None) => a.next(),
            (None, _) => b.next(),
        })
    }

    pub(crate) fn clear(&mut self) {
        self.lane.clear();
        self.rest.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::{RngCore, SeedableRng};

    #[test]
    fn behaves_like_a_btree_map_under_random_use() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut m = SeqMap::default();
        let mut reference = BTreeMap::new();
        let mut next = 0u64;
        for _ in 0..200_000 {
            match rng.next_u32() % 10 {
                // Mostly new keys at the end, now and then a jump ahead.
                0..=3 => {
                    if rng.next_u32() % 500 == 0 {
                        next += 1 + u64::from(rng.next_u32() % 5_000);
                    }
                    assert_eq!(m.insert(next, next * 3), reference.insert(next, next * 3));
                    next += 1;
                }
                // Removals: mostly the oldest, sometimes any.
                4..=6 => {
                    let key = if rng.next_u32() % 4 == 0 {
                        u64::from(rng.next_u32()) % (next + 1)
                    } else {
                        reference.keys().next().copied().unwrap_or(0)
                    };
                    assert_eq!(m.remove(key), reference.remove(&key));
                }
                // A key below the buffer inserted again, or replaced.
                7 => {
                    let key = u64::from(rng.next_u32()) % (next + 1);
                    assert_eq!(m.insert(key, key + 1), reference.insert(key, key + 1));
                }
                8 => {
                    let key = u64::from(rng.next_u32()) % (next + 1);
                    assert_eq!(m.get(key), reference.get(&key));
                    if let Some(v) = m.get_mut(key) {
                        *v += 1;
                        *reference.get_mut(&key).expect("same keys") += 1;
                    }
                }
                _ => {
                    assert_eq!(m.len(), reference.len());
                    assert_eq!(m.is_empty(), reference.is_empty());
                }
            }
        }
        assert!(m.keys().eq(reference.keys().copied()));
        m.clear();
        assert!(m.is_empty() && m.keys().next().is_none());
    }

    #[test]
    fn lane_set_behaves_like_a_btree_set_under_random_use() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let mut set = LaneSet::default();
        let mut reference = BTreeSet::new();
        let mut next = 0u64;
        for _ in 0..200_000 {
            let niceness = if rng.next_u32() % 20 == 0 {
                rng.next_u32() % 3
            } else {
                0
            };
            match rng.next_u32() % 10 {
                0..=3 => {
                    let key = (niceness, next);
                    next += 1;
                    assert_eq!(set.insert(key), reference.insert(key));
                }
                4..=5 => assert_eq!(set.pop_first(), reference.pop_first()),
                6 => {
                    let key = (niceness, u64::from(rng.next_u32()) % (next + 1));
                    assert_eq!(set.insert(key), reference.insert(key));
                }
                7 => {
                    let key = (niceness, u64::from(rng.next_u32()) % (next + 1));
                    assert_eq!(set.remove(&key), reference.remove(&key));
                }
                8 => {
                    let n = (rng.next_u32() % 4) as usize;
                    assert!(set.iter().take(n).eq(reference.iter().take(n)));
                    assert_eq!(set.first(), reference.first());
                }
                _ => assert_eq!(set.is_empty(), reference.is_empty()),
            }
        }
        assert!(set.iter().eq(reference.iter()));
        set.clear();
        assert!(set.is_empty() && set.first().is_none());
    }

    #[test]
    fn a_starved_entry_does_not_pin_memory_for_every_later_key() {
        let mut m = SeqMap::default();
        m.insert(0, "starved");
        for key in 1..1_000_000u64 {
            m.insert(key, "passing");
            m.remove(key);
        }
        let (window, old) = m.footprint();
        assert!(window <= SLACK + 2, "buffer of {window} slots for 1 entry");
        assert_eq!(old, 1);
        assert_eq!(m.get(0), Some(&"starved"));
        assert_eq!(m.len(), 1);
        // In order, the usual case: nothing moves out.
        let mut m = SeqMap::default();
        for key in 0..10_000u64 {
            m.insert(key, key);
            if key >= 100 {
                m.remove(key - 100);
            }
        }
        assert_eq!(m.footprint(), (100, 0));
    }
}
