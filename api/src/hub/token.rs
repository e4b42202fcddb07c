//! Resume tokens: where a socket stands in its user's feed.
//!
//! `1764937200123456.42.1764940800000` is the feed's epoch, the number of the last entry pushed
//! and when that entry was appended (ms) — short, and the same length whatever the number of
//! partitions or of other users. The time lets a client that comes back after the feed has let
//! the entry go be told since when it must sync.

use std::fmt;
use std::str::FromStr;

use switchboard_projector::feed::Head;
use switchboard_schemas::Topic;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResumeToken {
    pub epoch: u64,
    pub seq: u64,
    pub at: i64,
}

impl From<Head> for ResumeToken {
    fn from(head: Head) -> ResumeToken {
        ResumeToken { epoch: head.epoch, seq: head.seq, at: head.at }
    }
}

impl fmt::Display for ResumeToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.epoch, self.seq, self.at)
    }
}

/// What a client passed as `resume`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resume {
    From(ResumeToken),
    /// A token of the log positions earlier versions handed out: well-formed, but no longer
    /// resumable, so the client is told to sync rather than refused.
    Retired,
}

impl FromStr for Resume {
    type Err = String;

    fn from_str(token: &str) -> Result<Resume, String> {
        if token.split(';').all(is_log_position) {
            return Ok(Resume::Retired);
        }
        let not_a_token = || format!("`{token}` is not a resume token; tokens are EPOCH.SEQ.TIME");
        let numbers: Vec<u64> = token
            .split('.')
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map_err(|_| not_a_token())?;
        let [epoch, seq, at] = numbers[..] else { return Err(not_a_token()) };
        let at = i64::try_from(at).map_err(|_| not_a_token())?;
        Ok(Resume::From(ResumeToken { epoch, seq, at }))
    }
}

/// A part of an earlier version's token: `messages:0.12.3`, a topic and offsets.
fn is_log_position(part: &str) -> bool {
    part.split_once(':').is_some_and(|(topic, offsets)| {
        topic.parse::<Topic>().is_ok()
            && offsets.split('.').all(|o| !o.is_empty() && o.bytes().all(|b| b.is_ascii_digit()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        let token = ResumeToken { epoch: 1_764_937_200_123_456, seq: 42, at: 1_764_940_800_000 };
        let text = token.to_string();
        assert_eq!(text, "1764937200123456.42.1764940800000");
        assert_eq!(text.parse(), Ok(Resume::From(token)));
    }

    #[test]
    fn old_log_tokens_are_retired_and_garbage_is_refused() {
        assert_eq!("conversations:0.1;messages:3.0".parse(), Ok(Resume::Retired));
        assert!("1.2".parse::<Resume>().is_err());
        assert!("1.2.3.4".parse::<Resume>().is_err());
        assert!("1.x.3".parse::<Resume>().is_err());
        assert!("chats".parse::<Resume>().is_err());
        assert!("chats:1".parse::<Resume>().is_err(), "no such topic");
    }
}
