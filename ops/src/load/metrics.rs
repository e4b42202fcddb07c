//! The server's `/metrics` page, read as numbers.
//!
//! The load generator reads the server's own counters rather than inferring them: its resident
//! memory (what a socket costs), its CPU time (what a message costs) and, for the reconnect
//! scenario, what resuming cost it (feed
//! reads, events replayed). A scrape is a map from each series, written as the page writes it
//! (`name` or `name{label="value",…}`), to its value; differences of two scrapes are what
//! happened between them.

use std::collections::BTreeMap;

use serde::Serialize;

/// The gauge the server keeps its resident set size in.
pub const RESIDENT_MEMORY: &str = "process_resident_memory_bytes";

/// The gauge of the CPU time the server has used, user and system, in seconds.
pub const CPU_SECONDS: &str = "process_cpu_seconds_total";

/// One reading of a Prometheus text page.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scrape(BTreeMap<String, f64>);

impl Scrape {
    /// Reads every sample of `text`; comments and lines that are not samples are skipped.
    pub fn parse(text: &str) -> Scrape {
        Scrape(text.lines().filter_map(sample).collect())
    }

    /// The value of one series, named exactly as the page writes it.
    pub fn value(&self, series: &str) -> Option<f64> {
        self.0.get(series).copied()
    }

    /// The sum of every series of metric `name`, whatever their labels; 0 when it has none
    /// (the server shows a counter only once it has counted something).
    pub fn total(&self, name: &str) -> f64 {
        self.0
            .iter()
            .filter(|(series, _)| metric_name(series) == name)
            .map(|(_, value)| value)
            .sum()
    }
}

/// `name{labels} value [timestamp]` as (series, value).
fn sample(line: &str) -> Option<(String, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let series_end = match (line.find('{'), line.find(char::is_whitespace)) {
        (Some(open), Some(space)) if open < space => line.rfind('}')? + 1,
        (_, space) => space?,
    };
    let (series, rest) = line.split_at(series_end);
    let value: f64 = rest.split_whitespace().next()?.parse().ok()?;
    Some((series.to_owned(), value))
}

fn metric_name(series: &str) -> &str {
    series.split_once('{').map_or(series, |(name, _)| name)
}

/// The counters that say what resuming cost the server, and its memory, at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct ResumeCounters {
    /// Range reads of users' feeds made for resumes (`resume_feed_reads_total`).
    pub feed_reads: u64,
    /// Events replayed to resuming sockets (`resume_events_total`).
    pub events: u64,
    /// Resumes served (`resumes_total{outcome="resumed"}`).
    pub resumed: u64,
    /// Resumes refused, the client told to sync (`resumes_total{outcome="sync_required"}`).
    pub sync_required: u64,
    /// Events the delivery stage has routed into users' feeds, messages among them
    /// (`delivery_events_total{lane="delivery"}`): what it routes during a reconnect is what
    /// it had not routed yet when the sockets came back, and reaches them live, not replayed.
    pub routed: u64,
    /// The server's resident memory, when it reports it.
    pub resident_bytes: Option<u64>,
}

impl ResumeCounters {
    pub fn read(scrape: &Scrape) -> ResumeCounters {
        let count = |name: &str| scrape.total(name) as u64;
        let outcome = |outcome: &str| {
            scrape.value(&format!("resumes_total{{outcome=\"{outcome}\"}}")).unwrap_or(0.0) as u64
        };
        ResumeCounters {
            feed_reads: count("resume_feed_reads_total"),
            events: count("resume_events_total"),
            resumed: outcome("resumed"),
            sync_required: outcome("sync_required"),
            routed: scrape.value("delivery_events_total{lane=\"delivery\"}").unwrap_or(0.0) as u64,
            resident_bytes: scrape.value(RESIDENT_MEMORY).map(|bytes| bytes as u64),
        }
    }

    /// What was counted from `before` to `self`; the memory is `self`'s.
    pub fn since(&self, before: &ResumeCounters) -> ResumeCounters {
        ResumeCounters {
            feed_reads: self.feed_reads.saturating_sub(before.feed_reads),
            events: self.events.saturating_sub(before.events),
            resumed: self.resumed.saturating_sub(before.resumed),
            sync_required: self.sync_required.saturating_sub(before.sync_required),
            routed: self.routed.saturating_sub(before.routed),
            resident_bytes: self.resident_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "\
# TYPE resumes_total counter
resumes_total{outcome=\"resumed\"} 9998
resumes_total{outcome=\"sync_required\"} 2
# TYPE resume_feed_reads_total counter
resume_feed_reads_total 10004
resume_events_total 120000 1712345678000
delivery_events_total{lane=\"delivery\"} 65000
delivery_events_total{lane=\"delivery-presence\"} 20000
http_requests_total{method=\"GET\",route=\"/v1/ws\",status=\"101\"} 20000
process_resident_memory_bytes 2.5e8
process_resident_memory_bytes_total 1
not a sample
";

    #[test]
    fn series_are_read_with_their_labels() {
        let scrape = Scrape::parse(PAGE);
        assert_eq!(scrape.value("resumes_total{outcome=\"resumed\"}"), Some(9998.0));
        assert_eq!(
            scrape.value("resume_events_total"),
            Some(120_000.0),
            "timestamps are not values"
        );
        assert_eq!(
            scrape.value("http_requests_total{method=\"GET\",route=\"/v1/ws\",status=\"101\"}"),
            Some(20_000.0)
        );
        assert_eq!(scrape.value("process_resident_memory_bytes"), Some(250_000_000.0));
        assert_eq!(scrape.value("not"), None);
        assert_eq!(scrape.total("resumes_total"), 10_000.0);
        assert_eq!(scrape.total("sockets_evicted_total"), 0.0);
    }

    #[test]
    fn label_values_may_hold_spaces_and_braces() {
        let scrape = Scrape::parse("errors_total{reason=\"a } b\"} 3\n");
        assert_eq!(scrape.value("errors_total{reason=\"a } b\"}"), Some(3.0));
        assert_eq!(scrape.total("errors_total"), 3.0);
    }

    #[test]
    fn resume_counters_are_read_and_subtracted() {
        let after = ResumeCounters::read(&Scrape::parse(PAGE));
        assert_eq!(
            after,
            ResumeCounters {
                feed_reads: 10_004,
                events: 120_000,
                resumed: 9998,
                sync_required: 2,
                routed: 65_000,
                resident_bytes: Some(250_000_000),
            }
        );
        let before = ResumeCounters::read(&Scrape::parse(
            "resume_feed_reads_total 4\nprocess_resident_memory_bytes 1e8\n",
        ));
        assert_eq!(
            (before.feed_reads, before.events, before.resumed, before.resident_bytes),
            (4, 0, 0, Some(100_000_000)),
            "a counter not shown yet is 0"
        );
        let delta = after.since(&before);
        assert_eq!((delta.feed_reads, delta.events, delta.resumed), (10_000, 120_000, 9998));
        assert_eq!(delta.resident_bytes, Some(250_000_000));
    }
}
