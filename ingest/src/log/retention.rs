//! How long each topic keeps its records.
//!
//! The log is the history read models are rebuilt from, so what it forgets a rebuild cannot
//! bring back. The defaults keep that history whole and let only the traffic go that no read
//! model needs for long:
//!
//! | topic | default | what expires with it |
//! |---|---|---|
//! | `signals` | 1 hour | WebRTC offers, answers and ICE candidates: they matter while a call is set up |
//! | `presence` | 7 days | connects, disconnects, typing, live-location moves, node heartbeats: a rebuild keeps last-seen times and shared locations of the last 7 days only |
//! | `messages`, `calls` | forever | may be given a retention (a privacy policy, say): a rebuild then holds only the messages and calls of that period |
//! | `users`, `conversations` | forever, always | accounts and memberships every other read model refers to |
//!
//! Written as `presence=3d,signals=30m,messages=365d`; topics not named keep their default, and
//! `forever` keeps a topic whole.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use switchboard_schemas::Topic;

/// How long each topic keeps records; `None` keeps them forever. See the [module docs](self).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    kept: [Option<Duration>; Topic::ALL.len()],
}

const HOUR: Duration = Duration::from_secs(3600);

impl Default for Retention {
    fn default() -> Retention {
        let mut retention = Retention { kept: [None; Topic::ALL.len()] };
        retention.kept[Topic::Signals as usize] = Some(HOUR);
        retention.kept[Topic::Presence as usize] = Some(7 * 24 * HOUR);
        retention
    }
}

impl Retention {
    /// How long `topic` keeps its records; `None` is forever.
    pub fn of(&self, topic: Topic) -> Option<Duration> {
        self.kept[topic as usize]
    }

    /// The topics that drop old records, with how long they keep them.
    pub fn expiring(&self) -> impl Iterator<Item = (Topic, Duration)> + '_ {
        Topic::ALL.into_iter().filter_map(|topic| self.of(topic).map(|kept| (topic, kept)))
    }

    /// Kafka's `retention.ms` for `topic`: `-1` is forever.
    pub fn kafka_ms(&self, topic: Topic) -> String {
        self.of(topic).map_or_else(|| "-1".to_owned(), |kept| kept.as_millis().to_string())
    }
}

impl FromStr for Retention {
    type Err = String;

    fn from_str(s: &str) -> Result<Retention, String> {
        let mut retention = Retention::default();
        for setting in s.split(',').map(str::trim).filter(|setting| !setting.is_empty()) {
            let (topic, kept) = setting
                .split_once('=')
                .ok_or_else(|| format!("`{setting}` is not TOPIC=DURATION, e.g. presence=7d"))?;
            let topic: Topic = topic.trim().parse()?;
            let kept = match kept.trim() {
                "forever" => None,
                kept => {
                    let kept = humantime::parse_duration(kept).map_err(|e| {
                        format!("`{kept}` is not a duration such as 30m, 7d or forever: {e}")
                    })?;
                    if kept.is_zero() {
                        return Err(format!("{topic} cannot keep its records for no time at all"));
                    }
                    Some(kept)
                }
            };
            if kept.is_some() && matches!(topic, Topic::Users | Topic::Conversations) {
                return Err(format!(
                    "{topic} is kept forever: every other read model refers to the accounts and \
                     memberships it holds, and a rebuild without them would lose them"
                ));
            }
            retention.kept[topic as usize] = kept;
        }
        Ok(retention)
    }
}

impl fmt::Display for Retention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, topic) in Topic::ALL.into_iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match self.of(topic) {
                Some(kept) => write!(f, "{topic}={}", humantime::format_duration(kept))?,
                None => write!(f, "{topic}=forever")?,
            }
        }
        Ok(())
    }
}

/// In configuration files, the same text as on the command line.
impl Serialize for Retention {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Retention {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Retention, D::Error> {
        String::deserialize(deserializer)?.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_expire_only_signals_and_presence() {
        let retention = Retention::default();
        assert_eq!(retention.of(Topic::Signals), Some(HOUR));
        assert_eq!(retention.of(Topic::Presence), Some(7 * 24 * HOUR));
        assert_eq!(retention.of(Topic::Messages), None);
        assert_eq!(retention.kafka_ms(Topic::Signals), "3600000");
        assert_eq!(retention.kafka_ms(Topic::Users), "-1");
        assert_eq!(
            retention.to_string(),
            "users=forever,conversations=forever,messages=forever,presence=7days,calls=forever,\
             signals=1h"
        );
        assert_eq!(retention.to_string().parse(), Ok(retention));
    }

    #[test]
    fn settings_override_the_defaults_they_name() {
        let retention: Retention = "presence=3d, signals=30m,messages=365d".parse().unwrap();
        assert_eq!(retention.of(Topic::Presence), Some(3 * 24 * HOUR));
        assert_eq!(retention.of(Topic::Signals), Some(HOUR / 2));
        assert_eq!(retention.of(Topic::Messages), Some(365 * 24 * HOUR));
        assert_eq!(retention.of(Topic::Calls), None);
        let forever: Retention = "presence=forever".parse().unwrap();
        assert_eq!(forever.of(Topic::Presence), None);
        assert_eq!(forever.of(Topic::Signals), Some(HOUR));
    }

    #[test]
    fn bad_settings_say_what_is_wrong() {
        let error = |s: &str| s.parse::<Retention>().unwrap_err();
        assert!(error("users=30d").contains("users is kept forever"));
        assert!(error("conversations=1d").contains("kept forever"));
        assert!(error("presence").contains("is not TOPIC=DURATION"));
        assert!(error("presence=soon").contains("is not a duration"));
        assert!(error("presence=0s").contains("no time at all"));
        assert!(error("typing=1d").contains("unknown topic"));
    }
}
