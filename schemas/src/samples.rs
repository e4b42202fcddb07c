//! Events of every type, for the tests of this crate and of the crates that read the log: each
//! record of every topic's payload union at least once, with optional fields both set and unset
//! (`tests/roundtrip.rs` checks that none is missing).

use crate::*;

/// Payloads of every event type, in topic order.
pub fn payloads() -> Vec<Payload> {
    let (u1, u2) = (UserId(1_234_567_890_123), UserId(9_876_543_210_987));
    let conv = ConversationId(7_000_000_000_000_000_001);
    let msg = MessageId(7_100_000_000_000_000_002);
    let call = CallId(7_200_000_000_000_000_003);
    let media = MediaId(7_300_000_000_000_000_004);
    vec![
        UserRegistered {
            user_id: u1,
            handle: "ada".into(),
            display_name: "Ada Lovelace".into(),
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
        }
        .into(),
        ProfileUpdated { user_id: u1, display_name: "Ada".into() }.into(),
        ConversationCreated {
            conversation_id: conv,
            kind: ConversationKind::Group,
            title: Some("engines".into()),
            members: vec![u1, u2],
        }
        .into(),
        ConversationCreated {
            conversation_id: conv,
            kind: ConversationKind::Direct,
            title: None,
            members: vec![u1, u2],
        }
        .into(),
        MemberAdded { conversation_id: conv, user_id: u2 }.into(),
        MemberRemoved { conversation_id: conv, user_id: u2 }.into(),
        ConversationRenamed { conversation_id: conv, title: "analytical".into() }.into(),
        MessageSent {
            conversation_id: conv,
            message_id: msg,
            sender: u1,
            client_msg_id: "c-1".into(),
            body: "hello, ünïcode ✓".into(),
            reply_to: Some(MessageId(5)),
            attachments: vec![media, MediaId(7_300_000_000_000_000_005)],
        }
        .into(),
        MessageEdited { conversation_id: conv, message_id: msg, body: "hi".into() }.into(),
        MessageDeleted { conversation_id: conv, message_id: msg }.into(),
        ReadUpTo { conversation_id: conv, user_id: u2, message_id: msg }.into(),
        Delivered { conversation_id: conv, user_id: u2, message_id: msg }.into(),
        MediaUploaded {
            conversation_id: conv,
            media_id: media,
            uploader: u1,
            content_type: "image/png".into(),
            size: 524_288_000,
            file_name: Some("tea party.png".into()),
            object_key: format!("{conv}/{media}"),
        }
        .into(),
        MediaUploaded {
            conversation_id: conv,
            media_id: media,
            uploader: u2,
            content_type: "application/octet-stream".into(),
            size: 0,
            file_name: None,
            object_key: format!("{conv}/{media}"),
        }
        .into(),
        SessionOpened {
            user_id: u1,
            session_id: "s-1".into(),
            node_id: "node-a".into(),
            device: Some("phone".into()),
        }
        .into(),
        SessionClosed { user_id: u1, session_id: "s-1".into(), node_id: "node-a".into() }.into(),
        Typing { user_id: u1, conversation_id: conv, active: true }.into(),
        LocationShared {
            user_id: u1,
            conversation_id: conv,
            latitude: 51.5072,
            longitude: -0.1276,
            accuracy_m: Some(12.5),
            expires_at: 1_800_000_000_000,
        }
        .into(),
        LocationStopped { user_id: u1, conversation_id: conv }.into(),
        NodeHeartbeat { node_id: "node-a".into(), lease_ms: 15_000 }.into(),
        CallInvited {
            call_id: call,
            caller: u1,
            callee: u2,
            media: CallMedia::Video,
            conversation_id: Some(conv),
        }
        .into(),
        CallRinging { call_id: call, user_id: u2, session_id: "s-2".into() }.into(),
        CallAccepted { call_id: call, user_id: u2, session_id: "s-2".into() }.into(),
        CallDeclined { call_id: call, user_id: u2 }.into(),
        CallBusy { call_id: call, user_id: u2, caller: Some(u1), media: Some(CallMedia::Video) }
            .into(),
        CallBusy { call_id: call, user_id: u2, caller: None, media: None }.into(),
        CallMissed { call_id: call }.into(),
        CallEnded { call_id: call, reason: "hangup".into() }.into(),
        RoomStarted { call_id: call, conversation_id: conv, media: CallMedia::Audio }.into(),
        ParticipantJoined { call_id: call, user_id: u1, session_id: "s-1".into() }.into(),
        ParticipantLeft { call_id: call, user_id: u1 }.into(),
        SignalRelayed {
            call_id: call,
            from_user: u1,
            to_user: u2,
            kind: SignalKind::IceCandidate,
            payload: r#"{"candidate":"candidate:1 1 udp 2122260223 127.0.0.1 54400 typ host"}"#
                .into(),
        }
        .into(),
    ]
}
