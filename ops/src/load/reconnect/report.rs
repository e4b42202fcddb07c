//! The result of a reconnect run: what the sockets missed, how long they took to get it back,
//! and what that cost the server by its own counters; as a table for people and as JSON.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use serde::Serialize;

use super::catchup::Drain;
use super::offline::{Sent, message_count};
use crate::load::Args;
use crate::load::metrics::ResumeCounters;
use crate::load::report::{bytes, columns, counts, percentile_row, thousands};
use crate::load::tally::Percentiles;

/// What a reconnect run measured, besides the server's counters.
pub struct Measured<'a> {
    /// Sockets the server closed before the client did, before the offline period.
    pub lost_before_offline: &'a BTreeMap<String, u64>,
    pub sent: &'a Sent,
    /// From the moment every socket was closed to the start of the reconnect.
    pub away: Duration,
    pub drain: &'a Drain,
}

/// Everything a reconnect run found.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub offered: Offered,
    pub offline: Offline,
    pub reconnect: Reconnect,
    pub server: Server,
}

/// What was asked for.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Offered {
    pub url: String,
    pub connections: usize,
    pub group_size: usize,
    pub rate_per_s: f64,
    pub offline_s: f64,
    pub body_bytes: usize,
    pub send_concurrency: usize,
    pub reconnect_concurrency: usize,
    pub catch_up_timeout_s: f64,
}

/// While the sockets were away.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Offline {
    /// Sockets the server closed before the client did, before the offline period, by why.
    pub lost_before: BTreeMap<String, u64>,
    pub planned_messages: u64,
    pub acked_messages: u64,
    /// Sends that failed, by why.
    pub failed: BTreeMap<String, u64>,
    /// From the first send to the last answer.
    pub send_s: f64,
    pub achieved_rate_per_s: f64,
    /// From the moment every socket was closed to the start of the reconnect.
    pub away_s: f64,
}

/// The reconnect, as the clients saw it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Reconnect {
    pub sockets: u64,
    pub resumed: u64,
    /// `ready` without `"resumed":true`.
    pub refused: u64,
    /// Sockets that never got a `ready` frame, by why.
    pub never_ready: BTreeMap<String, u64>,
    /// Sockets lost after `ready`, by why.
    pub lost: BTreeMap<String, u64>,
    pub caught_up: u64,
    /// Start of the reconnect → the last socket caught up; none when some never did.
    pub drain_s: Option<f64>,
    /// Start of the reconnect → the last of those that caught up did.
    pub last_caught_up_s: f64,
    /// Start of the reconnect → `ready`, per socket.
    pub ready: Percentiles,
    /// Start of the reconnect → the last message owed, per socket that caught up.
    pub catch_up: Percentiles,
    /// `ready` → the last message owed, per socket that caught up: the replay alone.
    pub replay: Percentiles,
    /// Deliveries owed: each acked message once for each member of its conversation.
    pub owed: u64,
    /// `message.sent` events received, whatever their id.
    pub message_events: u64,
    pub missing: u64,
    pub duplicates: u64,
    pub unexpected: u64,
}

/// The server's counters over the reconnect.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Server {
    pub resumes: u64,
    pub sync_required: u64,
    pub feed_reads: u64,
    pub events_replayed: u64,
    /// Events the delivery stage routed into feeds during the reconnect: the backlog it still
    /// had when the sockets came back (those reach them live, after the replay).
    pub routed_during_reconnect: u64,
    pub feed_reads_per_event: Option<f64>,
    pub events_per_feed_read: Option<f64>,
    pub memory_before_bytes: Option<u64>,
    pub memory_after_bytes: Option<u64>,
}

