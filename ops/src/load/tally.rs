//! What one load process measured, in a form that adds up across processes.
//!
//! Counters add and histograms merge, so the result of several child processes is the sum of
//! their tallies, with percentiles computed only once, from the merged histograms (averaging
//! per-process percentiles would be wrong). Tallies travel from a child to its parent as one
//! JSON line; histograms go as their recorded `(value, count)` pairs.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Counters of one run. Rates are taken over the measured window: `sent`, `acked`,
/// `deliveries` and `delivered` count what happened inside it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Tally {
    /// Sockets that were opened and got their `ready` frame.
    pub connected: u64,
    /// Sockets the server closed (or that failed) before the run ended, by reason.
    pub dropped: BTreeMap<String, u64>,
    /// Messages sent.
    pub sent: u64,
    /// Sends that were due but skipped because the socket already had the most messages in
    /// flight: the server was not keeping up with the offered rate.
    pub skipped: u64,
    /// Acknowledgements received (each one means the message is durable in the log).
    pub acked: u64,
    /// `message.sent` events received by a member other than the sender.
    pub deliveries: u64,
    /// Messages whose last recipient received them.
    pub delivered: u64,
    /// Error frames received, by error code.
    pub errors: BTreeMap<String, u64>,
    /// Messages (sent at any time) still not acknowledged when the run ended.
    pub unacked: u64,
    /// Deliveries (of messages sent at any time) still outstanding when the run ended.
    pub undelivered: u64,
    /// Send → ack, for messages sent inside the window.
    pub ack_latency: Latencies,
    /// Send → arrival at each recipient, for messages sent inside the window.
    pub delivery_latency: Latencies,
    /// The same, by the second of the window each message was sent in: whether the slow
    /// deliveries came in bursts or all along.
    pub delivery_latency_by_second: Vec<Latencies>,
}

impl Tally {
    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: Tally) {
        self.connected += other.connected;
        add_counts(&mut self.dropped, other.dropped);
        self.sent += other.sent;
        self.skipped += other.skipped;
        self.acked += other.acked;
        self.deliveries += other.deliveries;
        self.delivered += other.delivered;
        add_counts(&mut self.errors, other.errors);
        self.unacked += other.unacked;
        self.undelivered += other.undelivered;
        self.ack_latency.merge(&other.ack_latency);
        self.delivery_latency.merge(&other.delivery_latency);
        for (second, latencies) in other.delivery_latency_by_second.iter().enumerate() {
            self.second(second).merge(latencies);
        }
    }

    /// Records the delivery of a message sent in `second` of the window.
    pub fn record_delivery(&mut self, second: usize, latency: Duration) {
        self.delivery_latency.record(latency);
        self.second(second).record(latency);
    }

    fn second(&mut self, second: usize) -> &mut Latencies {
        if self.delivery_latency_by_second.len() <= second {
            self.delivery_latency_by_second.resize_with(second + 1, Latencies::default);
        }
        &mut self.delivery_latency_by_second[second]
    }

    pub fn count_error(&mut self, code: &str) {
        *self.errors.entry(code.to_owned()).or_default() += 1;
    }

    pub fn count_drop(&mut self, reason: String) {
        *self.dropped.entry(reason).or_default() += 1;
    }

    pub fn dropped_total(&self) -> u64 {
        self.dropped.values().sum()
    }
}

fn add_counts(into: &mut BTreeMap<String, u64>, from: BTreeMap<String, u64>) {
    for (key, count) in from {
        *into.entry(key).or_default() += count;
    }
}

/// The longest latency told apart from longer ones; anything slower is recorded as this.
const MAX_LATENCY_MICROS: u64 = 10 * 60 * 1_000_000;

/// A latency histogram in microseconds, with three significant figures.
#[derive(Clone, Debug, PartialEq)]
pub struct Latencies(Histogram<u64>);

impl Default for Latencies {
    fn default() -> Latencies {
        Latencies(
            Histogram::new_with_bounds(1, MAX_LATENCY_MICROS, 3)
                .expect("the bounds are constant and valid"),
        )
    }
}

