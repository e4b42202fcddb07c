//! The traffic the sockets miss: `--rate` messages/s for `--offline`, sent over HTTP while
//! every socket is closed, each acked id recorded for its conversation.
//!
//! Sends go round-robin over the conversations, and within a conversation its members take
//! turns, so that every user misses messages from the others and echoes of its own. The pace is
//! open-loop, as in the steady scenario: message `n` is due `n / rate` seconds after the start
//! whether or not the earlier ones were answered, with at most `--send-concurrency` requests
//! in flight over a keep-alive client; when the server is slower than that, the sends fall
//! behind and the achieved rate says by how much.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::{StreamExt, stream};

use crate::load::setup::{Account, Api, Conversation, Progress};

/// A send that takes longer than this counts as failed. It may still be stored; it would then
/// arrive as an unexpected id.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// What the offline period sent.
#[derive(Debug, Default)]
pub struct Sent {
    /// The ids acked, by conversation (in the order of the conversations given).
    pub acked: Vec<Vec<String>>,
    /// Sends that failed, by why.
    pub failed: BTreeMap<String, u64>,
    /// From the first send to the last answer.
    pub elapsed: Duration,
}

impl Sent {
    pub fn acked_total(&self) -> u64 {
        self.acked.iter().map(|ids| ids.len() as u64).sum()
    }

    pub fn failed_total(&self) -> u64 {
        self.failed.values().sum()
    }

    /// Acked messages per second of sending.
    pub fn achieved_rate(&self) -> f64 {
        self.acked_total() as f64 / self.elapsed.as_secs_f64().max(1e-3)
    }
}

/// How many messages `rate` per second for `offline` is.
pub fn message_count(rate: f64, offline: Duration) -> usize {
    (rate * offline.as_secs_f64()).round() as usize
}

/// Which conversation message `n` goes to, and which account sends it: the conversations in
/// turn, and in each conversation its members in turn.
pub fn pick(n: usize, conversations: &[Conversation]) -> (usize, usize) {
    let conversation = n % conversations.len();
    let round = n / conversations.len();
    let members = &conversations[conversation].members;
    (conversation, members.start + round % members.len())
}

/// When message `n` is due, counted from the start.
pub fn due(n: usize, rate: f64) -> Duration {
    Duration::from_secs_f64(n as f64 / rate)
}

/// What the offline period sends, and how.
pub struct Traffic<'a> {
    pub api: &'a Api,
    pub accounts: &'a [Account],
    pub conversations: &'a [Conversation],
    pub rate: f64,
    pub offline: Duration,
    pub concurrency: usize,
    pub body: String,
}

impl Traffic<'_> {
    /// Sends every message of the offline period; returns when the last one is answered.
    pub async fn send(&self) -> Sent {
        let count = message_count(self.rate, self.offline);
        let mut sent =
            Sent { acked: vec![Vec::new(); self.conversations.len()], ..Sent::default() };
        let mut progress = Progress::new("sending while offline", count);
        let start = Instant::now();
        let mut answers = stream::iter(0..count)
            .map(|n| async move {
                tokio::time::sleep_until((start + due(n, self.rate)).into()).await;
                (n, self.send_one(n).await)
            })
            .buffer_unordered(self.concurrency);
        while let Some((n, answer)) = answers.next().await {
            match answer {
                Ok(id) => sent.acked[pick(n, self.conversations).0].push(id),
                Err(reason) => *sent.failed.entry(reason).or_default() += 1,
            }
            progress.advance();
        }
        sent.elapsed = start.elapsed();
        sent
    }

    async fn send_one(&self, n: usize) -> Result<String, String> {
        let (conversation, sender) = pick(n, self.conversations);
        let client_msg_id = format!("offline-{n}");
        let send = self.api.send_message(
            &self.accounts[sender],
            &self.conversations[conversation].id,
            &client_msg_id,
            &self.body,
        );
        tokio::time::timeout(SEND_TIMEOUT, send)
            .await
            .unwrap_or_else(|_| Err("no answer (timed out)".to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conversations(groups: &[std::ops::Range<usize>]) -> Vec<Conversation> {
        groups
            .iter()
            .enumerate()
            .map(|(i, members)| Conversation { id: i.to_string(), members: members.clone() })
            .collect()
    }

    #[test]
    fn sends_go_round_the_conversations_and_their_members() {
        let conversations = conversations(&[0..2, 2..4, 4..7]);
        let picks: Vec<_> = (0..9).map(|n| pick(n, &conversations)).collect();
        assert_eq!(picks, [(0, 0), (1, 2), (2, 4), (0, 1), (1, 3), (2, 5), (0, 0), (1, 2), (2, 6)]);
    }

    #[test]
    fn every_user_sends_and_misses_messages_once_each_conversation_had_two() {
        let conversations = conversations(&[0..2, 2..4, 4..6]);
        let senders: std::collections::HashSet<usize> =
            (0..6).map(|n| pick(n, &conversations).1).collect();
        assert_eq!(senders.len(), 6);
    }

    #[test]
    fn the_pace_is_the_rate_for_the_offline_period() {
        assert_eq!(message_count(1000.0, Duration::from_secs(60)), 60_000);
        assert_eq!(message_count(2.5, Duration::from_secs(1)), 3);
        assert_eq!(due(0, 1000.0), Duration::ZERO);
        assert_eq!(due(1500, 1000.0), Duration::from_millis(1500));
        let sent = Sent {
            acked: vec![vec!["1".into(), "2".into()], vec!["3".into()]],
            failed: BTreeMap::from([("503 unavailable".to_owned(), 1)]),
            elapsed: Duration::from_millis(1500),
        };
        assert_eq!((sent.acked_total(), sent.failed_total()), (3, 1));
        assert_eq!(sent.achieved_rate(), 2.0);
    }
}
