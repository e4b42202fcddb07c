//! Commands: what a client may ask to happen, checked for shape and appended as events.
//!
//! Authorisation (is this user a member?) needs the read models and is the API's job before it
//! calls in here; what is checked here is everything that can be judged from the command alone,
//! so that no malformed event ever reaches the log.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use switchboard_schemas::*;

use crate::ids::IdGenerator;
use crate::log::{Log, LogError};

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// A value of the command is not acceptable; nothing was appended.
    #[error("{0}")]
    Invalid(String),
    /// A value of the command is not what its type allows at all (a latitude of 91°); nothing
    /// was appended.
    #[error("{0}")]
    Malformed(String),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("encoding: {0}")]
    Encode(#[from] CodecError),
}

/// An event handed to the log: it resolves with the event's position and `occurred_at` once the
/// event is durable.
pub type Logging = futures_util::future::BoxFuture<'static, Result<(Position, i64), IngestError>>;

/// Bounds on what one command may carry.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Longest message body, in bytes of UTF-8.
    pub max_body_bytes: usize,
    /// Most members a group conversation may have.
    pub max_group_members: usize,
}

/// Who asked, for the event's metadata.
#[derive(Clone, Debug)]
pub struct Origin {
    pub actor: Option<UserId>,
    pub trace_id: String,
}

impl Origin {
    pub fn user(actor: UserId, trace_id: impl Into<String>) -> Origin {
        Origin { actor: Some(actor), trace_id: trace_id.into() }
    }

    pub fn system(trace_id: impl Into<String>) -> Origin {
        Origin { actor: None, trace_id: trace_id.into() }
    }
}

/// The write path: validates commands and appends their events.
pub struct Ingest {
    log: Arc<dyn Log>,
    codec: Codec,
    ids: IdGenerator,
    limits: Limits,
}

impl Ingest {
    pub fn new(log: Arc<dyn Log>, ids: IdGenerator, limits: Limits) -> Ingest {
        Ingest { log, codec: Codec::new(), ids, limits }
    }

