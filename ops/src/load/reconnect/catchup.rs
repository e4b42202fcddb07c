//! The catch-up bookkeeping: per socket, which of the messages it missed have come back, and
//! when the last of them did; over all sockets, the figures of the report.
//!
//! A socket is owed every message acked for its conversation while it was away, its user's own
//! sends included (the sender's sockets get `message.sent` too). It has caught up when its
//! `ready` frame and every one of those ids have arrived; times count from the start of the
//! reconnect, so they include the wait for a turn to reconnect, as a real client's would. An
//! id that arrives again is a duplicate, one nobody sent while it was away is unexpected: both
//! would be server bugs, as would an id still missing at the end.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use crate::load::tally::Latencies;

/// One socket's catch-up, as its events arrive.
#[derive(Debug)]
pub struct CatchUp {
    expected: Arc<HashSet<String>>,
    /// Every message id received, expected or not.
    seen: HashSet<String>,
    /// How many of `expected` are in `seen`.
    arrived: usize,
    events: u64,
    duplicates: u64,
    unexpected: u64,
    ready_after: Option<Duration>,
    caught_up_after: Option<Duration>,
}

impl CatchUp {
    /// A socket owed the messages `expected`.
    pub fn new(expected: Arc<HashSet<String>>) -> CatchUp {
        CatchUp {
            expected,
            seen: HashSet::new(),
            arrived: 0,
            events: 0,
            duplicates: 0,
            unexpected: 0,
            ready_after: None,
            caught_up_after: None,
        }
    }

    /// The `ready` frame arrived, `after` the reconnect began. True when that completes the
    /// catch-up (nothing was owed).
    pub fn ready(&mut self, after: Duration) -> bool {
        self.ready_after.get_or_insert(after);
        self.check(after)
    }

    /// A `message.sent` event for `id` arrived, `after` the reconnect began. True when it was
    /// the last one owed.
    pub fn message(&mut self, id: &str, after: Duration) -> bool {
        self.events += 1;
        if !self.seen.insert(id.to_owned()) {
            self.duplicates += 1;
            return false;
        }
        if !self.expected.contains(id) {
            self.unexpected += 1;
            return false;
        }
        self.arrived += 1;
        self.check(after)
    }

    fn check(&mut self, after: Duration) -> bool {
        let complete = self.ready_after.is_some() && self.arrived == self.expected.len();
        let first_time = complete && self.caught_up_after.is_none();
        if first_time {
            self.caught_up_after = Some(after);
        }
        first_time
    }

    pub fn caught_up(&self) -> bool {
        self.caught_up_after.is_some()
    }

    /// What the socket ended with: `resumed` as its `ready` said, and `lost` when the
    /// connection ended before the run did.
    pub fn finish(self, resumed: bool, lost: Option<String>) -> Outcome {
        Outcome {
            resumed,
            lost,
            ready_after: self.ready_after,
            caught_up_after: self.caught_up_after,
            expected: self.expected.len() as u64,
            missing: (self.expected.len() - self.arrived) as u64,
            events: self.events,
            duplicates: self.duplicates,
            unexpected: self.unexpected,
        }
    }
}

/// What one socket that got its `ready` frame ended with.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub resumed: bool,
    pub lost: Option<String>,
    pub ready_after: Option<Duration>,
    pub caught_up_after: Option<Duration>,
    pub expected: u64,
    pub missing: u64,
    pub events: u64,
    pub duplicates: u64,
    pub unexpected: u64,
}

/// The catch-up of every socket, added up.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Drain {
    /// Sockets that tried to come back.
    pub sockets: u64,
    /// `ready` with `"resumed":true`.
    pub resumed: u64,
    /// `ready` without it: the server would not resume from the token.
    pub refused: u64,
    /// Sockets that never got a `ready` frame, by why.
    pub failed: BTreeMap<String, u64>,
    /// Sockets lost after their `ready` frame, before the run ended, by why.
    pub lost: BTreeMap<String, u64>,
    pub caught_up: u64,
    /// Start of the reconnect → `ready`.
    pub ready: Latencies,
    /// Start of the reconnect → the last message owed.
    pub catch_up: Latencies,
    /// `ready` → the last message owed: the replay itself, without the wait to reconnect.
    pub replay: Latencies,
    /// When the last socket that caught up did.
    pub last_caught_up: Duration,
    /// Message deliveries owed, over all sockets.
    pub expected: u64,
    /// `message.sent` events received, whatever their id.
    pub events: u64,
    pub missing: u64,
    pub duplicates: u64,
    pub unexpected: u64,
}

