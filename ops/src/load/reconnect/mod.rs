//! `switchboard load --scenario reconnect`: what a mass reconnect with resume costs. N sockets
//! each miss D seconds of traffic at R messages/s, then all come back at once; the figures are
//! the resume cost (the server's feed reads per event replayed) and the drain time (until the
//! last socket has everything it missed).
//!
//! 1. Setup as in the steady scenario (users, conversations), then [`sockets::leave_all`]:
//!    every socket opens, reads until quiet so that it knows its last resume token, and closes
//!    cleanly.
//! 2. [`offline`]: `--rate` messages/s for `--offline` over HTTP, round-robin over the
//!    conversations, recording the ids acked per conversation.
//! 3. [`sockets::Return`]: every socket reconnects with `resume=<its last token>`,
//!    `--reconnect-concurrency` upgrades at a time, and is followed until it has received every
//!    id acked for its conversation ([`catchup`]). The server's counters are read just before
//!    and once every socket has caught up (or the timeout passed): their difference is what the
//!    resumes cost it.
//! 4. [`report`]: a table and, with `--json`, the same as JSON.
//!
//! One process drives the whole run: it holds up to about 19,000 sockets here (20,000 open
//! files per process), enough for the 10,000 of the target configuration.

mod catchup;
mod offline;
mod report;
mod sockets;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use super::Args;
use super::metrics::ResumeCounters;
use super::setup::{Api, Conversation};
use offline::Traffic;
use report::{Measured, Summary};
use sockets::Return;

/// Runs the reconnect scenario and reports it.
pub async fn command(args: &Args) -> anyhow::Result<()> {
    let api = Api::new(&args.url)?;
    let (accounts, conversations) = super::populate(args, 0, "").await?;
    let ws_base = args.ws_base();
    let left = sockets::leave_all(&ws_base, &accounts, args.sources()).await?;
    let away_since = Instant::now();

    eprintln!(
        "every socket is closed; sending {} messages/s for {}",
        args.rate,
        humantime::format_duration(args.offline)
    );
    let traffic = Traffic {
        api: &api,
        accounts: &accounts,
        conversations: &conversations,
        rate: args.rate,
        offline: args.offline,
        concurrency: args.send_concurrency,
        body: "x".repeat(args.body_bytes),
    };
    let sent = traffic.send().await;
    eprintln!(
        "sent {} messages in {:.2} s: {:.1} messages/s; {} failed",
        sent.acked_total(),
        sent.elapsed.as_secs_f64(),
        sent.achieved_rate(),
        sent.failed_total()
    );

    let owed = owed(&conversations, &sent.acked, accounts.len());
    let before = ResumeCounters::read(&api.scrape().await?);
    let away = away_since.elapsed();
    eprintln!("reconnecting every socket with resume");
    let back = Return {
        ws_base: &ws_base,
        accounts: &accounts,
        tokens: &left.tokens,
        owed: &owed,
        concurrency: args.reconnect_concurrency,
        sources: args.sources(),
        timeout: args.catch_up_timeout,
    };
    let (drain, after) = back.run(async || api.scrape().await).await;
    let after = ResumeCounters::read(&after?);

    let measured = Measured { lost_before_offline: &left.lost, sent: &sent, away, drain: &drain };
    let summary = Summary::new(args, &measured, &before, &after);
    println!("{}", summary.table());
    super::write_json(args.json.as_deref(), &summary)
}

/// The message ids each of `accounts` accounts is owed: every id acked for its conversation,
/// one set shared by the conversation's members.
fn owed(
    conversations: &[Conversation],
    acked: &[Vec<String>],
    accounts: usize,
) -> Vec<Arc<HashSet<String>>> {
    let mut owed = vec![Arc::default(); accounts];
    for (conversation, ids) in conversations.iter().zip(acked) {
        let ids: Arc<HashSet<String>> = Arc::new(ids.iter().cloned().collect());
        for member in conversation.members.clone() {
            owed[member] = Arc::clone(&ids);
        }
    }
    owed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_owed_what_their_conversation_was_sent() {
        let conversations = vec![
            Conversation { id: "a".into(), members: 0..2 },
            Conversation { id: "b".into(), members: 2..5 },
        ];
        let acked = vec![vec!["1".to_owned(), "3".to_owned()], vec!["2".to_owned()]];
        let owed = owed(&conversations, &acked, 5);
        let ids = |account: usize| {
            let mut ids: Vec<&str> = owed[account].iter().map(String::as_str).collect();
            ids.sort_unstable();
            ids
        };
        assert_eq!(ids(0), ["1", "3"]);
        assert_eq!(ids(1), ["1", "3"]);
        assert_eq!(ids(4), ["2"]);
        assert!(Arc::ptr_eq(&owed[2], &owed[3]), "one set per conversation");
    }
}