    pub fn log(&self) -> &Arc<dyn Log> {
        &self.log
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// A new 64-bit, time-ordered id, unique across nodes.
    pub fn next_id(&self) -> i64 {
        self.ids.next_id()
    }

    /// Appends one event and returns its position once it is durable.
    pub async fn append(&self, origin: &Origin, payload: Payload) -> Result<Position, IngestError> {
        self.append_stamped(origin, payload).await.map(|(position, _)| position)
    }

    /// Like [`Ingest::append`], and also says when the event happened (its `occurred_at`), for
    /// answers that show the time the read models will show.
    pub async fn append_stamped(
        &self,
        origin: &Origin,
        payload: Payload,
    ) -> Result<(Position, i64), IngestError> {
        self.submit(origin, payload).await
    }

    /// Hands one event to the log now, in its partition's order (see
    /// [`Log::append`](crate::log::Log::append)); the future resolves with its position and its
    /// `occurred_at` once it is durable.
    pub fn submit(&self, origin: &Origin, payload: Payload) -> Logging {
        let event = Event {
            meta: EventMeta {
                event_id: uuid::Uuid::now_v7().to_string(),
                occurred_at: now_ms(),
                actor: origin.actor,
                trace_id: origin.trace_id.clone(),
            },
            payload,
        };
        let topic = event.topic();
        let occurred_at = event.meta.occurred_at;
        let appending = self
            .codec
            .encode(&event)
            .map(|value| self.log.append(topic, event.payload.key().as_bytes(), value));
        let started = std::time::Instant::now();
        Box::pin(async move {
            let position = appending?.await?;
            metrics::histogram!("log_append_seconds").record(started.elapsed());
            metrics::counter!("events_appended_total", "topic" => topic.name()).increment(1);
            Ok((position, occurred_at))
        })
    }

    pub async fn register_user(
        &self,
        origin: &Origin,
        handle: &str,
        display_name: &str,
        password_hash: String,
    ) -> Result<(UserId, Position), IngestError> {
        validate_handle(handle)?;
        let display_name = validate_text("display_name", display_name, 64)?;
        let user_id = UserId(self.next_id());
        let event =
            UserRegistered { user_id, handle: handle.to_lowercase(), display_name, password_hash };
        Ok((user_id, self.append(origin, event.into()).await?))
    }

    pub async fn create_conversation(
        &self,
        origin: &Origin,
        kind: ConversationKind,
        title: Option<&str>,
        mut members: Vec<UserId>,
    ) -> Result<(ConversationId, Position), IngestError> {
        let mut seen = std::collections::HashSet::new();
        members.retain(|m| seen.insert(*m));
        match kind {
            ConversationKind::Direct if members.len() != 2 => {
                return Err(invalid("a direct conversation has exactly two different members"));
            }
            ConversationKind::Group if members.len() > self.limits.max_group_members => {
                return Err(invalid(format!(
                    "a group has at most {} members",
                    self.limits.max_group_members
                )));
            }
            _ => {}
        }
        let title = title.map(|t| validate_text("title", t, 100)).transpose()?;
        let conversation_id = ConversationId(self.next_id());
        let event = ConversationCreated { conversation_id, kind, title, members };
        Ok((conversation_id, self.append(origin, event.into()).await?))
    }

    pub async fn add_member(
        &self,
        origin: &Origin,
        conversation_id: ConversationId,
        user_id: UserId,
    ) -> Result<Position, IngestError> {
        self.append(origin, MemberAdded { conversation_id, user_id }.into()).await
    }

    pub async fn remove_member(
        &self,
        origin: &Origin,
        conversation_id: ConversationId,
        user_id: UserId,
    ) -> Result<Position, IngestError> {
        self.append(origin, MemberRemoved { conversation_id, user_id }.into()).await
    }

    pub async fn rename(
        &self,
        origin: &Origin,
        conversation_id: ConversationId,
        title: &str,
    ) -> Result<Position, IngestError> {
        let title = validate_text("title", title, 100)?;
        self.append(origin, ConversationRenamed { conversation_id, title }.into()).await
    }

    /// The message id is chosen by the caller, who may have claimed it for the
    /// `client_msg_id` first so that a retried send finds it.
    pub fn check_message(&self, client_msg_id: &str, body: &str) -> Result<(), IngestError> {
        if client_msg_id.is_empty() || client_msg_id.len() > 64 {
            return Err(invalid("client_msg_id must be 1 to 64 bytes"));
        }
        self.check_body(body)
    }

    fn check_body(&self, body: &str) -> Result<(), IngestError> {
        if body.trim().is_empty() {
            return Err(invalid("body must not be empty"));
        }
        if body.len() > self.limits.max_body_bytes {
            return Err(invalid(format!(
                "body is {} bytes; at most {} are allowed",
                body.len(),
                self.limits.max_body_bytes
            )));
        }
        Ok(())
    }

    /// A message carries at most ten uploads, each once.
    pub fn check_attachments(&self, attachments: &[MediaId]) -> Result<(), IngestError> {
        if attachments.len() > MAX_ATTACHMENTS {
            return Err(invalid(format!(
                "a message carries at most {MAX_ATTACHMENTS} attachments, not {}",
                attachments.len()
            )));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(twice) = attachments.iter().find(|id| !seen.insert(**id)) {
            return Err(invalid(format!("attachment {twice} is listed twice")));
        }
        Ok(())
    }

    /// Checks a message and hands it to the log (see [`Ingest::submit`]).
    pub fn send_message(&self, origin: &Origin, message: MessageSent) -> Logging {
        let checked = self
            .check_message(&message.client_msg_id, &message.body)
            .and_then(|()| self.check_attachments(&message.attachments));
        match checked {
            Ok(()) => self.submit(origin, message.into()),
            Err(error) => Box::pin(std::future::ready(Err(error))),
        }
    }

    /// The name an uploader gives a file, trimmed: 1 to 255 printable characters. It is only
    /// shown, never used as a path.
    pub fn check_file_name(&self, name: &str) -> Result<String, IngestError> {
        validate_text("name", name, MAX_FILE_NAME_CHARS)
    }

    /// Records a file that is complete in the media store; returns its position and the time
    /// the read models give the upload.
    pub async fn record_upload(
        &self,
        origin: &Origin,
        mut upload: MediaUploaded,
    ) -> Result<(Position, i64), IngestError> {
        upload.file_name = upload.file_name.map(|name| self.check_file_name(&name)).transpose()?;
        if upload.content_type.is_empty() || upload.size < 0 || upload.object_key.is_empty() {
            return Err(invalid("an upload needs a content type, a size and an object key"));
        }
        self.append_stamped(origin, upload.into()).await
    }

    pub async fn edit_message(
        &self,
        origin: &Origin,
        conversation_id: ConversationId,
        message_id: MessageId,
        body: &str,
    ) -> Result<Position, IngestError> {
        self.check_body(body)?;
        let event = MessageEdited { conversation_id, message_id, body: body.to_owned() };
        self.append(origin, event.into()).await
    }

    pub async fn delete_message(
        &self,
        origin: &Origin,
        conversation_id: ConversationId,
        message_id: MessageId,
    ) -> Result<Position, IngestError> {
        self.append(origin, MessageDeleted { conversation_id, message_id }.into()).await
    }

    pub async fn mark_read(
        &self,
        origin: &Origin,
        conversation_id: ConversationId,
        user_id: UserId,
        message_id: MessageId,
    ) -> Result<Position, IngestError> {
        self.append(origin, ReadUpTo { conversation_id, user_id, message_id }.into()).await
    }

    /// A position on Earth: finite, latitude within ±90°, longitude within ±180°, and accuracy
    /// (a radius in metres), when given, not negative.
    pub fn check_location(
        latitude: f64,
        longitude: f64,
        accuracy_m: Option<f64>,
    ) -> Result<(), IngestError> {
        let within = |value: f64, bound: f64| value.is_finite() && value.abs() <= bound;
        if !within(latitude, 90.0) {
            return Err(malformed("latitude must be a number from -90 to 90"));
        }
        if !within(longitude, 180.0) {
            return Err(malformed("longitude must be a number from -180 to 180"));
        }
        if accuracy_m.is_some_and(|accuracy| !(accuracy.is_finite() && accuracy >= 0.0)) {
            return Err(malformed("accuracy_m must be a number of metres, not negative"));
        }
        Ok(())
    }

    /// Starts, restarts or moves a share; the caller chose `expires_at`.
    pub async fn share_location(
        &self,
        origin: &Origin,
        location: LocationShared,
    ) -> Result<Position, IngestError> {
        Ingest::check_location(location.latitude, location.longitude, location.accuracy_m)?;
        self.append(origin, location.into()).await
    }

    pub async fn stop_location(
        &self,
        origin: &Origin,
        user_id: UserId,
        conversation_id: ConversationId,
    ) -> Result<Position, IngestError> {
        self.append(origin, LocationStopped { user_id, conversation_id }.into()).await
    }

    pub async fn typing(
        &self,
        origin: &Origin,
        user_id: UserId,
        conversation_id: ConversationId,
        active: bool,
    ) -> Result<Position, IngestError> {
        self.append(origin, Typing { user_id, conversation_id, active }.into()).await
    }
}

/// Most uploads one message may carry.
const MAX_ATTACHMENTS: usize = 10;

/// Longest name an upload may be given, in characters.
const MAX_FILE_NAME_CHARS: usize = 255;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn invalid(message: impl Into<String>) -> IngestError {
    IngestError::Invalid(message.into())
}

fn malformed(message: impl Into<String>) -> IngestError {
    IngestError::Malformed(message.into())
}

/// Handles are 3–32 characters of `a-z`, `0-9`, `_` and `.`, compared without case.
fn validate_handle(handle: &str) -> Result<(), IngestError> {
    let ok_chars = handle.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
    if !(3..=32).contains(&handle.len()) || !ok_chars {
        return Err(invalid("handle must be 3 to 32 characters of a-z, 0-9, `_` and `.`"));
    }
    Ok(())
}

fn validate_text(field: &str, text: &str, max_chars: usize) -> Result<String, IngestError> {
    let text = text.trim();
    if text.is_empty() || text.chars().count() > max_chars || text.chars().any(char::is_control) {
        return Err(invalid(format!("{field} must be 1 to {max_chars} printable characters")));
    }
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_and_texts_are_checked() {
        assert!(validate_handle("ada_l.1").is_ok());
        assert!(validate_handle("Ada").is_ok());
        for bad in ["ab", "has space", "ünï", &"x".repeat(33)] {
            assert!(validate_handle(bad).is_err(), "{bad}");
        }
        assert_eq!(validate_text("title", "  hi  ", 10).unwrap(), "hi");
        assert!(validate_text("title", "   ", 10).is_err());
        assert!(validate_text("title", "a\u{7}b", 10).is_err());
        assert!(validate_text("title", &"é".repeat(11), 10).is_err());
    }

    #[test]
    fn locations_are_positions_on_earth() {
        let ok = [(0.0, 0.0, None), (90.0, -180.0, Some(0.0)), (-90.0, 180.0, Some(1e4))];
        for (latitude, longitude, accuracy) in ok {
            assert!(Ingest::check_location(latitude, longitude, accuracy).is_ok());
        }
        let bad = [
            (90.5, 0.0, None),
            (-91.0, 0.0, None),
            (0.0, 180.1, None),
            (f64::NAN, 0.0, None),
            (0.0, f64::INFINITY, None),
            (0.0, 0.0, Some(-1.0)),
            (0.0, 0.0, Some(f64::NAN)),
        ];
        for (latitude, longitude, accuracy) in bad {
            let result = Ingest::check_location(latitude, longitude, accuracy);
            assert!(
                matches!(result, Err(IngestError::Malformed(_))),
                "{latitude}, {longitude}, {accuracy:?}"
            );
        }
    }
}
