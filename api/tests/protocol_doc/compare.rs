//! Whether a real response says what a captured one says.
//!
//! A capture is one run; a replay is another, with other ids, times and positions. So the
//! comparison holds the replay to the contract, not to the values of one run: the same fields,
//! of the same types, at every level; the same error codes and messages; the same strings where
//! they are not ids, tokens or times. Values that depend on the state of the run (counts,
//! flags, which of several items comes first) are left to the behavioural suites.
//!
//! The document writes `…` where it leaves something out: `"eyJ0eXAi…"` is a string that
//! starts so, and `{"state":"ringing",…}` an object with more fields.

use std::collections::HashMap;

use serde_json::Value;

/// Doc ids and tokens, as the replay learns them, with their real counterparts.
#[derive(Default)]
pub struct Names {
    ids: HashMap<String, String>,
    tokens: HashMap<String, String>,
}

/// A 64-bit id as the API writes it.
pub fn is_id(text: &str) -> bool {
    (15..=20).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit())
}

/// A consistency token, `topic/partition/offset`; returns the topic.
pub fn token_topic(text: &str) -> Option<&str> {
    let mut parts = text.split('/');
    let (topic, partition, offset) = (parts.next()?, parts.next()?, parts.next()?);
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let known = ["users", "conversations", "messages", "presence", "calls", "signals"];
    (parts.next().is_none() && known.contains(&topic) && numeric(partition) && numeric(offset))
        .then_some(topic)
}

