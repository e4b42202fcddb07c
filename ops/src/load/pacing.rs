//! Pacing: how connections are shared among processes, and when each socket sends.
//!
//! The generator is open-loop: every socket sends on a fixed timetable whether or not its
//! earlier messages were answered. A closed loop (send, wait for the ack, send) slows down
//! together with the server and so hides the very queueing delay a load test is meant to show.
//! Each socket sends at the same rate, `rate / connections`, and the sockets' first sends are
//! spread over one interval so that the offered load is smooth rather than a burst every tick.

use std::time::{Duration, Instant};

/// How many of `total` items part `index` of `parts` gets: as even as possible, with the first
/// `total % parts` parts taking one more.
pub fn share(total: usize, parts: usize, index: usize) -> usize {
    total / parts + usize::from(index < total % parts)
}

/// The time between two sends of one socket when `connections` sockets together send `rate`
/// messages per second.
pub fn send_interval(connections: usize, rate: f64) -> Duration {
    Duration::from_secs_f64(connections as f64 / rate)
}

/// When socket `index` of `count` sends first, counted from the start: the sockets' first sends
/// are spread evenly over one `interval`.
pub fn first_send_offset(index: usize, count: usize, interval: Duration) -> Duration {
    interval.mul_f64(index as f64 / count as f64)
}

/// The timed part of a run: a warm-up whose results are thrown away (connections and caches
/// settle, the server's batches reach their steady size), then the measured window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub start: Instant,
    pub measure_from: Instant,
    pub measure_until: Instant,
}

impl Schedule {
    pub fn new(start: Instant, warmup: Duration, duration: Duration) -> Schedule {
        let measure_from = start + warmup;
        Schedule { start, measure_from, measure_until: measure_from + duration }
    }

    /// Whether something that happened at `at` counts.
    pub fn measures(&self, at: Instant) -> bool {
        (self.measure_from..self.measure_until).contains(&at)
    }

    /// The whole seconds from the start of the measured window to `at`, if `at` is measured.
    pub fn second_of(&self, at: Instant) -> Option<usize> {
        self.measures(at).then(|| (at - self.measure_from).as_secs() as usize)
    }

    /// Whether sockets should still send at `at`.
    pub fn sending(&self, at: Instant) -> bool {
        at < self.measure_until
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up_and_differ_by_at_most_one() {
        for (total, parts) in [(1000, 3), (10, 10), (7, 2), (20_000, 4)] {
            let shares: Vec<_> = (0..parts).map(|i| share(total, parts, i)).collect();
            assert_eq!(shares.iter().sum::<usize>(), total, "{shares:?}");
            let (min, max) = (shares.iter().min().unwrap(), shares.iter().max().unwrap());
            assert!(max - min <= 1, "{shares:?}");
        }
        assert_eq!(share(1000, 3, 0), 334);
        assert_eq!(share(1000, 3, 2), 333);
    }

    #[test]
    fn each_socket_sends_its_part_of_the_rate() {
        assert_eq!(send_interval(1000, 20_000.0), Duration::from_millis(50));
        assert_eq!(send_interval(1000, 5_000.0), Duration::from_millis(200));
        assert_eq!(send_interval(10, 0.5), Duration::from_secs(20));
    }

    #[test]
    fn first_sends_are_spread_over_one_interval() {
        let interval = Duration::from_millis(100);
        assert_eq!(first_send_offset(0, 4, interval), Duration::ZERO);
        assert_eq!(first_send_offset(1, 4, interval), Duration::from_millis(25));
        assert_eq!(first_send_offset(3, 4, interval), Duration::from_millis(75));
    }

    #[test]
    fn only_the_window_after_the_warm_up_is_measured() {
        let start = Instant::now();
        let schedule = Schedule::new(start, Duration::from_secs(5), Duration::from_secs(30));
        assert!(!schedule.measures(start + Duration::from_secs(4)));
        assert_eq!(schedule.second_of(start + Duration::from_secs(4)), None);
        assert_eq!(schedule.second_of(start + Duration::from_millis(7_500)), Some(2));
        assert!(schedule.measures(start + Duration::from_secs(5)));
        assert!(schedule.measures(start + Duration::from_secs(34)));
        assert!(!schedule.measures(start + Duration::from_secs(35)));
        assert!(schedule.sending(start + Duration::from_secs(34)));
        assert!(!schedule.sending(start + Duration::from_secs(35)));
    }
}