impl Summary {
    pub fn new(
        args: &Args,
        measured: &Measured<'_>,
        before: &ResumeCounters,
        after: &ResumeCounters,
    ) -> Summary {
        let Measured { sent, drain, .. } = measured;
        let delta = after.since(before);
        let ratio = |a: u64, b: u64| (b > 0).then(|| a as f64 / b as f64);
        Summary {
            offered: Offered {
                url: args.url.clone(),
                connections: args.connections,
                group_size: args.group_size,
                rate_per_s: args.rate,
                offline_s: args.offline.as_secs_f64(),
                body_bytes: args.body_bytes,
                send_concurrency: args.send_concurrency,
                reconnect_concurrency: args.reconnect_concurrency,
                catch_up_timeout_s: args.catch_up_timeout.as_secs_f64(),
            },
            offline: Offline {
                lost_before: measured.lost_before_offline.clone(),
                planned_messages: message_count(args.rate, args.offline) as u64,
                acked_messages: sent.acked_total(),
                failed: sent.failed.clone(),
                send_s: sent.elapsed.as_secs_f64(),
                achieved_rate_per_s: sent.achieved_rate(),
                away_s: measured.away.as_secs_f64(),
            },
            reconnect: Reconnect {
                sockets: drain.sockets,
                resumed: drain.resumed,
                refused: drain.refused,
                never_ready: drain.failed.clone(),
                lost: drain.lost.clone(),
                caught_up: drain.caught_up,
                drain_s: drain.drain_time().map(|time| time.as_secs_f64()),
                last_caught_up_s: drain.last_caught_up.as_secs_f64(),
                ready: drain.ready.percentiles(),
                catch_up: drain.catch_up.percentiles(),
                replay: drain.replay.percentiles(),
                owed: drain.expected,
                message_events: drain.events,
                missing: drain.missing,
                duplicates: drain.duplicates,
                unexpected: drain.unexpected,
            },
            server: Server {
                resumes: delta.resumed,
                sync_required: delta.sync_required,
                feed_reads: delta.feed_reads,
                events_replayed: delta.events,
                routed_during_reconnect: delta.routed,
                feed_reads_per_event: ratio(delta.feed_reads, delta.events),
                events_per_feed_read: ratio(delta.events, delta.feed_reads),
                memory_before_bytes: before.resident_bytes,
                memory_after_bytes: after.resident_bytes,
            },
        }
    }

