//! What the note after a request says about it: who makes it, on which server, with which
//! headers and body, how many times.

use serde_json::json;

use crate::common::{JWT_SECRET, User};
use crate::examples::Example;

/// Who a request is made as.
pub enum Actor {
    Nobody,
    User(String),
    /// A token of this user's, past its expiry.
    Expired(String),
    Header(String),
}

/// The flags a note asks the server to run with: every `--name value` in it.
pub fn server_flags(note: &str) -> Vec<String> {
    let words: Vec<&str> = note.split([' ', ';', ',', ')']).filter(|w| !w.is_empty()).collect();
    words
        .windows(2)
        .filter(|pair| pair[0].starts_with("--"))
        .flat_map(|pair| [pair[0].to_owned(), pair[1].to_owned()])
        .collect()
}

pub fn actor(example: &Example) -> Actor {
    const PEOPLE: [&str; 4] = ["alice", "bob", "carol", "dave"];
    let note = example.note.as_str();
    if note == "no token" || example.target.starts_with("/v1/auth/") {
        return Actor::Nobody;
    }
    if let Some(token) = note.strip_prefix("Authorization: Bearer ") {
        return Actor::Header(token.to_owned());
    }
    if note.contains("past its expires_at") {
        return Actor::Expired("alice".to_owned());
    }
    let words: Vec<&str> = note.split([' ', ',', ';']).filter(|w| !w.is_empty()).collect();
    let named = match words.as_slice() {
        ["as", name, ..] => Some(*name),
        [name, ..] if PEOPLE.contains(name) => Some(*name),
        _ => None,
    };
    Actor::User(named.filter(|n| PEOPLE.contains(n)).unwrap_or("alice").to_owned())
}

/// How many times the exchange is made: a note's "third send" is the third of three.
pub fn repetitions(note: &str) -> usize {
    let ordinals = ["second", "third", "fourth"];
    let first_word = note.split(' ').next().unwrap_or_default();
    ordinals.iter().position(|o| *o == first_word).map_or(1, |i| i + 2)
}

/// A note's `Name: value` header, up to the next `,` or `;`.
pub fn note_header(note: &str, name: &str) -> Option<String> {
    let start = note.find(&format!("{name}: "))? + name.len() + 2;
    let value = note[start..].split([',', ';']).next()?;
    Some(value.trim().to_owned())
}

/// A note's `a N-byte …`: the size, with the word after it.
pub fn note_size(note: &str) -> Option<(usize, &str)> {
    let at = note.find("-byte ")?;
    let digits = note[..at].rsplit(' ').next()?.replace(',', "");
    Some((digits.parse().ok()?, note[at + 6..].split([',', ';', ' ']).next()?))
}

pub fn expired_token(user: &User) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let (iat, exp) = (now.as_secs() as i64 - 7200, now.as_secs() as i64 - 3600);
    let claims = json!({ "sub": user.id, "iat": iat, "exp": exp });
    let key = jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).expect("signing")
}
