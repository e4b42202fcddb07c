//! Time-ordered 64-bit ids, unique across nodes without coordination (Snowflake style).
//!
//! Message, conversation, user and call ids are created on whichever API node takes the command,
//! so they cannot come from a shared counter. Each id packs, from the high bits down:
//!
//! ```text
//! 0 | 41 bits: milliseconds since 2025-01-01T00:00:00Z | 10 bits: node id | 12 bits: sequence
//! ```
//!
//! The sign bit stays clear, so ids are positive `i64`s (Avro `long`, CQL `bigint`), sort by
//! creation time, and carry that time ([`timestamp_ms`]), which lets stores bucket messages by
//! time from the id alone. Nodes with different node ids can never produce the same id; one
//! generator never produces the same id twice, even when its clock steps backwards.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// 2025-01-01T00:00:00Z in milliseconds since the Unix epoch.
const EPOCH_UNIX_MS: i64 = 1_735_689_600_000;
const NODE_BITS: u32 = 10;
const SEQUENCE_BITS: u32 = 12;
const TIMESTAMP_BITS: u32 = 41;
/// The last millisecond an id can carry, early in September 2094.
const MAX_TIMESTAMP: u64 = (1 << TIMESTAMP_BITS) - 1;

/// Node ids range over `0..NODES`.
pub const NODES: u16 = 1 << NODE_BITS;

/// Hands out ids for one node. Share it (`Arc`) between threads rather than making several for
/// the same node: two generators with one node id can collide.
#[derive(Debug)]
pub struct IdGenerator {
    node: u64,
    /// The last id handed out, as `timestamp << SEQUENCE_BITS | sequence`. A single word, so a
    /// compare-exchange moves time and sequence together.
    last: AtomicU64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("node id {0} is out of range: node ids go from 0 to {max}", max = NODES - 1)]
pub struct NodeOutOfRange(pub u16);

impl IdGenerator {
    /// A generator for `node`, which must be below [`NODES`] (1024).
    pub fn new(node: u16) -> Result<IdGenerator, NodeOutOfRange> {
        if node >= NODES {
            return Err(NodeOutOfRange(node));
        }
        Ok(IdGenerator { node: u64::from(node), last: AtomicU64::new(0) })
    }

    pub fn node(&self) -> u16 {
        // Checked against NODES in `new`.
        self.node as u16
    }

    /// A new id, greater than every id this generator has returned before.
    ///
    /// # Panics
    ///
    /// When the clock is past 2094, where 41 bits of milliseconds run out.
    pub fn next_id(&self) -> i64 {
        self.next_at(now_since_epoch_ms())
    }

    /// The id for a clock reading of `now` milliseconds since the id epoch.
    fn next_at(&self, now: u64) -> i64 {
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            // A clock that has moved on starts a new millisecond at sequence 0. One that has not
            // (or went backwards) continues from the last id: `+ 1` bumps the sequence, and a
            // full sequence carries into the next millisecond, borrowing from the future.
            let next = (now.min(MAX_TIMESTAMP + 1) << SEQUENCE_BITS).max(last + 1);
            assert!(
                next >> SEQUENCE_BITS <= MAX_TIMESTAMP,
                "id timestamps are exhausted: 41 bits of milliseconds since 2025 end in 2094"
            );
            // Relaxed is enough: the one atomic word is all the state, and its modification
            // order alone makes every id distinct and each caller's ids increasing.
            match self.last.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return self.compose(next),
                Err(current) => last = current,
            }
        }
    }

    fn compose(&self, state: u64) -> i64 {
        let timestamp = state >> SEQUENCE_BITS;
        let sequence = state & ((1 << SEQUENCE_BITS) - 1);
        // At most 63 bits are set, so the cast keeps the value and the sign bit clear.
        ((timestamp << (NODE_BITS + SEQUENCE_BITS)) | (self.node << SEQUENCE_BITS) | sequence)
            as i64
    }
}

/// When `id` was created, in milliseconds since the Unix epoch.
pub fn timestamp_ms(id: i64) -> i64 {
    (id >> (NODE_BITS + SEQUENCE_BITS)) + EPOCH_UNIX_MS
}