    /// The full result, for people.
    pub fn table(&self) -> String {
        let Summary { offered: o, offline: off, reconnect: r, server: s } = self;
        let conversations = if o.group_size == 2 {
            "direct conversations".to_owned()
        } else {
            format!("groups of {}", o.group_size)
        };
        let mut out = String::new();
        let _ = writeln!(out, "switchboard reconnect test against {}", o.url);
        let _ = writeln!(
            out,
            "offered      {} sockets in {conversations}, away {}s while {} messages/s are sent \
             ({}-byte bodies, {} sends in flight)",
            thousands(o.connections as f64),
            o.offline_s,
            thousands(o.rate_per_s),
            o.body_bytes,
            o.send_concurrency
        );
        let _ = writeln!(
            out,
            "             then all back at once: {} upgrades in flight, {}s to catch up",
            o.reconnect_concurrency, o.catch_up_timeout_s
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "offline      sent {} of {} in {:.2} s: {:.1} messages/s   failed {}",
            thousands(off.acked_messages as f64),
            thousands(off.planned_messages as f64),
            off.send_s,
            off.achieved_rate_per_s,
            counts(&off.failed)
        );
        let _ = writeln!(
            out,
            "             sockets away {:.2} s   closed by the server before that {}",
            off.away_s,
            counts(&off.lost_before)
        );
        let _ = writeln!(
            out,
            "reconnect    sockets {}   resumed {}   refused {}   never ready {}   lost {}",
            thousands(r.sockets as f64),
            thousands(r.resumed as f64),
            thousands(r.refused as f64),
            counts(&r.never_ready),
            counts(&r.lost)
        );
        let drain = r.drain_s.map_or_else(
            || format!("never ({} did not catch up)", thousands((r.sockets - r.caught_up) as f64)),
            |seconds| format!("{seconds:.2} s"),
        );
        let _ = writeln!(
            out,
            "catch-up     caught up {}   drain time {drain}   last caught up {:.2} s",
            thousands(r.caught_up as f64),
            r.last_caught_up_s
        );
        let _ = writeln!(
            out,
            "deliveries   owed {}   message events {}   missing {}   duplicates {}   unexpected {}",
            thousands(r.owed as f64),
            thousands(r.message_events as f64),
            thousands(r.missing as f64),
            thousands(r.duplicates as f64),
            thousands(r.unexpected as f64)
        );
        let _ = writeln!(out);
        out.push_str(&columns(&[
            ["time (ms)", "sockets", "p50", "p90", "p99", "max"].map(str::to_owned).to_vec(),
            percentile_row("reconnect -> ready", &r.ready, 0),
            percentile_row("reconnect -> caught up", &r.catch_up, 0),
            percentile_row("ready -> caught up", &r.replay, 0),
        ]));
        let _ = writeln!(out);
        let ratio =
            |value: Option<f64>| value.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.3}"));
        let _ = writeln!(
            out,
            "server       resumes {}   sync_required {}   feed reads {}   events replayed {}",
            thousands(s.resumes as f64),
            thousands(s.sync_required as f64),
            thousands(s.feed_reads as f64),
            thousands(s.events_replayed as f64)
        );
        let _ = writeln!(
            out,
            "             feed reads per event {}   events per feed read {}",
            ratio(s.feed_reads_per_event),
            ratio(s.events_per_feed_read)
        );
        let _ = writeln!(
            out,
            "             events routed into feeds during the reconnect (delivery backlog) {}",
            thousands(s.routed_during_reconnect as f64)
        );
        let memory =
            |value: Option<u64>| value.map_or_else(|| "unknown".to_owned(), |b| bytes(b as f64));
        let _ = write!(
            out,
            "memory       before the reconnect {}   after {}",
            memory(s.memory_before_bytes),
            memory(s.memory_after_bytes)
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::reconnect::catchup::CatchUp;
    use std::collections::HashSet;
    use std::sync::Arc;

    fn summary(drain: &Drain) -> Summary {
        let args = crate::load::tests::args(&[
            "--scenario",
            "reconnect",
            "--connections",
            "4",
            "--rate",
            "2",
            "--offline",
            "2s",
        ]);
        let sent = Sent {
            acked: vec![vec!["1".into(), "3".into()], vec!["2".into()]],
            failed: BTreeMap::from([("503 Service Unavailable unavailable".to_owned(), 1)]),
            elapsed: Duration::from_secs(2),
        };
        let lost = BTreeMap::new();
        let measured = Measured {
            lost_before_offline: &lost,
            sent: &sent,
            away: Duration::from_secs(3),
            drain,
        };
        let before = ResumeCounters { resident_bytes: Some(100 << 20), ..Default::default() };
        let after = ResumeCounters {
            feed_reads: 4,
            events: 6,
            resumed: 4,
            sync_required: 0,
            routed: 2,
            resident_bytes: Some(150 << 20),
        };
        Summary::new(&args, &measured, &before, &after)
    }

    fn drain() -> Drain {
        let mut drain = Drain::default();
        for (owed, caught_up) in [(&["1", "3"][..], 900), (&["1", "3"][..], 1200), (&["2"][..], 40)]
        {
            let owed: HashSet<String> = owed.iter().map(|id| id.to_string()).collect();
            let mut socket = CatchUp::new(Arc::new(owed.clone()));
            socket.ready(Duration::from_millis(30));
            for id in &owed {
                socket.message(id, Duration::from_millis(caught_up));
            }
            drain.add(socket.finish(true, None));
        }
        drain
    }

    #[test]
    fn the_summary_has_the_figures_to_write_down() {
        let mut drain = drain();
        let summary = summary(&drain);
        assert_eq!(summary.offline.planned_messages, 4);
        assert_eq!(summary.offline.acked_messages, 3);
        assert_eq!(summary.offline.achieved_rate_per_s, 1.5);
        assert_eq!(summary.reconnect.drain_s, Some(1.2));
        assert_eq!(summary.server.feed_reads_per_event, Some(4.0 / 6.0));
        assert_eq!(summary.server.events_per_feed_read, Some(1.5));
        let table = summary.table();
        for expected in [
            "sent 3 of 4 in 2.00 s: 1.5 messages/s   failed 503 Service Unavailable unavailable: 1",
            "sockets 3   resumed 3   refused 0   never ready none   lost none",
            "caught up 3   drain time 1.20 s",
            "owed 5   message events 5   missing 0   duplicates 0   unexpected 0",
            "resumes 4   sync_required 0   feed reads 4   events replayed 6",
            "feed reads per event 0.667   events per feed read 1.500",
            "during the reconnect (delivery backlog) 2",
            "before the reconnect 100.0 MiB   after 150.0 MiB",
        ] {
            assert!(table.contains(expected), "missing `{expected}` in\n{table}");
        }
        let caught_up = table.lines().find(|l| l.starts_with("reconnect -> caught up")).unwrap();
        assert!(caught_up.contains("1200"), "{caught_up}");
        let replay = table.lines().find(|l| l.starts_with("ready -> caught up")).unwrap();
        assert!(replay.contains("1170"), "{replay}");

        drain.add_failed("no `ready` in time".into(), 2);
        let table = self::summary(&drain).table();
        assert!(table.contains("drain time never (1 did not catch up)"), "{table}");
        assert!(table.contains("never ready no `ready` in time: 1"), "{table}");
        assert!(table.contains("missing 2"), "{table}");
    }

    #[test]
    fn ratios_of_nothing_are_not_numbers() {
        let summary = summary(&Drain::default());
        let json = serde_json::to_value(&summary).unwrap();
        assert_eq!(json["reconnect"]["drain_s"], 0.0, "no socket: nothing left to drain");
        let empty = Summary::new(
            &crate::load::tests::args(&[]),
            &Measured {
                lost_before_offline: &BTreeMap::new(),
                sent: &Sent::default(),
                away: Duration::ZERO,
                drain: &Drain::default(),
            },
            &ResumeCounters::default(),
            &ResumeCounters::default(),
        );
        assert_eq!(empty.server.feed_reads_per_event, None);
        assert!(empty.table().contains("feed reads per event n/a"));
        assert!(empty.table().contains("before the reconnect unknown"));
    }
}
