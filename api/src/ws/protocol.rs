//! The WebSocket frame contract: JSON text frames `{"op": ..., "ref": ...}` from the client, and
//! `ack`, `error`, `pong`, `ready` and `event` frames from the server. See docs/protocol.md.

use std::borrow::Cow;
use std::fmt;

use serde::de::value::MapDeserializer;
use serde::de::{DeserializeOwned, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use switchboard_schemas::{ConversationId, MessageId, UserId};

use crate::calls::{CallRef, InviteRequest, RoomRequest, SignalRequest};
use crate::chat::SendRequest;
use crate::error::ApiError;
use crate::locations::{ShareRequest, StopRequest, UpdateRequest};
use crate::sync::SyncRequest;

/// A parsed client frame: its `ref` (echoed in the reply) and what it asks for.
pub struct ClientFrame {
    pub reference: Value,
    pub op: Op,
}

pub enum Op {
    Send(SendRequest),
    Edit(EditRequest),
    Delete(MessageRef),
    Read(MessageRef),
    Typing(TypingRequest),
    ShareLocation(ShareRequest),
    UpdateLocation(UpdateRequest),
    StopLocation(StopRequest),
    Ping,
    CallInvite(InviteRequest),
    CallAccept(CallRef),
    CallDecline(CallRef),
    CallEnd(CallRef),
    CallSignal(SignalRequest),
    RoomStart(RoomRequest),
    RoomJoin(CallRef),
    RoomLeave(CallRef),
    Sync(SyncRequest),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EditRequest {
    pub conversation_id: ConversationId,
    pub message_id: MessageId,
    pub body: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageRef {
    pub conversation_id: ConversationId,
    pub message_id: MessageId,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TypingRequest {
    pub conversation_id: ConversationId,
    #[serde(default = "active_by_default")]
    pub active: bool,
}

fn active_by_default() -> bool {
    true
}

/// Parses a text frame. On failure, the error still carries the frame's `ref` when it had one.
pub fn parse(text: &str) -> Result<ClientFrame, (Value, ApiError)> {
    let Fields { op, reference, rest } = serde_json::from_str(text).map_err(|e| {
        (Value::Null, ApiError::bad_request(format!("frame is not a JSON object: {e}")))
    })?;
    let fail = |error: ApiError| (reference.clone(), error);
    let op = match op {
        Some(Value::String(op)) => op,
        Some(_) => return Err(fail(ApiError::bad_request("`op` must be a string"))),
        None => return Err(fail(ApiError::bad_request("missing field `op`"))),
    };
    let op = read_op(&op, rest).map_err(fail)?;
    Ok(ClientFrame { reference, op })
}

/// Declares the ops: [`OP_NAMES`], and `read_op`, which reads an op's fields into its request.
macro_rules! ops {
    ($fields:ident; $($name:literal => $read:expr,)*) => {
        /// The name of every op, as clients send it (and as Socket.IO events are named).
        pub const OP_NAMES: &[&str] = &[$($name,)*];

        fn read_op(op: &str, $fields: Vec<(Cow<'_, str>, &RawValue)>) -> Result<Op, ApiError> {
            Ok(match op {
                $($name => $read,)*
                other => return Err(ApiError::unknown_op(other)),
            })
        }
    };
}

ops! { rest;
    "send" => Op::Send(fields_as(rest)?),
    "edit" => Op::Edit(fields_as(rest)?),
    "delete" => Op::Delete(fields_as(rest)?),
    "read" => Op::Read(fields_as(rest)?),
    "typing" => Op::Typing(fields_as(rest)?),
    "location.share" => Op::ShareLocation(fields_as(rest)?),
    "location.update" => Op::UpdateLocation(fields_as(rest)?),
    "location.stop" => Op::StopLocation(fields_as(rest)?),
    "ping" => Op::Ping,
    "call.invite" => Op::CallInvite(fields_as(rest)?),
    "call.accept" => Op::CallAccept(fields_as(rest)?),
    "call.decline" => Op::CallDecline(fields_as(rest)?),
    "call.end" => Op::CallEnd(fields_as(rest)?),
    "call.signal" => Op::CallSignal(fields_as(rest)?),
    "room.start" => Op::RoomStart(fields_as(rest)?),
    "room.join" => Op::RoomJoin(fields_as(rest)?),
    "room.leave" => Op::RoomLeave(fields_as(rest)?),
    "sync" => Op::Sync(fields_as(rest)?),
}

/// A frame after the one pass over its text: `op` and `ref` taken out, and every other field
/// kept as its raw JSON, for the op's own request type to read. Building a `serde_json::Map`
/// first and converting it after cost a string and a tree node per field, on every frame.
struct Fields<'a> {
    op: Option<Value>,
    reference: Value,
    rest: Vec<(Cow<'a, str>, &'a RawValue)>,
}

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;

        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = Fields<'de>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
                let mut fields = Fields { op: None, reference: Value::Null, rest: Vec::new() };
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    match &*key {
                        "op" => fields.op = Some(map.next_value()?),
                        "ref" => fields.reference = map.next_value()?,
                        _ => fields.rest.push((key, map.next_value()?)),
                    }
                }
                Ok(fields)
            }
        }

        deserializer.deserialize_map(FieldsVisitor)
    }
}