/// The figures a report shows for one latency, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latencies {
    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.0.saturating_record(micros.max(1));
    }

    pub fn merge(&mut self, other: &Latencies) {
        // Both sides have the same bounds, so adding cannot fail.
        self.0.add(&other.0).expect("latency histograms share their bounds");
    }

    pub fn percentiles(&self) -> Percentiles {
        let ms = |micros: u64| micros as f64 / 1000.0;
        Percentiles {
            count: self.0.len(),
            p50_ms: ms(self.0.value_at_quantile(0.50)),
            p90_ms: ms(self.0.value_at_quantile(0.90)),
            p99_ms: ms(self.0.value_at_quantile(0.99)),
            p999_ms: ms(self.0.value_at_quantile(0.999)),
            max_ms: ms(self.0.max()),
        }
    }
}

impl Serialize for Latencies {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let recorded: Vec<(u64, u64)> = self
            .0
            .iter_recorded()
            .map(|bucket| (bucket.value_iterated_to(), bucket.count_at_value()))
            .collect();
        recorded.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Latencies {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Latencies, D::Error> {
        let mut latencies = Latencies::default();
        for (value, count) in Vec::<(u64, u64)>::deserialize(deserializer)? {
            latencies.0.saturating_record_n(value, count);
        }
        Ok(latencies)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn latencies(millis: impl IntoIterator<Item = u64>) -> Latencies {
        let mut latencies = Latencies::default();
        for ms in millis {
            latencies.record(Duration::from_millis(ms));
        }
        latencies
    }

    #[test]
    fn merged_tallies_add_counters_and_histograms() {
        let mut a = Tally {
            connected: 500,
            sent: 10,
            acked: 9,
            ack_latency: latencies(1..=50),
            ..Tally::default()
        };
        a.count_error("rate_limited");
        a.count_drop("closed 4008".into());
        let mut b = Tally {
            connected: 500,
            sent: 20,
            acked: 20,
            unacked: 1,
            ack_latency: latencies(51..=100),
            ..Tally::default()
        };
        b.count_error("rate_limited");
        b.count_error("not_found");

        a.merge(b);
        assert_eq!(a.connected, 1000);
        assert_eq!((a.sent, a.acked, a.unacked), (30, 29, 1));
        assert_eq!(a.errors["rate_limited"], 2);
        assert_eq!(a.errors["not_found"], 1);
        assert_eq!(a.dropped_total(), 1);
        let p = a.ack_latency.percentiles();
        assert_eq!(p.count, 100);
        assert!((p.p50_ms - 50.0).abs() < 0.1, "{p:?}");
        assert!((p.p99_ms - 99.0).abs() < 0.1, "{p:?}");
        assert!((p.max_ms - 100.0).abs() < 0.1, "{p:?}");
    }

    #[test]
    fn deliveries_are_kept_by_second_and_merge_second_by_second() {
        let mut a = Tally::default();
        a.record_delivery(0, Duration::from_millis(2));
        a.record_delivery(2, Duration::from_millis(300));
        let mut b = Tally::default();
        b.record_delivery(0, Duration::from_millis(4));
        a.merge(b);
        let seconds = &a.delivery_latency_by_second;
        assert_eq!(seconds.len(), 3);
        assert_eq!(seconds[0].percentiles().count, 2);
        assert_eq!(seconds[1].percentiles().count, 0, "nothing was sent in second 1");
        assert!((seconds[2].percentiles().max_ms - 300.0).abs() < 0.5);
        assert_eq!(a.delivery_latency.percentiles().count, 3);
    }

    #[test]
    fn a_tally_survives_the_trip_from_a_child_process() {
        let mut tally = Tally { connected: 3, delivered: 7, ..Tally::default() };
        for (second, ms) in [(0, 1), (0, 2), (1, 3), (1, 250), (2, 9_000)] {
            tally.record_delivery(second, Duration::from_millis(ms));
        }
        tally.count_error("conflict");
        let line = serde_json::to_string(&tally).unwrap();
        assert!(!line.contains('\n'));
        let back: Tally = serde_json::from_str(&line).unwrap();
        assert_eq!(back, tally);
    }

    #[test]
    fn latencies_too_long_to_tell_apart_are_kept_not_lost() {
        let mut latencies = Latencies::default();
        latencies.record(Duration::from_secs(24 * 3600));
        latencies.record(Duration::ZERO);
        let p = latencies.percentiles();
        assert_eq!(p.count, 2);
        assert!(p.max_ms >= 600_000.0, "{p:?}");
    }
}
