//! Resume tokens: a cursor over the fan-out topics in a compact text form.
//!
//! `conversations:0.0.3.0;messages:12.0.7.1;presence:4.4.0.9` lists, per topic, the next offset
//! of each partition in partition order — short enough to ride on every pushed frame.

use std::fmt::Write;

use switchboard_ingest::log::Cursor;
use switchboard_schemas::Topic;

pub struct ResumeToken;

impl ResumeToken {
    pub fn encode(cursor: &Cursor) -> String {
        let mut token = String::with_capacity(128);
        let mut current: Option<Topic> = None;
        for (topic, _, offset) in cursor.iter() {
            if current == Some(topic) {
                token.push('.');
            } else {
                if current.is_some() {
                    token.push(';');
                }
                token.push_str(topic.name());
                token.push(':');
                current = Some(topic);
            }
            let _ = write!(token, "{offset}");
        }
        token
    }

    pub fn decode(token: &str) -> Result<Cursor, String> {
        let mut cursor = Cursor::default();
        for part in token.split(';').filter(|p| !p.is_empty()) {
            let (topic, offsets) =
                part.split_once(':').ok_or_else(|| format!("`{part}` is not topic:offsets"))?;
            let topic: Topic = topic.parse()?;
            for (partition, offset) in offsets.split('.').enumerate() {
                let offset =
                    offset.parse().map_err(|_| format!("bad offset `{offset}` in token"))?;
                cursor.set(topic, partition as u32, offset);
            }
        }
        Ok(cursor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        let mut cursor = Cursor::default();
        for p in 0..4 {
            cursor.set(Topic::Messages, p, 10 * u64::from(p));
            cursor.set(Topic::Presence, p, 7);
        }
        let token = ResumeToken::encode(&cursor);
        assert_eq!(token, "messages:0.10.20.30;presence:7.7.7.7");
        assert_eq!(ResumeToken::decode(&token).unwrap(), cursor);
        assert!(ResumeToken::decode("messages:1.x").is_err());
        assert!(ResumeToken::decode("chats:1").is_err());
    }
}