/// A resume token, `EPOCH.SEQ.TIME`: three numbers.
fn is_resume_token(text: &str) -> bool {
    let parts: Vec<&str> = text.split('.').collect();
    parts.len() == 3 && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// A session id: a UUID in its hyphenated form.
fn is_uuid(text: &str) -> bool {
    let groups: Vec<usize> = text.split('-').map(str::len).collect();
    groups == [8, 4, 4, 4, 12] && text.chars().all(|c| c == '-' || c.is_ascii_hexdigit())
}

/// A time in milliseconds since the epoch, as every timestamp field holds it.
fn is_time(value: &Value) -> bool {
    value.as_i64().is_some_and(|ms| ms > 1_000_000_000_000)
}

const ELLIPSIS: &str = "…";

impl Names {
    /// Binds a doc id to the real one; an id the replay has already bound must match.
    pub fn bind_id(&mut self, doc: &str, real: &str) -> Result<(), String> {
        match self.ids.insert(doc.to_owned(), real.to_owned()) {
            Some(earlier) if earlier != real => {
                Err(format!("doc id {doc} was {earlier} earlier in the replay, now {real}"))
            }
            _ => Ok(()),
        }
    }

    pub fn bind_token(&mut self, doc: &str, real: &str) {
        self.tokens.insert(doc.to_owned(), real.to_owned());
    }

    pub fn token(&self, doc: &str) -> Option<&str> {
        self.tokens.get(doc).map(String::as_str)
    }

    /// `text` with every doc id the replay has bound replaced by its real id.
    pub fn substitute(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut digits = String::new();
        for c in text.chars().chain(std::iter::once('\0')) {
            if c.is_ascii_digit() {
                digits.push(c);
                continue;
            }
            match self.ids.get(&digits).filter(|_| is_id(&digits)) {
                Some(real) => out.push_str(real),
                None => out.push_str(&digits),
            }
            digits.clear();
            if c != '\0' {
                out.push(c);
            }
        }
        out
    }
}

/// Reads a captured body, `…` elisions included, as JSON: `,…}` becomes a field named `…`.
pub fn parse_captured(body: &str) -> Result<Value, serde_json::Error> {
    let opened = body.replace(",…}", &format!(",\"{ELLIPSIS}\":true}}"));
    serde_json::from_str(&opened)
}

/// Compares `real` with `captured` at `path`. Where `bind` is set, ids under the keys that name
/// a new entity (`id`, `message_id`, `call_id`) are learned from the response, as its request
/// created them.
pub fn compare(
    captured: &Value,
    real: &Value,
    names: &mut Names,
    bind: bool,
    path: &str,
) -> Result<(), String> {
    let mismatch =
        || Err(format!("at {path}: the document shows {captured}, the server sent {real}"));
    match (captured, real) {
        // Null in a capture, or in the replay, is a state of one run (no last message yet).
        (Value::Null, _) | (_, Value::Null) => Ok(()),
        (Value::String(doc), Value::String(got)) => compare_strings(doc, got, names, bind)
            .map_err(|why| format!("at {path}: {why} (document {doc:?}, server {got:?})")),
        (Value::Number(_), Value::Number(_)) if is_time(captured) => {
            if is_time(real) {
                Ok(())
            } else {
                mismatch()
            }
        }
        (Value::Number(_), Value::Number(_)) | (Value::Bool(_), Value::Bool(_)) => Ok(()),
        (Value::Array(doc), Value::Array(got)) => {
            for (i, (doc, got)) in doc.iter().zip(got).enumerate() {
                compare(doc, got, names, bind, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        (Value::Object(doc), Value::Object(got)) => {
            let open = doc.contains_key(ELLIPSIS);
            let missing: Vec<&String> =
                doc.keys().filter(|k| *k != ELLIPSIS && !got.contains_key(*k)).collect();
            let extra: Vec<&String> = got.keys().filter(|k| !doc.contains_key(*k)).collect();
            if !missing.is_empty() || (!open && !extra.is_empty()) {
                return Err(format!(
                    "at {path}: fields the server did not send {missing:?}, fields the document does not show {extra:?}"
                ));
            }
            for (key, doc) in doc.iter().filter(|(k, _)| *k != ELLIPSIS) {
                let bind_here = bind && matches!(key.as_str(), "id" | "message_id" | "call_id");
                compare(doc, &got[key], names, bind || bind_here, &format!("{path}.{key}"))
                    .and_then(|()| match (bind_here, doc.as_str(), got[key].as_str()) {
                        (true, Some(doc), Some(got)) if is_id(doc) => names.bind_id(doc, got),
                        _ => Ok(()),
                    })?;
            }
            Ok(())
        }
        _ => mismatch(),
    }
}

fn compare_strings(
    doc: &str,
    got: &str,
    names: &mut Names,
    bind: bool,
) -> Result<(), &'static str> {
    if is_id(doc) {
        return if is_id(got) { Ok(()) } else { Err("an id was expected") };
    }
    if let Some(topic) = token_topic(doc) {
        if token_topic(got) != Some(topic) {
            return Err("a token of the same topic was expected");
        }
        if bind {
            names.bind_token(doc, got);
        }
        return Ok(());
    }
    if is_uuid(doc) {
        return if is_uuid(got) { Ok(()) } else { Err("a UUID was expected") };
    }
    if is_resume_token(doc) {
        return if is_resume_token(got) { Ok(()) } else { Err("a resume token was expected") };
    }
    if let Some((prefix, _)) = doc.split_once(ELLIPSIS) {
        let prefix = names.substitute(prefix);
        return if got.starts_with(&prefix) { Ok(()) } else { Err("a different beginning") };
    }
    if names.substitute(doc) == got { Ok(()) } else { Err("a different text") }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn fields_types_and_texts_must_agree_ids_and_times_may_differ() {
        let mut names = Names::default();
        let doc = parse_captured(r#"{"user":{"id":"252886213193629696","handle":"alice","created_at":1795982371624,"extra":1,…},"token":"eyJ0eXAi…"}"#).unwrap();
        let real = json!({"user":{"id":"300000000000000001","handle":"alice","created_at":1800000000000_i64,"extra":2,"more":true},"token":"eyJ0eXAiOiJKV1Qi"});
        compare(&doc, &real, &mut names, true, "$").unwrap();
        assert_eq!(
            names.substitute("/v1/users/252886213193629696"),
            "/v1/users/300000000000000001"
        );

        let renamed = json!({"user":{"id":"300000000000000001","handle":"bob","created_at":1800000000000_i64,"extra":2},"token":"eyJ0eXAi"});
        assert!(compare(&doc, &renamed, &mut names, false, "$").is_err(), "a text differs");
        let closed = parse_captured(r#"{"a":1}"#).unwrap();
        assert!(compare(&closed, &json!({"a":1,"b":2}), &mut names, false, "$").is_err());
        assert!(compare(&json!({"a":"1"}), &json!({"a":1}), &mut names, false, "$").is_err());
        let resume = json!({"token":"1796463387806123.7.1796463387806"});
        let other = json!({"token":"1796463399000001.1.1796463399000"});
        assert!(compare(&resume, &other, &mut names, false, "$").is_ok(), "any resume token");
        let consistency = json!({"token":"messages/2/0"});
        assert!(compare(&resume, &consistency, &mut names, false, "$").is_err());
    }
}
