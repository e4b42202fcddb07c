//! A Bloom filter over the keys of a table, for lookups whose answer is almost always "no".
//!
//! Every send asks whether its sender already used its `client_msg_id` in the conversation, and
//! the projector asks again before storing it. The answer is nearly always no, and a "no" is an
//! expensive read: fjall searches its whole memtable (a skiplist holding the latest tens of
//! megabytes of writes), then every table the key could be in; Cassandra takes a request. This
//! filter answers most of those in memory: a key it has never been given is certainly not
//! stored; a key it may have been given is looked up as before. The embedded store keeps one
//! over every client id it holds; the CQL store one over those it wrote itself into a keyspace
//! that had none (see `cql::carried`).
//!
//! It is exact in one direction only, so every key written to the table must reach it before
//! the write commits, and every key already stored when the store opens must be loaded into it
//! before it may answer "no". It is never persisted, and nothing is ever removed from it (the
//! table only grows).
//!
//! Full filters are not resized: a new layer twice the size takes the inserts from then on, and
//! a lookup asks every layer. At [`BITS_PER_KEY`] bits and [`PROBES`] probes per key, a layer
//! full to capacity answers "maybe" for about 1% of absent keys.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{PoisonError, RwLock};

/// Memory per key of capacity.
const BITS_PER_KEY: usize = 10;

/// Bits set per key: the best number for [`BITS_PER_KEY`] (ln 2 × 10 ≈ 7).
const PROBES: u64 = 7;

/// The first layer holds at least this many keys (1.2 MiB), so that a small store never grows
/// a chain of tiny layers.
const MIN_CAPACITY: usize = 1 << 20;

pub(crate) struct KeyFilter {
    layers: RwLock<Vec<Layer>>,
    hasher: RandomState,
    /// Set once every key stored before the filter existed has been inserted; until then every
    /// key may be present.
    loaded: AtomicBool,
}

struct Layer {
    bits: Box<[AtomicU64]>,
    capacity: usize,
    keys: AtomicUsize,
}

impl Layer {
    fn new(capacity: usize) -> Layer {
        let words = (capacity * BITS_PER_KEY).div_ceil(64);
        Layer { bits: (0..words).map(|_| AtomicU64::new(0)).collect(), capacity, keys: 0.into() }
    }

    /// The bits of a key: double hashing of one 64-bit hash (Kirsch and Mitzenmacher).
    fn positions(&self, hash: u64) -> impl Iterator<Item = (usize, u64)> + '_ {
        let len = self.bits.len() as u64 * 64;
        let step = hash.rotate_left(32) | 1;
        (0..PROBES).map(move |i| {
            let bit = hash.wrapping_add(i.wrapping_mul(step)) % len;
            ((bit / 64) as usize, 1 << (bit % 64))
        })
    }

    fn insert(&self, hash: u64) {
        // Relaxed is enough: a key is inserted before the batch storing it commits, and a
        // lookup that knows of that commit (through the projection's progress, a lock, a
        // reply) is ordered after the insert by that knowledge, so it sees the bits. A lookup
        // racing the commit may miss them, as it would miss the uncommitted key.
        for (word, mask) in self.positions(hash) {
            self.bits[word].fetch_or(mask, Ordering::Relaxed);
        }
        self.keys.fetch_add(1, Ordering::Relaxed);
    }

    fn may_contain(&self, hash: u64) -> bool {
        self.positions(hash).all(|(word, mask)| self.bits[word].load(Ordering::Relaxed) & mask != 0)
    }
}

impl KeyFilter {
    /// An empty filter sized for about `expected` keys, which answers "maybe" to everything
    /// until [`KeyFilter::loaded`] says that the keys stored earlier are in.
    pub(crate) fn new(expected: usize) -> KeyFilter {
        KeyFilter {
            layers: RwLock::new(vec![Layer::new(expected.max(MIN_CAPACITY))]),
            hasher: RandomState::new(),
            loaded: AtomicBool::new(false),
        }
    }

    /// Every key stored before the filter was made has been inserted.
    pub(crate) fn loaded(&self) {
        // Release, with the Acquire in `may_contain`: whoever sees the filter loaded sees the
        // keys the loading inserted.
        self.loaded.store(true, Ordering::Release);
    }

    pub(crate) fn insert(&self, key: &[u8]) {
        let hash = self.hasher.hash_one(key);
        let layers = self.layers.read().unwrap_or_else(PoisonError::into_inner);
        let newest = layers.last().expect("a filter has a layer");
        if newest.keys.load(Ordering::Relaxed) < newest.capacity {
            newest.insert(hash);
            return;
        }
        drop(layers);
        let mut layers = self.layers.write().unwrap_or_else(PoisonError::into_inner);
        let newest = layers.last().expect("a filter has a layer");
        // Another insert may have added the layer while this one waited for the lock.
        if newest.keys.load(Ordering::Relaxed) >= newest.capacity {
            let capacity = newest.capacity * 2;
            layers.push(Layer::new(capacity));
        }
        layers.last().expect("a filter has a layer").insert(hash);
    }

    /// How many keys were inserted.
    pub(crate) fn len(&self) -> usize {
        let layers = self.layers.read().unwrap_or_else(PoisonError::into_inner);
        layers.iter().map(|layer| layer.keys.load(Ordering::Relaxed)).sum()
    }

    #[cfg(test)]
    pub(crate) fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// False only if `key` was never inserted and the filter is loaded.
    pub(crate) fn may_contain(&self, key: &[u8]) -> bool {
        if !self.loaded.load(Ordering::Acquire) {
            return true;
        }
        let hash = self.hasher.hash_one(key);
        let layers = self.layers.read().unwrap_or_else(PoisonError::into_inner);
        layers.iter().any(|layer| layer.may_contain(hash))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserted_keys_are_always_found_and_others_mostly_not() {
        let filter = KeyFilter::new(0);
        let key = |i: usize| format!("conversation/sender/{i}").into_bytes();
        assert!(filter.may_contain(&key(0)), "anything may be there until the filter is loaded");
        filter.loaded();
        assert!(!filter.may_contain(&key(0)));
        // Past the first layer's capacity, so that lookups span two layers.
        let inserted = MIN_CAPACITY + MIN_CAPACITY / 2;
        for i in 0..inserted {
            filter.insert(&key(i));
        }
        assert_eq!(filter.layers.read().unwrap().len(), 2);
        assert_eq!(filter.len(), inserted);
        assert!((0..inserted).all(|i| filter.may_contain(&key(i))), "no false negatives");
        let absent = 100_000;
        let maybe = (inserted..inserted + absent).filter(|&i| filter.may_contain(&key(i))).count();
        assert!(maybe < absent * 3 / 100, "{maybe} of {absent} absent keys looked present");
    }
}