fn fields_as<T: DeserializeOwned>(fields: Vec<(Cow<'_, str>, &RawValue)>) -> Result<T, ApiError> {
    let fields = MapDeserializer::<_, serde_json::Error>::new(fields.into_iter());
    T::deserialize(fields).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// `{"op": "ack", "ref": ..., ...result}`
pub fn ack(reference: Value, result: impl serde::Serialize) -> String {
    let mut frame = match serde_json::to_value(result) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    };
    frame.insert("op".into(), "ack".into());
    frame.insert("ref".into(), reference);
    Value::Object(frame).to_string()
}

/// `{"op": "error", "ref": ..., "error": {"code", "message", "retry_after_ms"}}`
pub fn error(reference: Value, error: &ApiError) -> String {
    json!({ "op": "error", "ref": reference, "error": error.body() }).to_string()
}

pub fn pong(reference: Value) -> String {
    json!({ "op": "pong", "ref": reference }).to_string()
}

/// The first frame of a connection. `resumed` says, for a connection that asked to resume,
/// whether it did: `false` means what was missed is not coming, and `sync_required` says so
/// in as many words.
pub fn ready(
    user_id: UserId,
    session_id: &str,
    token: &str,
    heartbeat_ms: u128,
    resumed: Option<bool>,
) -> String {
    let mut frame = json!({
        "op": "ready",
        "user_id": user_id,
        "session_id": session_id,
        "token": token,
        "heartbeat_ms": heartbeat_ms,
    });
    if let Some(resumed) = resumed {
        frame["resumed"] = json!(resumed);
        if !resumed {
            frame["sync_required"] = json!(true);
        }
    }
    frame.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_or_explain_why_not() {
        let frame = parse(
            r#"{"op":"send","ref":7,"conversation_id":"12","client_msg_id":"a","body":"hi"}"#,
        )
        .ok()
        .unwrap();
        assert_eq!(frame.reference, json!(7));
        assert!(matches!(frame.op, Op::Send(ref s) if s.conversation_id == ConversationId(12)));

        let code = |text: &str| parse(text).err().unwrap().1.code;
        assert_eq!(code("not json"), "bad_request");
        assert_eq!(code("[1,2]"), "bad_request");
        assert_eq!(code(r#"{"ref":"x"}"#), "bad_request");
        assert_eq!(code(r#"{"op":"dance"}"#), "unknown_op");
        assert_eq!(code(r#"{"op":"send","conversation_id":"1","body":"x"}"#), "bad_request");
        let (reference, error) =
            parse(r#"{"op":"read","ref":"r1","conversation_id":"1"}"#).err().unwrap();
        assert_eq!(reference, json!("r1"));
        assert!(error.message.contains("message_id"), "{}", error.message);

        let share = r#"{"op":"location.share","conversation_id":"3","latitude":1.5,
                        "longitude":-2,"duration_s":60}"#;
        assert!(matches!(
            parse(share).ok().unwrap().op,
            Op::ShareLocation(ref s) if s.accuracy_m.is_none() && s.longitude == -2.0
        ));
        assert_eq!(
            code(
                r#"{"op":"location.update","conversation_id":"3","latitude":"north","longitude":0}"#
            ),
            "bad_request"
        );
        assert_eq!(
            code(r#"{"op":"location.stop","conversation_id":"3","latitude":1}"#),
            "bad_request"
        );

        let (reference, error) =
            parse(r#"{"ref":[1],"op":"typing","conversation_id":"1","mood":"x"}"#).err().unwrap();
        assert_eq!(reference, json!([1]));
        assert!(error.message.contains("mood"), "{}", error.message);
        assert_eq!(code(r#"{"op":7}"#), "bad_request");

        // Field order is free, and escaped keys and values read as JSON says.
        let frame =
            parse(r#"{"bod\u0079":"a\"b","client_msg_id":"c","conversation_id":"3","op":"send"}"#)
                .ok()
                .unwrap();
        assert_eq!(frame.reference, Value::Null);
        assert!(matches!(frame.op, Op::Send(ref s) if s.body == "a\"b" && s.client_msg_id == "c"));
    }
}