impl Drain {
    pub fn add(&mut self, outcome: Outcome) {
        self.sockets += 1;
        if outcome.resumed {
            self.resumed += 1;
        } else {
            self.refused += 1;
        }
        if let Some(reason) = outcome.lost {
            *self.lost.entry(reason).or_default() += 1;
        }
        if let Some(after) = outcome.ready_after {
            self.ready.record(after);
        }
        if let Some(after) = outcome.caught_up_after {
            self.caught_up += 1;
            self.catch_up.record(after);
            self.last_caught_up = self.last_caught_up.max(after);
            let ready = outcome.ready_after.expect("a socket catches up only once ready");
            self.replay.record(after.saturating_sub(ready));
        }
        self.expected += outcome.expected;
        self.missing += outcome.missing;
        self.events += outcome.events;
        self.duplicates += outcome.duplicates;
        self.unexpected += outcome.unexpected;
    }

    /// A socket that never got its `ready` frame: everything it was owed is missing.
    pub fn add_failed(&mut self, reason: String, expected: u64) {
        self.sockets += 1;
        *self.failed.entry(reason).or_default() += 1;
        self.expected += expected;
        self.missing += expected;
    }

    /// The time until the last socket caught up, if they all did.
    pub fn drain_time(&self) -> Option<Duration> {
        (self.caught_up == self.sockets).then_some(self.last_caught_up)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owed(ids: &[&str]) -> Arc<HashSet<String>> {
        Arc::new(ids.iter().map(|id| id.to_string()).collect())
    }

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn a_socket_catches_up_with_the_last_id_it_is_owed() {
        let mut socket = CatchUp::new(owed(&["1", "2", "3"]));
        assert!(!socket.ready(ms(40)));
        assert!(!socket.message("2", ms(50)));
        assert!(!socket.message("1", ms(60)));
        assert!(socket.message("3", ms(70)));
        assert!(socket.caught_up());
        assert!(!socket.message("4", ms(80)), "later events change nothing");
        let outcome = socket.finish(true, None);
        assert_eq!(outcome.caught_up_after, Some(ms(70)));
        assert_eq!(outcome.ready_after, Some(ms(40)));
        assert_eq!((outcome.expected, outcome.missing, outcome.events), (3, 0, 4));
        assert_eq!((outcome.duplicates, outcome.unexpected), (0, 1));
    }

    #[test]
    fn duplicates_and_strangers_do_not_count_towards_the_catch_up() {
        let mut socket = CatchUp::new(owed(&["1", "2"]));
        socket.ready(ms(1));
        assert!(!socket.message("1", ms(2)));
        assert!(!socket.message("1", ms(3)));
        assert!(!socket.message("9", ms(4)));
        assert!(!socket.message("9", ms(5)));
        assert!(!socket.caught_up());
        let outcome =
            socket.finish(true, Some("closed by the server (1013 try again later)".into()));
        assert_eq!((outcome.missing, outcome.duplicates, outcome.unexpected), (1, 2, 1));
        assert_eq!(outcome.caught_up_after, None);
    }

    #[test]
    fn nothing_counts_as_caught_up_before_ready() {
        let mut socket = CatchUp::new(owed(&["1"]));
        assert!(!socket.message("1", ms(5)));
        assert!(socket.ready(ms(6)), "the ready frame completes it");
        assert_eq!(socket.finish(true, None).caught_up_after, Some(ms(6)));

        let mut owed_nothing = CatchUp::new(owed(&[]));
        assert!(owed_nothing.ready(ms(3)));
        assert!(!owed_nothing.ready(ms(4)), "once");
    }

    #[test]
    fn the_drain_adds_up_sockets_and_ends_with_the_last_one() {
        let mut drain = Drain::default();
        for (caught_up, resumed) in [(100, true), (300, true), (200, false)] {
            let mut socket = CatchUp::new(owed(&["a", "b"]));
            socket.ready(ms(10));
            socket.message("a", ms(caught_up - 1));
            socket.message("b", ms(caught_up));
            drain.add(socket.finish(resumed, None));
        }
        assert_eq!(drain.drain_time(), Some(ms(300)));
        assert_eq!((drain.sockets, drain.resumed, drain.refused, drain.caught_up), (3, 2, 1, 3));
        assert_eq!((drain.expected, drain.events, drain.missing), (6, 6, 0));
        let p = drain.catch_up.percentiles();
        assert_eq!(p.count, 3);
        assert!((p.p50_ms - 200.0).abs() < 0.5, "{p:?}");
        let replay = drain.replay.percentiles();
        assert!((replay.max_ms - 290.0).abs() < 0.5, "from ready: {replay:?}");

        drain.add_failed("the server refused the upgrade with 503".into(), 2);
        assert_eq!(drain.drain_time(), None, "one socket never caught up");
        assert_eq!(drain.last_caught_up, ms(300));
        assert_eq!((drain.sockets, drain.missing, drain.expected), (4, 2, 8));
        assert_eq!(drain.failed.values().sum::<u64>(), 1);
    }
}