/// Milliseconds since the id epoch; a clock before 2025 reads as the epoch itself, which the
/// generator treats like any clock that is behind.
fn now_since_epoch_ms() -> u64 {
    let unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| i64::try_from(since.as_millis()).unwrap_or(i64::MAX));
    u64::try_from(unix_ms - EPOCH_UNIX_MS).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Arc;

    use super::*;

    fn node_of(id: i64) -> i64 {
        (id >> SEQUENCE_BITS) & i64::from(NODES - 1)
    }

    fn sequence_of(id: i64) -> i64 {
        id & ((1 << SEQUENCE_BITS) - 1)
    }

    fn unix_now_ms() -> i64 {
        now_since_epoch_ms() as i64 + EPOCH_UNIX_MS
    }

    #[test]
    fn ids_strictly_increase_and_stay_distinct_across_threads() {
        const THREADS: usize = 8;
        const PER_THREAD: usize = 12_500;
        let ids = Arc::new(IdGenerator::new(7).unwrap());
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                let ids = Arc::clone(&ids);
                std::thread::spawn(move || {
                    (0..PER_THREAD).map(|_| ids.next_id()).collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all = Vec::with_capacity(THREADS * PER_THREAD);
        for handle in handles {
            let seen = handle.join().unwrap();
            assert!(seen.windows(2).all(|w| w[0] < w[1]), "ids went backwards within a thread");
            all.extend(seen);
        }
        assert!(all.iter().all(|&id| id > 0 && node_of(id) == 7));
        let distinct: HashSet<_> = all.iter().collect();
        assert_eq!(distinct.len(), THREADS * PER_THREAD, "some ids were handed out twice");
    }

    #[test]
    fn different_nodes_never_collide() {
        let generators = [IdGenerator::new(1).unwrap(), IdGenerator::new(2).unwrap()];
        let made: Vec<HashSet<i64>> = std::thread::scope(|scope| {
            let handles: Vec<_> = generators
                .iter()
                .map(|ids| scope.spawn(move || (0..50_000).map(|_| ids.next_id()).collect()))
                .collect();
            handles.into_iter().map(|handle| handle.join().unwrap()).collect()
        });
        assert_eq!(made[0].len(), 50_000);
        assert!(made[0].is_disjoint(&made[1]), "two nodes produced the same id");
        assert!(made[1].iter().all(|&id| node_of(id) == 2));
    }

    #[test]
    fn the_id_carries_its_creation_time() {
        let ids = IdGenerator::new(3).unwrap();
        let before = unix_now_ms();
        let id = ids.next_id();
        let after = unix_now_ms();
        assert!(
            (before..=after).contains(&timestamp_ms(id)),
            "id time {} outside [{before}, {after}]",
            timestamp_ms(id)
        );
    }

    #[test]
    fn node_ids_from_1024_are_rejected() {
        assert_eq!(IdGenerator::new(1024).unwrap_err(), NodeOutOfRange(1024));
        assert!(IdGenerator::new(u16::MAX).is_err());
        assert_eq!(IdGenerator::new(1023).unwrap().node(), 1023);
    }

    #[test]
    fn a_clock_stepping_back_keeps_the_last_time_and_counts_on() {
        let ids = IdGenerator::new(5).unwrap();
        let first = ids.next_at(10_000);
        let behind = ids.next_at(9_000);
        assert!(behind > first);
        assert_eq!(timestamp_ms(behind), timestamp_ms(first), "keeps the last timestamp");
        assert_eq!(sequence_of(behind), sequence_of(first) + 1);
        let caught_up = ids.next_at(10_001);
        assert!(caught_up > behind);
        assert_eq!(timestamp_ms(caught_up), EPOCH_UNIX_MS + 10_001);
        assert_eq!(sequence_of(caught_up), 0);
    }

    #[test]
    fn a_full_sequence_moves_to_the_next_millisecond() {
        let ids = IdGenerator::new(9).unwrap();
        let in_one_ms: Vec<i64> = (0..4096).map(|_| ids.next_at(500)).collect();
        assert!(in_one_ms.iter().all(|&id| timestamp_ms(id) == EPOCH_UNIX_MS + 500));
        assert_eq!(sequence_of(in_one_ms[4095]), 4095);
        let overflow = ids.next_at(500);
        assert!(overflow > in_one_ms[4095]);
        assert_eq!(timestamp_ms(overflow), EPOCH_UNIX_MS + 501);
        assert_eq!(sequence_of(overflow), 0);
        // The clock reaching the borrowed millisecond must not reuse it.
        assert!(ids.next_at(501) > overflow);
    }

    #[test]
    fn the_last_representable_millisecond_still_gives_a_positive_id() {
        let ids = IdGenerator::new(NODES - 1).unwrap();
        let id = ids.next_at(MAX_TIMESTAMP);
        assert!(id > 0);
        assert_eq!(node_of(id), i64::from(NODES - 1));
        assert_eq!(timestamp_ms(id), MAX_TIMESTAMP as i64 + EPOCH_UNIX_MS);
    }

    #[test]
    #[should_panic(expected = "exhausted")]
    fn running_out_of_timestamps_panics_rather_than_wrapping() {
        IdGenerator::new(0).unwrap().next_at(MAX_TIMESTAMP + 1);
    }
}
