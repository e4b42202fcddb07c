//! ICE servers for calls: the STUN and TURN servers a participant gives its peer connections.
//!
//! A TURN server relays media, so its credentials go only to a call's participants, in the
//! answer to the op that makes them one, and they run out. They follow the TURN REST API scheme
//! that coturn checks with `use-auth-secret`: the username is `EXPIRY:USER_ID` (EXPIRY in Unix
//! seconds) and the password the base64 of the HMAC-SHA1 of the username, keyed with the secret
//! switchboard and the TURN servers share, so the TURN server verifies them without asking
//! switchboard anything.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::hmac;
use serde::Serialize;
use switchboard_schemas::UserId;

/// A comma-separated list of ICE server URLs (`stun:host:port`, `turns:host:port?transport=tcp`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IceUrls(pub Vec<String>);

impl FromStr for IceUrls {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let urls: Vec<String> =
            s.split(',').map(str::trim).filter(|url| !url.is_empty()).map(String::from).collect();
        if let Some(bad) = urls.iter().find(|url| scheme(url).is_none()) {
            return Err(format!(
                "`{bad}` is not an ICE server URL such as `stun:stun.example.org:3478` or \
                 `turn:turn.example.org:3478`"
            ));
        }
        Ok(IceUrls(urls))
    }
}

impl fmt::Display for IceUrls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

impl IceUrls {
    /// The first URL whose scheme is not one of `schemes`.
    pub fn not_of(&self, schemes: &[&str]) -> Option<&str> {
        self.0
            .iter()
            .map(String::as_str)
            .find(|url| !scheme(url).is_some_and(|s| schemes.contains(&s)))
    }
}

fn scheme(url: &str) -> Option<&str> {
    let (scheme, rest) = url.split_once(':')?;
    (["stun", "stuns", "turn", "turns"].contains(&scheme) && !rest.is_empty()).then_some(scheme)
}

/// One entry of `RTCConfiguration.iceServers`, as a browser takes it.
#[derive(Debug, Serialize, PartialEq)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// The ICE servers of a deployment: STUN servers as they are, TURN servers with a secret.
#[derive(Clone, Debug, Default)]
pub struct IceServers {
    pub stun: IceUrls,
    pub turn: IceUrls,
    pub turn_secret: Option<String>,
    pub turn_ttl: Duration,
}

impl IceServers {
    /// What `user` gives its peer connections now: the STUN servers, and the TURN servers with
    /// credentials valid for `turn_ttl` from `now`.
    pub fn for_user(&self, user: UserId, now: SystemTime) -> Vec<IceServer> {
        let mut servers = Vec::new();
        if !self.stun.0.is_empty() {
            servers.push(IceServer { urls: self.stun.0.clone(), username: None, credential: None });
        }
        if let Some(secret) = self.turn_secret.as_deref().filter(|_| !self.turn.0.is_empty()) {
            let expiry = (now + self.turn_ttl).duration_since(UNIX_EPOCH).unwrap_or_default();
            let username = format!("{}:{user}", expiry.as_secs());
            let credential = turn_password(secret, &username);
            servers.push(IceServer {
                urls: self.turn.0.clone(),
                username: Some(username),
                credential: Some(credential),
            });
        }
        servers
    }
}

/// The TURN REST API password of `username`: base64(HMAC-SHA1(secret, username)).
pub fn turn_password(secret: &str, username: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
    STANDARD.encode(hmac::sign(&key, username.as_bytes()).as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_the_base64_of_the_hmac_sha1_of_the_username() {
        // printf '%s' '1796000000:252929149987323904' | openssl dgst -sha1 -hmac 'north wind' -binary | base64
        assert_eq!(
            turn_password("north wind", "1796000000:252929149987323904"),
            "dkmGZKyKUhQh+/Z9Eh8U2RCL8d0="
        );
    }

    #[test]
    fn turn_credentials_name_the_user_and_expire_after_the_ttl() {
        let servers = IceServers {
            stun: "stun:stun.example.org:3478".parse().unwrap(),
            turn: "turn:turn.example.org:3478, turns:turn.example.org:5349".parse().unwrap(),
            turn_secret: Some("north wind".into()),
            turn_ttl: Duration::from_secs(3600),
        };
        let now = UNIX_EPOCH + Duration::from_secs(1_795_996_400);
        let given = servers.for_user(UserId(252929149987323904), now);
        assert_eq!(
            given,
            [
                IceServer {
                    urls: vec!["stun:stun.example.org:3478".into()],
                    username: None,
                    credential: None
                },
                IceServer {
                    urls: vec![
                        "turn:turn.example.org:3478".into(),
                        "turns:turn.example.org:5349".into()
                    ],
                    username: Some("1796000000:252929149987323904".into()),
                    credential: Some(turn_password("north wind", "1796000000:252929149987323904")),
                },
            ]
        );
        assert!(IceServers::default().for_user(UserId(1), now).is_empty());
    }

    #[test]
    fn urls_are_checked() {
        assert_eq!("".parse::<IceUrls>().unwrap(), IceUrls::default());
        let bad = "stun:a:3478,http://b".parse::<IceUrls>().unwrap_err();
        assert!(bad.contains("`http://b` is not an ICE server URL"), "{bad}");
        let mixed: IceUrls = "stun:a:3478,turn:b:3478".parse().unwrap();
        assert_eq!(mixed.not_of(&["stun", "stuns"]), Some("turn:b:3478"));
        assert_eq!(mixed.not_of(&["stun", "turn"]), None);
    }
}
